#pragma once
// Helpers for the dataset tests: labelled test images, encoding through OpenCV-free means
// (the writers' own encoders), byte-level file edits for the corruption tests.

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "support/support.h"

namespace admis::test::datasets {

namespace fs = std::filesystem;
using ParamMap = std::map<std::string, Value>;

inline std::shared_ptr<DatasetReader> open_reader(const std::string& format, const std::string& source) {
  auto r = create<DatasetReader>(Kind::DatasetReader, format);
  r->open(source);
  return r;
}

inline std::shared_ptr<DatasetWriter> make_writer(const std::string& format, const ParamMap& params = {}) {
  return create<DatasetWriter>(Kind::DatasetWriter, format, params);
}

// A smooth image with a per-sample pattern (compresses well, differs between samples).
inline torch::Tensor test_image(int seed, std::int64_t h = 24, std::int64_t w = 20) {
  auto y = torch::arange(h).view({h, 1, 1}).to(torch::kFloat32);
  auto x = torch::arange(w).view({1, w, 1}).to(torch::kFloat32);
  auto c = torch::tensor({0.0f, 1.0f, 2.0f}).view({1, 1, 3});
  auto v = (y * (3 + seed % 5) + x * (2 + seed % 7) + c * (40 + seed * 13)).remainder(256);
  return v.to(torch::kUInt8).contiguous();
}

// N samples over `identities` identities, identities contiguous, names "<i>.png".
inline std::vector<Sample> test_samples(int n, int identities, const std::string& extension = ".png") {
  std::vector<Sample> out;
  for (int i = 0; i < n; ++i) {
    Sample s;
    s.image = test_image(i);
    s.label = i * identities / n;
    s.label_name = "id" + std::to_string(s.label);
    s.name = std::to_string(i) + extension;
    out.push_back(s);
  }
  return out;
}

inline std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void put_bytes(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// Flips one bit of the byte at `offset`.
inline void corrupt_byte(const std::string& path, std::size_t offset) {
  std::string data = file_bytes(path);
  data.at(offset) = static_cast<char>(data.at(offset) ^ 0x10);
  put_bytes(path, data);
}

}  // namespace admis::test::datasets
