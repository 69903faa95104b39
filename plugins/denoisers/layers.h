#pragma once
// Building blocks both denoisers share: the reference's zero_module, convolution and
// GroupNorm constructors, kernel-1 convolutions as matrix products, and tensor shapes for
// error messages.

#include <torch/torch.h>

#include <sstream>
#include <string>

namespace admis::denoisers {

// The reference's zero_module: the block starts as the identity of its residual path (a
// fresh network predicts 0).
template <class M>
M zeroed(M module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module->parameters()) p.zero_();
  return module;
}

inline torch::nn::Conv2d conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1,
                                std::int64_t padding = 0) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
}

// GroupNorm with 32 groups (both references' normalisation layer).
inline torch::nn::GroupNorm group_norm(std::int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(32, channels));
}

// A kernel-1 convolution (Conv1d, or Conv2d on flattened positions) applied to tokens
// [B, C_in, L] as one matrix product: LibTorch's CPU convolution sends 1x1 kernels down
// its slow im2col path, which cost a quarter of the forward pass.
inline torch::Tensor pointwise(const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& x) {
  return torch::matmul(weight.flatten(1), x) + bias.unsqueeze(-1);
}
template <class Conv>
torch::Tensor pointwise(const Conv& conv, const torch::Tensor& x) {
  return pointwise(conv->weight, conv->bias, x);
}

inline std::string shape_text(const torch::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace admis::denoisers
