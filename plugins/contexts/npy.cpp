#include "npy.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

namespace admis::contexts {

namespace fs = std::filesystem;

namespace {

const char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;

std::uint32_t little_endian(const unsigned char* p, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A parser for the dict literal np.save writes (and for what hand-written headers
// reasonably contain: either quote style, optional spaces and trailing commas).
class HeaderParser {
 public:
  HeaderParser(std::string text, std::string path) : s_(std::move(text)), path_(std::move(path)) {}

  // key -> value text ("'<f4'" unquoted to "<f4", "True", "(5, 512)").
  std::map<std::string, std::string> parse() {
    std::map<std::string, std::string> out;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      skip_space();
      expect(':');
      skip_space();
      std::string value;
      if (peek() == '\'' || peek() == '"') {
        value = quoted();
      } else if (peek() == '(') {
        const std::size_t end = s_.find(')', i_);
        if (end == std::string::npos) fail("unterminated shape tuple");
        value = s_.substr(i_, end + 1 - i_);
        i_ = end + 1;
      } else {
        const std::size_t start = i_;
        while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '_')) ++i_;
        value = s_.substr(start, i_ - start);
        if (value.empty()) fail("unexpected character in the header");
      }
      out[key] = value;
      skip_space();
      if (peek() == ',') ++i_;
    }
    return out;
  }

  // "(5, 512)" / "(5,)" / "()" -> {5, 512} / {5} / {}.
  static std::vector<std::int64_t> shape_of(const std::string& tuple, const std::string& path) {
    if (tuple.size() < 2 || tuple.front() != '(' || tuple.back() != ')')
      throw Error(path, "the .npy header's shape is not a tuple: " + tuple);
    std::vector<std::int64_t> shape;
    std::stringstream items(tuple.substr(1, tuple.size() - 2));
    std::string item;
    while (std::getline(items, item, ',')) {
      const auto first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \tL");
      if (first == std::string::npos) continue;  // the empty item after "(5,"
      const std::string digits = item.substr(first, last - first + 1);
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
        throw Error(path, "the .npy header's shape has a non-integer dimension: " + tuple);
      shape.push_back(std::stoll(digits));
    }
    return shape;
  }

 private:
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted key or string");
    const std::size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string v = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(path_, "cannot parse the .npy header (" + what + " at character " + std::to_string(i_) + "): " + s_);
  }

  std::string s_;
  std::string path_;
  std::size_t i_ = 0;
};

}  // namespace

NpyHeader read_npy_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open the .npy file");
  unsigned char prefix[12] = {};
  in.read(reinterpret_cast<char*>(prefix), 10);
  if (in.gcount() < 10 || std::memcmp(prefix, kMagic, kMagicSize) != 0)
    throw Error(path, "not a .npy file (it does not start with the magic string \\x93NUMPY)");
  NpyHeader h;
  h.major_version = prefix[6];
  h.minor_version = prefix[7];
  std::uint32_t header_length = 0;
  if (h.major_version == 1) {
    header_length = little_endian(prefix + 8, 2);
    h.data_offset = 10;
  } else if (h.major_version == 2 || h.major_version == 3) {
    // 2.0 widens the length to 4 bytes; 3.0 only allows UTF-8 in the header.
    in.read(reinterpret_cast<char*>(prefix + 10), 2);
    if (in.gcount() < 2) throw Error(path, "truncated .npy header");
    header_length = little_endian(prefix + 8, 4);
    h.data_offset = 12;
  } else {
    throw Error(path, "unsupported .npy format version " + std::to_string(h.major_version) + "." +
                          std::to_string(h.minor_version) + " (1.0, 2.0 and 3.0 are read)");
  }
  std::string text(header_length, '\0');
  in.read(text.data(), header_length);
  if (static_cast<std::uint32_t>(in.gcount()) != header_length) throw Error(path, "truncated .npy header");
  h.data_offset += header_length;

  const auto fields = HeaderParser(text, path).parse();
  for (const char* key : {"descr", "fortran_order", "shape"})
    if (!fields.count(key)) throw Error(path, std::string("the .npy header has no '") + key + "' entry: " + text);
  h.descr = fields.at("descr");
  const std::string& order = fields.at("fortran_order");
  if (order != "True" && order != "False")
    throw Error(path, "the .npy header's fortran_order is neither True nor False: " + order);
  h.fortran_order = order == "True";
  h.shape = HeaderParser::shape_of(fields.at("shape"), path);
  return h;
}

