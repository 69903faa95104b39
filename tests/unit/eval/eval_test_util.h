#pragma once
// Helpers for the verification tests: insightface .bin files written the way Python 2's
// cPickle (protocol 2) writes the released ones, JPEG faces drawn with OpenCV, and a tiny
// deterministic backbone.

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::test {

// Protocol-2 pickle of (list of byte strings, list of bools): PROTO, EMPTY_LIST, BINPUT,
// MARK, SHORT_BINSTRING/BINSTRING, APPENDS, NEWTRUE/NEWFALSE, TUPLE2, STOP.
inline std::string py2_bin_pickle(const std::vector<std::string>& images, const std::vector<bool>& issame) {
  std::string p = "\x80\x02";
  int memo = 0;
  auto binput = [&] {
    p += 'q';
    p += static_cast<char>(memo++);
  };
  p += ']';
  binput();
  p += '(';
  for (const auto& img : images) {
    if (img.size() < 256) {
      p += 'U';
      p += static_cast<char>(img.size());
    } else {
      p += 'T';
      const auto n = static_cast<std::uint32_t>(img.size());
      for (int i = 0; i < 4; ++i) p += static_cast<char>((n >> (8 * i)) & 0xff);
    }
    p += img;
    binput();
  }
  p += 'e';
  p += ']';
  binput();
  p += '(';
  for (bool b : issame) p += b ? '\x88' : '\x89';
  p += 'e';
  p += '\x86';
  binput();
  p += '.';
  return p;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// A smooth synthetic "face" for identity `id` (JPEG-friendly), with a small `variant` shift.
inline std::string face_jpeg(int id, int variant, int size) {
  cv::Mat img(size, size, CV_8UC3);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const double u = static_cast<double>(x) / size, v = static_cast<double>(y) / size;
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<std::uint8_t>(127 + 120 * std::sin(6.0 * u * (1 + id % 5) + id)),
                                          static_cast<std::uint8_t>(127 + 120 * std::cos(5.0 * v * (1 + id % 3) + 2 * id)),
                                          static_cast<std::uint8_t>(127 + 100 * std::sin(4.0 * (u + v) + 0.3 * id)));
    }
  cv::circle(img, cv::Point(size / 3 + variant, size / 2), size / 6, cv::Scalar(30 * (id % 8), 200, 90), -1);
  std::vector<unsigned char> jpg;
  cv::imencode(".jpg", img, jpg, {cv::IMWRITE_JPEG_QUALITY, 90});
  return std::string(jpg.begin(), jpg.end());
}

// `pairs` pairs alternating same (identity i, two variants) and different identities.
inline void write_face_bin(const std::string& path, int pairs, int size) {
  std::vector<std::string> images;
  std::vector<bool> issame;
  for (int i = 0; i < pairs; ++i) {
    const bool same = i % 2 == 0;
    images.push_back(face_jpeg(i, 0, size));
    images.push_back(same ? face_jpeg(i, 2, size) : face_jpeg(i + 1000, 0, size));
    issame.push_back(same);
  }
  write_bytes(path, py2_bin_pickle(images, issame));
}

// A linear embedding of the flattened image: not flip-invariant, so flip TTA shows. Records
// whether it ran in eval mode under InferenceMode.
struct LinearNet : torch::nn::Module {
  LinearNet(std::int64_t size, std::int64_t dim) {
    torch::manual_seed(7);
    fc = register_module("fc", torch::nn::Linear(3 * size * size, dim));
  }
  torch::nn::Linear fc{nullptr};
};

class LinearBackbone : public Backbone {
 public:
  LinearBackbone(std::int64_t size, std::int64_t dim) : size_(size), dim_(dim), net_(std::make_shared<LinearNet>(size, dim)) {}
  std::int64_t embedding_size() const override { return dim_; }
  std::int64_t input_size() const override { return size_; }
  torch::Tensor forward(const torch::Tensor& images) override {
    ++calls;
    all_eval = all_eval && !net_->is_training();
    all_inference = all_inference && c10::InferenceMode::is_enabled();
    max_batch = std::max<std::int64_t>(max_batch, images.size(0));
    return net_->fc->forward(images.flatten(1));
  }
  torch::nn::Module& module() override { return *net_; }
  torch::Tensor weight() const { return net_->fc->weight; }
  torch::Tensor bias() const { return net_->fc->bias; }

  int calls = 0;
  bool all_eval = true, all_inference = true;
  std::int64_t max_batch = 0;

 private:
  std::int64_t size_, dim_;
  std::shared_ptr<LinearNet> net_;
};

}  // namespace admis::test
