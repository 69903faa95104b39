// safetensors: an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
// then the tensors' raw little-endian bytes; offsets are relative to the end of the header.

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "admis/host/weights.h"
#include "admis/sdk/error.h"
#include "weights_internal.h"

namespace admis::host {

namespace {

// Codes of the safetensors format, with each one's rank in the reference implementation's
// Dtype enum (BOOL < U8 < I8 < ... < F32 < F64 < I64), by which its writer orders tensors.
struct DtypeCode {
  const char* code;
  torch::ScalarType dtype;
  int rank;
};
constexpr DtypeCode kDtypes[] = {
    {"BOOL", torch::kBool, 0},    {"U8", torch::kUInt8, 1},    {"I8", torch::kInt8, 2},
    {"I16", torch::kInt16, 5},    {"F16", torch::kFloat16, 7}, {"BF16", torch::kBFloat16, 8},
    {"I32", torch::kInt32, 9},    {"F32", torch::kFloat32, 11}, {"F64", torch::kFloat64, 12},
    {"I64", torch::kInt64, 13},
};

bool dtype_from_code(const std::string& code, torch::ScalarType* dtype) {
  for (const auto& d : kDtypes) {
    if (code == d.code) {
      *dtype = d.dtype;
      return true;
    }
  }
  return false;
}

const DtypeCode* code_from_dtype(torch::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return &d;
  }
  return nullptr;
}

// The reference writer refuses headers beyond 100 MB; so do we, before allocating.
constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

std::uint64_t file_size(std::ifstream& in) {
  in.seekg(0, std::ios::end);
  const auto end = in.tellg();
  in.seekg(0, std::ios::beg);
  return end < 0 ? 0 : static_cast<std::uint64_t>(end);
}

// Writes all of `size` bytes or throws.
void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(path, fmt::format("write failed: {}", std::strerror(errno)));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

}  // namespace

StateDict read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, fmt::format("cannot open: {}", std::strerror(errno)));
  const std::uint64_t total = file_size(in);
  if (total < 8) throw Error(path, fmt::format("not a safetensors file: {} bytes, too short for a header", total));

  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  if (header_length > total - 8 || header_length > kMaxHeaderBytes) {
    throw Error(path, fmt::format("not a safetensors file, or truncated: header length {} but the file has {} bytes",
                                  header_length, total));
  }
  std::string header(header_length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_length));
  if (!in) throw Error(path, "cannot read the safetensors header");

  nlohmann::json json;
  try {
    json = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path, std::string("safetensors header is not valid JSON: ") + e.what());
  }
  if (!json.is_object()) throw Error(path, "safetensors header is not a JSON object");

  const std::uint64_t data_start = 8 + header_length;
  const std::uint64_t data_size = total - data_start;

  struct Entry {
    std::string name;
    torch::ScalarType dtype;
    std::vector<std::int64_t> shape;
    std::uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string& name = it.key();
    const auto& info = it.value();
    if (name == "__metadata__") {
      if (!info.is_object()) throw Error(path, "__metadata__ is not a JSON object");
      for (auto m = info.begin(); m != info.end(); ++m) {
        if (!m.value().is_string()) throw Error(path, "__metadata__ value of '" + m.key() + "' is not a string");
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + " [" + name + "]";
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets")) {
      throw Error(where, "tensor entry needs dtype, shape and data_offsets");
    }
    Entry e;
    e.name = name;
    if (!info["dtype"].is_string() || !dtype_from_code(info["dtype"].get<std::string>(), &e.dtype)) {
      throw Error(where, "unsupported dtype " + info["dtype"].dump() +
                             " (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
    std::uint64_t numel = 1;
    if (!info["shape"].is_array()) throw Error(where, "shape is not a list");
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) throw Error(where, "shape " + info["shape"].dump() + " has a non-size entry");
      const auto n = d.get<std::uint64_t>();
      if (n > static_cast<std::uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, n, &numel)) {
        throw Error(where, "shape " + info["shape"].dump() + " is too large");
      }
      e.shape.push_back(static_cast<std::int64_t>(n));
    }
    const auto& offsets = info["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      throw Error(where, "data_offsets must be [begin, end]");
    }
    e.begin = offsets[0].get<std::uint64_t>();
    e.end = offsets[1].get<std::uint64_t>();
    std::uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(c10::elementSize(e.dtype)), &nbytes) ||
        e.begin > e.end || e.end - e.begin != nbytes) {
      throw Error(where, fmt::format("data_offsets [{}, {}] do not match dtype {} and shape {} ({} bytes)", e.begin,
                                     e.end, info["dtype"].get<std::string>(), info["shape"].dump(), nbytes));
    }
    if (e.end > data_size) {
      throw Error(where, fmt::format("data_offsets [{}, {}] run past the end of the file ({} data bytes after the "
                                     "header): truncated file?",
                                     e.begin, e.end, data_size));
    }
    entries.push_back(std::move(e));
  }

  // As the reference reader: the tensors tile the data section exactly, in some order,
  // with neither overlaps nor gaps nor trailing bytes.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  std::uint64_t covered = 0;
  for (const auto& e : entries) {
    if (e.begin != covered) {
      throw Error(path + " [" + e.name + "]",
                  fmt::format("data_offsets [{}, {}] {} the previous tensor's data, which ends at {}", e.begin, e.end,
                              e.begin < covered ? "overlap" : "leave a gap after", covered));
    }
    covered = e.end;
  }
  if (covered != data_size) {
    throw Error(path, fmt::format("the tensors' data ends at byte {} but the file holds {} data bytes after the header",
                                  covered, data_size));
  }

  // Read in file order, straight into each tensor's memory.
  StateDict out;
  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) {
      in.seekg(static_cast<std::streamoff>(data_start + e.begin));
      in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
      if (!in) throw Error(path + " [" + e.name + "]", "cannot read the tensor's data");
    }
    out.emplace(e.name, std::move(t));
  }
  return out;
}

