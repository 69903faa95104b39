// Horizontal flip with probability p, drawn as torchvision's RandomHorizontalFlip does:
// flip when torch.rand(1) < p.

#include "augmenters.h"

namespace admis::augmenters {
namespace {

class Flip : public ImageAugmenter {
 public:
  explicit Flip(const Params& p) : ImageAugmenter("augmenter/flip"), p_(p.get_float("p")) {}
  torch::Tensor augment_image(const torch::Tensor& image, at::Generator& generator) override {
    // uint8 images are [H,W,3]; float images (after normalize) are [3,H,W].
    if (!image.defined() || image.dim() != 3) throw Error(name_, "expected an image [H,W,3] uint8 or [3,H,W] float");
    const std::int64_t width_dim = image.scalar_type() == torch::kUInt8 ? 1 : 2;
    if (uniform(generator) < p_) return image.flip({width_dim});
    return image;
  }

 private:
  double p_;
};

}  // namespace

void register_flip(FactoryList& registry) {
  registry.add(Kind::Augmenter, "flip", "1.0.0", "Horizontal flip with probability p",
               {ParamSpec::Float("p", 0.5, "probability of flipping").range(0, 1)},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<Flip>(p); });
}

}  // namespace admis::augmenters
