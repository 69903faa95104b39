// Verification embeddings with flip test-time augmentation, as TFace perform_val_bin and
// insightface's verification test(): f(x) + f(flip(x)), then L2-normalised.
#include <fmt/format.h>

#include "admis/host/verification.h"

namespace admis::host {

torch::Tensor embed_with_flip(Backbone& backbone, const torch::Tensor& images, std::int64_t batch_size,
                              const std::function<void(std::int64_t, std::int64_t)>& progress) {
  if (images.dim() != 4 || images.size(3) != 3 || images.scalar_type() != torch::kUInt8)
    throw Error("verification", fmt::format("images must be [N,H,W,3] uint8, got [{}] {}",
                                            fmt::join(images.sizes().vec(), ", "), std::string(images.dtype().name())));
  if (batch_size < 1) throw Error("verification", fmt::format("batch size must be at least 1, got {}", batch_size));
  torch::nn::Module& module = backbone.module();
  const bool was_training = module.is_training();
  module.eval();
  torch::Device device(torch::kCPU);
  for (const auto& p : module.parameters()) {
    device = p.device();
    break;
  }
  const std::int64_t n = images.size(0);
  std::vector<torch::Tensor> parts;
  torch::Tensor normalised;
  {
    torch::InferenceMode guard;
    for (std::int64_t begin = 0; begin < n; begin += batch_size) {
      const std::int64_t end = std::min(n, begin + batch_size);
      torch::Tensor x = images.slice(0, begin, end).permute({0, 3, 1, 2}).to(device, torch::kFloat32);
      x = (x / 255 - 0.5) / 0.5;
      torch::Tensor sum = backbone.forward(x) + backbone.forward(torch::flip(x, {3}));
      parts.push_back(sum.to(torch::kCPU, torch::kFloat64));
      if (progress) progress(end, n);
    }
    // sklearn.preprocessing.normalize in float64, as insightface does on its float64 array.
    torch::Tensor e = torch::cat(parts);
    normalised = e / e.norm(2, 1, true);
  }
  module.train(was_training);
  return normalised.clone();  // an ordinary tensor again, usable outside InferenceMode
}

}  // namespace admis::host