torch::Tensor read_npy(const std::string& path) {
  const NpyHeader h = read_npy_header(path);
  torch::ScalarType dtype;
  std::int64_t item_size;
  if (h.descr == "<f4") {
    dtype = torch::kFloat32;
    item_size = 4;
  } else if (h.descr == "<f8") {
    dtype = torch::kFloat64;
    item_size = 8;
  } else {
    throw Error(path, "unsupported .npy dtype '" + h.descr +
                          "': only little-endian float32 ('<f4') and float64 ('<f8') arrays are read");
  }
  std::int64_t count = 1;
  for (auto d : h.shape) count *= d;
  const std::uintmax_t size = fs::file_size(path);
  const std::uintmax_t needed = h.data_offset + static_cast<std::uintmax_t>(count * item_size);
  if (size < needed)
    throw Error(path, "the .npy file is truncated: its header promises " + std::to_string(count) + " values (" +
                          std::to_string(needed) + " bytes in all), the file has " + std::to_string(size) + " bytes");

  // A Fortran-order array is stored with its dimensions reversed in row-major order.
  std::vector<std::int64_t> stored(h.shape);
  if (h.fortran_order) std::reverse(stored.begin(), stored.end());
  torch::Tensor data = torch::empty(stored, torch::TensorOptions().dtype(dtype));
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(h.data_offset));
  in.read(static_cast<char*>(data.data_ptr()), static_cast<std::streamsize>(count * item_size));
  if (!in) throw Error(path, "cannot read the .npy array data");
  if (h.fortran_order) {
    std::vector<std::int64_t> reverse_dims(stored.size());
    for (std::size_t i = 0; i < stored.size(); ++i) reverse_dims[i] = static_cast<std::int64_t>(stored.size() - 1 - i);
    data = data.permute(reverse_dims).contiguous();
  }
  return data;
}

void write_npy(const std::string& path, const torch::Tensor& array) {
  if (!array.defined()) throw Error(path, "cannot write an undefined tensor as .npy");
  std::string descr;
  switch (array.scalar_type()) {
    case torch::kFloat32: descr = "<f4"; break;
    case torch::kFloat64: descr = "<f8"; break;
    case torch::kUInt8: descr = "|u1"; break;  // '|': byte order does not apply
    default:
      throw Error(path, std::string("cannot write a ") + c10::toString(array.scalar_type()) +
                            " tensor as .npy (float32, float64 and uint8 are written)");
  }
  const torch::Tensor data = array.to(torch::kCPU).contiguous();
  // NumPy writes "(5, 512)", "(5,)" and "()".
  std::string shape = "(";
  for (std::size_t i = 0; i < data.sizes().size(); ++i) {
    if (i > 0) shape += ", ";
    shape += std::to_string(data.size(static_cast<std::int64_t>(i)));
  }
  if (data.dim() == 1) shape += ",";
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad so that magic (6) + version (2) + length (2) + header is a multiple of 64 bytes.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535) throw Error(path, "the .npy header is too long for format version 1.0");

  const fs::path target(path);
  const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::is_directory(folder)) throw Error(path, "cannot write the .npy file: the folder does not exist");
  std::random_device rd;
  const fs::path temp = folder / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                                  std::to_string(rd()));
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(path, "cannot create the temporary file " + temp.string());
    out.write(kMagic, kMagicSize);
    const char version[2] = {1, 0};
    out.write(version, 2);
    const char length[2] = {static_cast<char>(header.size() & 0xff), static_cast<char>((header.size() >> 8) & 0xff)};
    out.write(length, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(data.data_ptr()), static_cast<std::streamsize>(data.nbytes()));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ignored;
      fs::remove(temp, ignored);
      throw Error(path, "cannot write the .npy file (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(temp, target, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw Error(path, "cannot move the written .npy file into place: " + ec.message());
  }
}

}  // namespace admis::contexts
