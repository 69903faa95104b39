// uint8 [H,W,3] -> float32 [3,H,W]: torchvision ToTensor (x / 255) then Normalize
// ((t - mean) / std); with the default 0.5s the backbones' [-1,1] range.

#include "augmenters.h"

namespace admis::augmenters {
namespace {

class Normalize : public ImageAugmenter {
 public:
  explicit Normalize(const Params& p) : ImageAugmenter("augmenter/normalize") {
    const auto& mean = p.get_floats("mean");
    const auto& std = p.get_floats("std");
    if (mean.size() != 3 || std.size() != 3) throw Error(name_, "mean and std need one value per channel (3)");
    for (double s : std)
      if (s == 0) throw Error(name_, "std must not be 0");
    mean_ = torch::tensor(std::vector<float>(mean.begin(), mean.end())).view({3, 1, 1});
    std_ = torch::tensor(std::vector<float>(std.begin(), std.end())).view({3, 1, 1});
  }
  torch::Tensor augment_image(const torch::Tensor& image, at::Generator&) override {
    check_hwc_uint8(image, name_);
    const torch::Tensor chw = image.permute({2, 0, 1}).to(torch::kFloat32).div(255);
    return chw.sub(mean_).div(std_).contiguous();
  }

 private:
  torch::Tensor mean_, std_;
};

}  // namespace

void register_normalize(FactoryList& registry) {
  registry.add(Kind::Augmenter, "normalize", "1.0.0", "uint8 [H,W,3] -> float32 [3,H,W], (x/255 - mean)/std, [-1,1] by default",
               {ParamSpec::FloatList("mean", {0.5, 0.5, 0.5}, "per-channel mean (RGB)"),
                ParamSpec::FloatList("std", {0.5, 0.5, 0.5}, "per-channel standard deviation (RGB)")},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<Normalize>(p); });
}

}  // namespace admis::augmenters
