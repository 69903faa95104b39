// TFace/ADMIS training crop: RandomApply([RandomResizedCrop(size)], p) with torchvision's
// get_params (scale, log-uniform aspect ratio, up to 10 attempts, then a centre crop
// clamped to the ratio range). mode `resize` resizes the crop back to the input size
// (bilinear, half-pixel centres, rounded, as torchvision's tensor path); mode `adaface`
// keeps the crop where it was on a black canvas of the input size (AdaFace's
// crop_augment), so the face keeps its scale but loses its surroundings.

#include <cmath>

#include "augmenters.h"

namespace admis::augmenters {
namespace {

struct CropBox {
  std::int64_t top, left, height, width;
};

class RandomResizedCrop : public ImageAugmenter {
 public:
  explicit RandomResizedCrop(const Params& p)
      : ImageAugmenter("augmenter/random-resized-crop"),
        p_(p.get_float("p")),
        scale_(p.get_floats("scale")),
        ratio_(p.get_floats("ratio")),
        adaface_(p.get_string("mode") == "adaface") {
    if (scale_.size() != 2 || ratio_.size() != 2 || scale_[0] > scale_[1] || ratio_[0] > ratio_[1] || scale_[0] <= 0 ||
        ratio_[0] <= 0)
      throw Error(name_, "scale and ratio must each be [low, high] with 0 < low <= high");
  }

  torch::Tensor augment_image(const torch::Tensor& image, at::Generator& generator) override {
    check_hwc_uint8(image, name_);
    if (p_ < uniform(generator)) return image;  // RandomApply: skip when p < torch.rand(1)
    const std::int64_t height = image.size(0), width = image.size(1);
    const CropBox box = crop_box(height, width, generator);
    const torch::Tensor crop = image.slice(0, box.top, box.top + box.height).slice(1, box.left, box.left + box.width);
    if (adaface_) {
      torch::Tensor canvas = torch::zeros_like(image);
      canvas.slice(0, box.top, box.top + box.height).slice(1, box.left, box.left + box.width).copy_(crop);
      return canvas;
    }
    const torch::Tensor nchw = crop.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32);
    const torch::Tensor resized = at::upsample_bilinear2d(nchw, {height, width}, /*align_corners=*/false);
    return resized.round().clamp(0, 255).to(torch::kUInt8).squeeze(0).permute({1, 2, 0}).contiguous();
  }

  // torchvision RandomResizedCrop.get_params, drawing from `generator` in the same order.
  CropBox crop_box(std::int64_t height, std::int64_t width, at::Generator& generator) const {
    const double area = static_cast<double>(height * width);
    const float log_low = std::log(static_cast<float>(ratio_[0])), log_high = std::log(static_cast<float>(ratio_[1]));
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target_area =
          area * torch::empty({1}).uniform_(scale_[0], scale_[1], generator).item<double>();
      const double aspect = torch::empty({1}).uniform_(log_low, log_high, generator).exp().item<double>();
      // Python's round(): halves to even, as std::nearbyint does in the default mode.
      const auto w = static_cast<std::int64_t>(std::nearbyint(std::sqrt(target_area * aspect)));
      const auto h = static_cast<std::int64_t>(std::nearbyint(std::sqrt(target_area / aspect)));
      if (w > 0 && w <= width && h > 0 && h <= height) {
        const std::int64_t top = at::randint(0, height - h + 1, {1}, generator).item<std::int64_t>();
        const std::int64_t left = at::randint(0, width - w + 1, {1}, generator).item<std::int64_t>();
        return {top, left, h, w};
      }
    }
    // Centre crop, its aspect ratio clamped into the allowed range.
    const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
    std::int64_t w = width, h = height;
    if (in_ratio < ratio_[0]) h = static_cast<std::int64_t>(std::nearbyint(w / ratio_[0]));
    else if (in_ratio > ratio_[1]) w = static_cast<std::int64_t>(std::nearbyint(h * ratio_[1]));
    return {(height - h) / 2, (width - w) / 2, h, w};
  }

 private:
  double p_;
  std::vector<double> scale_, ratio_;
  bool adaface_;
};

}  // namespace

void register_random_resized_crop(FactoryList& registry) {
  registry.add(Kind::Augmenter, "random-resized-crop", "1.0.0",
               "With probability p, torchvision's random resized crop back to the input size (resize) or kept in place "
               "on black (adaface)",
               {ParamSpec::Float("p", 0.2, "probability of cropping").range(0, 1),
                ParamSpec::FloatList("scale", {0.2, 1.0}, "range of the crop's area as a fraction of the image's"),
                ParamSpec::FloatList("ratio", {3.0 / 4.0, 4.0 / 3.0}, "range of the crop's aspect ratio (width / height)"),
                ParamSpec::String("mode", "resize", "resize: back to the input size; adaface: in place on a black canvas")
                    .one_of({"resize", "adaface"})},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<RandomResizedCrop>(p); });
}

}  // namespace admis::augmenters
