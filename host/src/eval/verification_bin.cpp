// insightface verification sets (.bin): a pickle of (list of 2N encoded images, list of N
// bools), written by Python 2 (protocol 2, str images) or Python 3 (bytes images).
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstring>
#include <fstream>
#include <iterator>

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
