#pragma once
// What the bundled backbones share: checking the images a forward pass receives, the
// layers both TFace and insightface build from (bias-free convolutions, the SE block) and
// TFace's weight initialisation.

#include <cstdint>
#include <memory>
#include <string>

#include "admis/sdk.h"
#include "admis/sdk/batch_norm.h"

namespace admis::backbones {

// A backbone plugin around its network module. Subclasses build the module (whose
// parameter and buffer names are the reference's state-dict keys) and say how it embeds a
// checked batch.
class BackboneBase : public Backbone {
 public:
  // `name` is the registered plugin name ("ir", ...), used in error messages.
  BackboneBase(std::string name, std::int64_t input_size, std::int64_t embedding_size);

  std::int64_t embedding_size() const override { return embedding_size_; }
  std::int64_t input_size() const override { return input_size_; }
  torch::nn::Module& module() override { return *module_; }

  // Checks that `images` is a floating-point [N, 3, input_size, input_size] batch (N >= 1,
  // N >= 2 in train mode where BatchNorm needs batch statistics; any N, 0 included, when
  // batch norm is synchronised across ranks), moves it to the module's
  // device and dtype, and embeds it.
  torch::Tensor forward(const torch::Tensor& images) final;

 protected:
  // images: float, on the module's device, shape already checked.
  virtual torch::Tensor embed(const torch::Tensor& images) = 0;

  // Called once by the subclass constructor with its network.
  void set_module(std::shared_ptr<torch::nn::Module> module) { module_ = std::move(module); }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::int64_t input_size_;
  std::int64_t embedding_size_;
  std::shared_ptr<torch::nn::Module> module_;
};

// nn.Conv2d(in, out, kernel, stride, padding, groups=groups, bias=False).
torch::nn::Conv2d conv_no_bias(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride,
                               std::int64_t padding, std::int64_t groups = 1);

// Squeeze-and-excitation gate: x * sigmoid(fc2(relu(fc1(avgpool(x))))), with fc1 and fc2
// bias-free 1x1 convolutions (channels -> channels / reduction -> channels). TFace's
// common.SEModule and ElasticFace's iresnet SEModule are the same block with the same keys.
class SEModuleImpl : public torch::nn::Module {
 public:
  SEModuleImpl(std::int64_t channels, std::int64_t reduction);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(SEModule);

// TFace's common.initialize_weights over every submodule: convolution and linear weights
// from kaiming_normal(fan_out, relu) with zero biases, BatchNorm2d scale 1 and shift 0.
void initialize_tface_weights(torch::nn::Module& module);

// Schema entry for a square input side restricted to `sides` (e.g. {"112", "224"}).
ParamSpec input_size_param(std::vector<std::string> sides, const std::string& reference);

// The factories, one per reference family (defined next to each network).
void register_tface_irse(FactoryList& registry);     // ir
void register_iresnet(FactoryList& registry);        // iresnet
void register_mobilefacenet(FactoryList& registry);  // mobilefacenet

}  // namespace admis::backbones
