#pragma once
// Helpers shared by the context-source tests: creating a source with named parameters,
// writing small face folders and hand-made .npy files.

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "support/support.h"

namespace admis::test::contexts {

namespace fs = std::filesystem;
using ParamMap = std::map<std::string, Value>;

// A nested plugin value, as a manifest's {plugin: NAME, params: {...}, weights: FILE}.
inline Value plugin_value(const std::string& kind, const std::string& name, ParamMap params,
                          const std::string& weights = "") {
  auto spec = std::make_shared<PluginSpec>();
  spec->kind = kind;
  spec->name = name;
  spec->params = std::move(params);
  spec->weights = weights;
  return Value(std::shared_ptr<const PluginSpec>(spec));
}

inline std::shared_ptr<ContextSource> make_source(const std::string& name, const ParamMap& params = {}) {
  return create<ContextSource>(Kind::ContextSource, name, params);
}

// A smooth face-sized image with a per-index pattern, [h,w,3] uint8 RGB.
inline torch::Tensor test_face(int index, std::int64_t h = 112, std::int64_t w = 112) {
  auto y = torch::arange(h).view({h, 1, 1}).to(torch::kFloat32);
  auto x = torch::arange(w).view({1, w, 1}).to(torch::kFloat32);
  auto c = torch::tensor({0.0f, 1.0f, 2.0f}).view({1, 1, 3});
  auto v = (y * (1 + index % 5) + x * (2 + index % 3) + c * (30 + index * 17)).remainder(256);
  return v.to(torch::kUInt8).contiguous();
}

// Writes `image` ([H,W,3] uint8 RGB) losslessly as PNG.
inline void write_png(const torch::Tensor& image, const std::string& path) {
  torch::Tensor pixels = image.contiguous();
  cv::Mat rgb(static_cast<int>(pixels.size(0)), static_cast<int>(pixels.size(1)), CV_8UC3,
              pixels.data_ptr<std::uint8_t>());
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  if (!cv::imwrite(path, bgr)) throw Error(path, "test could not write the PNG");
}

// A .npy file with a hand-written header (version, descr, order, shape) and `data` bytes.
inline void write_raw_npy(const std::string& path, int major, const std::string& header_dict, const std::string& data) {
  std::string header = header_dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write("\x93NUMPY", 6);
  const char version[2] = {static_cast<char>(major), 0};
  out.write(version, 2);
  const std::size_t n = header.size();
  const char len[4] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                       static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  out.write(len, major == 1 ? 2 : 4);
  out.write(header.data(), static_cast<std::streamsize>(n));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

inline std::string bytes_of(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

}  // namespace admis::test::contexts