void write_safetensors(const StateDict& tensors, const std::string& path,
                       const std::map<std::string, std::string>& metadata) {
  // The reference writer's order: by dtype rank, descending (which puts larger elements
  // first and keeps every tensor aligned to its element size), then by name.
  struct Item {
    std::string name;
    torch::Tensor tensor;
    const DtypeCode* code;
  };
  std::vector<Item> order;
  order.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw Error(path, "'__metadata__' cannot name a tensor in safetensors");
    if (!tensor.defined()) throw Error(path + " [" + name + "]", "undefined tensor");
    const DtypeCode* code = code_from_dtype(tensor.scalar_type());
    if (!code) {
      throw Error(path + " [" + name + "]",
                  "dtype " + weights_detail::dtype_name(tensor.scalar_type()) + " cannot be stored in safetensors");
    }
    order.push_back({name, tensor.detach().to(torch::kCPU).contiguous(), code});
  }
  // `tensors` is sorted by name already; a stable sort by rank keeps that within a rank.
  std::stable_sort(order.begin(), order.end(), [](const Item& a, const Item& b) { return a.code->rank > b.code->rank; });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::uint64_t offset = 0;
  for (const auto& [name, t, code] : order) {
    const std::uint64_t nbytes = t.nbytes();
    header[name] = {{"dtype", code->code},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(header_text.size() >> (8 * i));

  // Atomic: a reader sees the old file or the complete new one, never a partial file.
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path, fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
  bool open = true;
  try {
    write_all(fd, length_bytes, 8, path);
    write_all(fd, header_text.data(), header_text.size(), path);
    for (const auto& item : order) write_all(fd, item.tensor.data_ptr(), item.tensor.nbytes(), path);
    if (::fsync(fd) != 0) throw Error(path, fmt::format("fsync failed: {}", std::strerror(errno)));
    open = false;
    if (::close(fd) != 0) throw Error(path, fmt::format("close failed: {}", std::strerror(errno)));
  } catch (...) {
    if (open) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  weights_detail::publish_file(tmp, path);
}

}  // namespace admis::host
