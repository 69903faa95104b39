// admis_augmenters: image augmenters of recognition training, and the identity-level
// oversampling of generated datasets.
//   flip                  horizontal flip with probability p (torchvision RandomHorizontalFlip)
//   random-resized-crop   TFace/ADMIS RandomApply(RandomResizedCrop), or AdaFace's in-place crop
//   normalize             uint8 [H,W,3] -> float32 [3,H,W], (x/255 - mean)/std
//   id-oversample         DCFace/ADMIS identity oversampling: the context face added `copies` times

#include "admis/sdk/plugin.h"
#include "augmenters.h"

namespace admis::augmenters {

double uniform(at::Generator& generator) {
  return at::rand({1}, generator, torch::kFloat32).item<double>();
}

void check_hwc_uint8(const torch::Tensor& image, const std::string& plugin) {
  if (!image.defined() || image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != torch::kUInt8)
    throw Error(plugin, "expected an image [H,W,3] uint8 RGB, got " +
                            (image.defined() ? std::string(image.sizes().vec().empty() ? "a scalar" : "shape ") +
                                                   c10::str(image.sizes()) + " " + std::string(image.dtype().name())
                                             : std::string("nothing")));
}

}  // namespace admis::augmenters

ADMIS_PLUGIN("admis_augmenters", "1.0.0") {
  admis::augmenters::register_flip(registry);
  admis::augmenters::register_random_resized_crop(registry);
  admis::augmenters::register_normalize(registry);
  admis::augmenters::register_id_oversample(registry);
}
