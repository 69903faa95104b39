#include "backbone_base.h"

#include <sstream>

namespace admis::backbones {

namespace {

std::string shape_text(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace

BackboneBase::BackboneBase(std::string name, std::int64_t input_size, std::int64_t embedding_size)
    : name_("backbone/" + std::move(name)), input_size_(input_size), embedding_size_(embedding_size) {}

torch::Tensor BackboneBase::forward(const torch::Tensor& images) {
  const std::string side = std::to_string(input_size_);
  const bool square_rgb = images.defined() && images.dim() == 4 && images.size(1) == 3 &&
                          images.size(2) == input_size_ && images.size(3) == input_size_;
  if (!square_rgb)
    throw Error(name_, "images must have shape [N, 3, " + side + ", " + side + "] (input_size = " + side + "), got " +
                           (images.defined() ? shape_text(images) : std::string("an undefined tensor")));
  if (!images.is_floating_point())
    throw Error(name_,
                std::string("images must be floating point in [-1, 1], got ") + c10::toString(images.scalar_type()));
  // With synchronised batch norm the statistics are over all ranks' rows, so one rank may
  // hold one row, or none (its share of a short last batch), and still take part.
  const bool small = images.size(0) == 0 || (module_->is_training() && images.size(0) < 2);
  const bool synchronised = small && module_->is_training() && has_synchronised_batch_norm(*module_);
  if (images.size(0) == 0 && !synchronised) throw Error(name_, "images hold no rows (the batch is empty)");
  if (module_->is_training() && images.size(0) < 2 && !synchronised)
    throw Error(name_,
                "a batch of 1 image cannot pass in train mode: BatchNorm needs at least 2 images to "
                "estimate batch statistics (switch to eval mode for single images)");

  // Every backbone has a first convolution; its weight says where and in what type to compute.
  const torch::Tensor reference = module_->parameters().front();
  return embed(images.to(reference.device(), reference.scalar_type()));
}

torch::nn::Conv2d conv_no_bias(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride,
                               std::int64_t padding, std::int64_t groups) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).groups(groups).bias(false));
}

SEModuleImpl::SEModuleImpl(std::int64_t channels, std::int64_t reduction) : torch::nn::Module("SEModule") {
  fc1 = register_module("fc1", conv_no_bias(channels, channels / reduction, 1, 1, 0));
  fc2 = register_module("fc2", conv_no_bias(channels / reduction, channels, 1, 1, 0));
  // TFace draws fc1 from xavier_uniform here. Both networks re-initialise every convolution
  // afterwards, so the draw only advances the generator, as TFace's does.
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(fc1->weight);
}

torch::Tensor SEModuleImpl::forward(const torch::Tensor& x) {
  const torch::Tensor squeezed = x.mean({2, 3}, /*keepdim=*/true);  // AdaptiveAvgPool2d(1)
  return x * torch::sigmoid(fc2(torch::relu(fc1(squeezed))));
}

void initialize_tface_weights(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  // Called from constructors, before the network is owned by a shared_ptr: children only.
  for (const auto& m : module.modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* bn = m->as<admis::BatchNorm2d>()) {
      if (bn->weight.defined()) bn->weight.fill_(1.0);
      if (bn->bias.defined()) bn->bias.zero_();
    } else if (auto* linear = m->as<torch::nn::Linear>()) {
      torch::nn::init::kaiming_normal_(linear->weight, 0.0, torch::kFanOut, torch::kReLU);
      if (linear->bias.defined()) linear->bias.zero_();
    }
  }
}

ParamSpec input_size_param(std::vector<std::string> sides, const std::string& reference) {
  return ParamSpec::Int("input_size", 112,
                        "side of the square input images in pixels (" + reference + "'s input_size[0])")
      .one_of(std::move(sides));
}

}  // namespace admis::backbones
