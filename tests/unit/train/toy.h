#pragma once
// Test-local implementations of the training interfaces, so the training code is tested
// without the backbone and dataset plugins: a small conv backbone, an in-memory reader of
// procedurally drawn, learnable classes, and a horizontal flip augmenter.

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::test {

// 112x112 -> stride-4 conv -> BN -> PReLU -> stride-2 conv (with bias) -> BN -> ReLU ->
// 4x4 average pool -> dropout -> linear -> BatchNorm1d named "features" (no "bn" in the
// name, like TFace IR-50's output_layer.4, so the two decay splits differ).
struct TinyNetImpl : torch::nn::Module {
  explicit TinyNetImpl(std::int64_t embedding) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 5).stride(4).padding(2).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(8));
    prelu1 = register_module("prelu1", torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(8)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2).padding(1)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(16));
    dropout = register_module("dropout", torch::nn::Dropout(0.1));
    fc = register_module("fc", torch::nn::Linear(16 * 4 * 4, embedding));
    features = register_module("features", torch::nn::BatchNorm1d(embedding));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = prelu1(bn1(conv1(x)));
    h = torch::relu(bn2(conv2(h)));
    h = torch::adaptive_avg_pool2d(h, {4, 4}).flatten(1);
    return features(fc(dropout(h)));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::PReLU prelu1{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d features{nullptr};
};
TORCH_MODULE(TinyNet);

// A small test network (a TORCH_MODULE holder taking the embedding size) as a 112 px backbone.
template <typename Net>
class NetBackbone : public Backbone {
 public:
  explicit NetBackbone(std::int64_t embedding = 32) : embedding_(embedding), net_(embedding) {}
  torch::nn::Module& module() override { return *net_; }
  std::int64_t embedding_size() const override { return embedding_; }
  std::int64_t input_size() const override { return 112; }
  torch::Tensor forward(const torch::Tensor& images) override { return net_->forward(images); }

 private:
  std::int64_t embedding_;
  Net net_;
};
using TinyBackbone = NetBackbone<TinyNet>;

// `classes` identities of `per_class` images each. Class c: stripes (horizontal for even
// c, vertical for odd) with period 8 + 4 (c / 2) pixels in a colour that depends on c,
// at a random phase, under strong per-pixel noise and a random brightness offset.
// Every third sample is given only as PNG bytes, to exercise decoding.
class ToyReader : public DatasetReader {
 public:
  ToyReader(int classes = 6, int per_class = 40) : classes_(classes), per_class_(per_class) {}
  void open(const std::string&) override {}
  std::int64_t size() const override { return static_cast<std::int64_t>(classes_) * per_class_; }
  std::vector<std::string> class_names() const override {
    std::vector<std::string> names;
    for (int c = 0; c < classes_; ++c) names.push_back("id" + std::to_string(c));
    return names;
  }
  Sample read(std::int64_t index) const override {
    const int c = static_cast<int>(index % classes_);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(index) * 7919 + 17);
    const double phase = torch::rand({1}, gen).item<double>() * 32;
    const double period = 8 + 4 * (c / 2);
    auto coord = torch::arange(112, torch::kFloat64);
    auto wave = ((coord + phase) / period * 2 * M_PI).sin().gt(0).to(torch::kFloat64);  // [112]
    auto pattern = (c % 2 == 0) ? wave.view({112, 1}).expand({112, 112}) : wave.view({1, 112}).expand({112, 112});
    static const double colours[6][3] = {{1, 0.2, 0.2}, {0.2, 1, 0.2}, {0.2, 0.2, 1},
                                         {1, 1, 0.2},   {0.2, 1, 1},   {1, 0.2, 1}};
    auto colour = torch::tensor({colours[c % 6][0], colours[c % 6][1], colours[c % 6][2]}, torch::kFloat64);
    auto image = pattern.unsqueeze(2) * colour.view({1, 1, 3}) * 160 + 40;
    image = image + torch::randn({112, 112, 3}, gen, torch::kFloat64) * 50 + (torch::rand({1}, gen).item<double>() - 0.5) * 60;
    Sample s;
    s.label = c;
    s.label_name = "id" + std::to_string(c);
    s.name = std::to_string(index / classes_) + ".png";
    torch::Tensor rgb = image.clamp(0, 255).round().to(torch::kUInt8).contiguous();
    if (index % 3 == 0) {
      cv::Mat mat(112, 112, CV_8UC3, rgb.data_ptr());
      cv::Mat bgr;
      cv::cvtColor(mat, bgr, cv::COLOR_RGB2BGR);
      std::vector<unsigned char> png;
      cv::imencode(".png", bgr, png);
      s.encoded.assign(png.begin(), png.end());
    } else {
      s.image = rgb;
    }
    return s;
  }

 private:
  int classes_, per_class_;
};

class EmptyReader : public ToyReader {
 public:
  std::int64_t size() const override { return 0; }
};

// Horizontal flip with probability 1/2, drawn from the given generator.
class ToyFlip : public Augmenter {
 public:
  AugmenterScope scope() const override { return AugmenterScope::Image; }
  torch::Tensor augment_image(const torch::Tensor& image, at::Generator& generator) override {
    return torch::rand({1}, generator).item<float>() < 0.5f ? image.flip({1}).contiguous() : image;
  }
  void augment_identity(IdentitySamples&) override {}
};

}  // namespace admis::test
