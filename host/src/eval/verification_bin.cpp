// insightface verification sets (.bin): a pickle of (list of 2N encoded images, list of N
// bools), written by Python 2 (protocol 2, str images) or Python 3 (bytes images); read and written.
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>

#include "admis/host/manifest.h"
#include "admis/host/pickle.h"
#include "admis/host/verification.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

std::string read_bytes(const std::string& path) {
  boost::system::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path, "no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open for reading");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// One encoded image -> [H,W,3] uint8 RGB.
torch::Tensor decode_rgb(const std::string& encoded, const std::string& where) {
  cv::Mat raw(1, static_cast<int>(encoded.size()), CV_8UC1, const_cast<char*>(encoded.data()));
  cv::Mat bgr = encoded.empty() ? cv::Mat() : cv::imdecode(raw, cv::IMREAD_COLOR);
  if (bgr.empty()) throw Error(where, fmt::format("cannot decode the image ({} bytes): not a JPEG/PNG OpenCV reads", encoded.size()));
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  torch::Tensor out = torch::empty({rgb.rows, rgb.cols, 3}, torch::kUInt8);
  for (int r = 0; r < rgb.rows; ++r)
    std::memcpy(out.data_ptr<std::uint8_t>() + static_cast<std::size_t>(r) * rgb.cols * 3, rgb.ptr<std::uint8_t>(r),
                static_cast<std::size_t>(rgb.cols) * 3);
  return out;
}

}  // namespace

VerificationSet read_verification_bin(const std::string& path) {
  const std::string data = read_bytes(path);
  pickle::ValuePtr root = pickle::unpickle(data.data(), data.size(), pickle::Hooks{}, path);
  auto structure_error = [&](const std::string& what) {
    return Error(path, fmt::format("not an insightface verification set: {} (expected a pickled "
                                   "(list of 2N encoded images, list of N bools))", what));
  };
  if (!(root->is(pickle::Type::Tuple) || root->is(pickle::Type::List)) || root->items.size() != 2)
    throw structure_error(fmt::format("the pickle holds {}", root->describe()));
  const pickle::Value& bins = *root->items[0];
  const pickle::Value& flags = *root->items[1];
  if (!(bins.is(pickle::Type::List) || bins.is(pickle::Type::Tuple)))
    throw structure_error(fmt::format("its first element is {}", bins.describe()));
  if (!(flags.is(pickle::Type::List) || flags.is(pickle::Type::Tuple)))
    throw structure_error(fmt::format("its second element is {}", flags.describe()));
  if (bins.items.size() != 2 * flags.items.size())
    throw structure_error(fmt::format("{} images for {} pairs", bins.items.size(), flags.items.size()));
  if (flags.items.empty()) throw structure_error("it holds no pairs");

  VerificationSet set;
  set.path = path;
  set.name = fs::path(path).stem().string();
  for (std::size_t i = 0; i < flags.items.size(); ++i) {
    const pickle::Value& f = *flags.items[i];
    if (!(f.is(pickle::Type::Bool) || f.is(pickle::Type::Int)))
      throw structure_error(fmt::format("pair flag {} is {}", i, f.describe()));
    set.issame.push_back(f.as_bool());
  }
  std::vector<torch::Tensor> images;
  images.reserve(bins.items.size());
  for (std::size_t i = 0; i < bins.items.size(); ++i) {
    const pickle::Value& b = *bins.items[i];
    const std::string where = fmt::format("{}: image {}", path, i);
    if (!(b.is(pickle::Type::Bytes) || b.is(pickle::Type::String)))
      throw Error(where, fmt::format("expected encoded image bytes, found {}", b.describe()));
    images.push_back(decode_rgb(b.text, where));
    if (images.back().sizes() != images.front().sizes())
      throw Error(where, fmt::format("image size {}x{} differs from image 0's {}x{}", images.back().size(1),
                                     images.back().size(0), images.front().size(1), images.front().size(0)));
  }
  set.images = torch::stack(images);
  return set;
}

}  // namespace admis::host

namespace admis::host {

namespace {

// Pickle opcodes (Python's Lib/pickle.py), protocol 4 as pickle.HIGHEST_PROTOCOL wrote
// them when the sets were packed; frames are optional for readers, so none are written.
constexpr char kProto = '\x80', kEmptyList = ']', kMark = '(', kAppend = 'a', kAppends = 'e', kShortBinBytes = 'C',
               kBinBytes = 'B', kBinBytes8 = '\x8e', kNewTrue = '\x88', kNewFalse = '\x89', kTuple2 = '\x86',
               kMemoize = '\x94', kStop = '.';

void put_le(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((value >> (8 * i)) & 0xff);
}

// A list as Python's Pickler._batch_appends writes it: MARK ... APPENDS per 1000 items
// (a lone last item with APPEND).
template <class WriteItem>
void put_list(std::string& out, std::size_t size, WriteItem&& write_item) {
  constexpr std::size_t kBatch = 1000;
  out += kEmptyList;
  out += kMemoize;
  for (std::size_t begin = 0; begin < size; begin += kBatch) {
    const std::size_t end = std::min(size, begin + kBatch);
    if (end - begin == 1) {
      write_item(begin);
      out += kAppend;
      continue;
    }
    out += kMark;
    for (std::size_t i = begin; i < end; ++i) write_item(i);
    out += kAppends;
  }
}

}  // namespace

void write_verification_bin(const std::string& path, const std::vector<std::string>& encoded_images,
                            const std::vector<bool>& issame) {
  if (issame.empty()) throw Error(path, "cannot write a verification set without pairs");
  if (encoded_images.size() != 2 * issame.size())
    throw Error(path, fmt::format("a verification set needs 2 images per pair: got {} images for {} pairs",
                                  encoded_images.size(), issame.size()));
  std::size_t total = 64 + issame.size();
  for (std::size_t i = 0; i < encoded_images.size(); ++i) {
    if (encoded_images[i].empty()) throw Error(path, fmt::format("image {} is empty (expected PNG or JPEG bytes)", i));
    total += encoded_images[i].size() + 11;
  }
  std::string out;
  out.reserve(total);
  out += kProto;
  out += '\x04';
  put_list(out, encoded_images.size(), [&](std::size_t i) {
    const std::string& bytes = encoded_images[i];
    if (bytes.size() < 256) {
      out += kShortBinBytes;
      put_le(out, bytes.size(), 1);
    } else if (bytes.size() <= 0xffffffffull) {
      out += kBinBytes;
      put_le(out, bytes.size(), 4);
    } else {
      out += kBinBytes8;
      put_le(out, bytes.size(), 8);
    }
    out += bytes;
    out += kMemoize;
  });
  put_list(out, issame.size(), [&](std::size_t i) { out += issame[i] ? kNewTrue : kNewFalse; });
  out += kTuple2;
  out += kMemoize;
  out += kStop;
  write_file_atomic(path, out);
}

}  // namespace admis::host
