#pragma once
// The image augmenters. Images are [H,W,3] uint8 RGB until `normalize` turns them into
// [3,H,W] float32; all randomness comes from the generator passed in, drawn the way
// torchvision draws it, so equal seeds give equal results.

#include <string>

#include "admis/sdk.h"

namespace admis::augmenters {

void register_flip(FactoryList& registry);
void register_random_resized_crop(FactoryList& registry);
void register_normalize(FactoryList& registry);
void register_id_oversample(FactoryList& registry);

// One uniform draw in [0,1), as torch.rand(1) with the generator.
double uniform(at::Generator& generator);
// Throws unless `image` is [H,W,3] uint8.
void check_hwc_uint8(const torch::Tensor& image, const std::string& plugin);

// The image-scope augmenters have no identity step.
class ImageAugmenter : public Augmenter {
 public:
  explicit ImageAugmenter(std::string name) : name_(std::move(name)) {}
  AugmenterScope scope() const override { return AugmenterScope::Image; }
  void augment_identity(IdentitySamples&) override {
    throw Error(name_, "an image augmenter: use augment_image, it has no identity step");
  }

 protected:
  std::string name_;
};

}  // namespace admis::augmenters
