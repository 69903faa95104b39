// Image augmenters: determinism under equal seeds, flip frequency, torchvision's crop
// geometry, AdaFace's in-place crop and the [-1,1] normalisation.

#include <cmath>

#include "support/support.h"

namespace admis::test::augmenters {
namespace {

using ParamMap = std::map<std::string, Value>;

std::shared_ptr<Augmenter> make(const std::string& name, const ParamMap& params = {}) {
  return create<Augmenter>(Kind::Augmenter, name, params);
}

torch::Tensor random_image(std::int64_t h = 28, std::int64_t w = 24, std::uint64_t seed = 1) {
  auto g = at::detail::createCPUGenerator(seed);
  return at::randint(0, 256, {h, w, 3}, g, torch::kUInt8);
}

TEST(Augmenters, EqualSeedsGiveEqualResults) {
  const auto image = random_image();
  for (const auto& [name, params] : std::vector<std::pair<std::string, ParamMap>>{
           {"flip", {}}, {"random-resized-crop", {{"p", 1.0}}}, {"random-resized-crop", {{"p", 1.0}, {"mode", "adaface"}}}}) {
    auto a = make(name, params);
    EXPECT_EQ(a->scope(), AugmenterScope::Image);
    auto g1 = at::detail::createCPUGenerator(11), g2 = at::detail::createCPUGenerator(11);
    bool any_change = false;
    for (int i = 0; i < 20; ++i) {
      const auto x = a->augment_image(image, g1), y = a->augment_image(image, g2);
      EXPECT_TRUE(torch::equal(x, y)) << name << " draw " << i;
      any_change = any_change || !torch::equal(x, image);
    }
    EXPECT_TRUE(any_change) << name << " never changed the image";
  }
}

TEST(Flip, FlipsAboutPOfTheTime) {
  const auto image = random_image();
  const auto mirrored = image.flip({1});
  for (double p : {0.5, 0.2}) {
    auto flip = make("flip", {{"p", p}});
    auto g = at::detail::createCPUGenerator(5);
    const int n = 4000;
    int flipped = 0;
    for (int i = 0; i < n; ++i) {
      const auto out = flip->augment_image(image, g);
      if (torch::equal(out, mirrored)) ++flipped;
      else ASSERT_TRUE(torch::equal(out, image));
    }
    const double sigma = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(flipped, n * p, 5 * sigma) << "p = " << p;
  }
  auto g = at::detail::createCPUGenerator(0);
  EXPECT_TRUE(torch::equal(make("flip", {{"p", 1.0}})->augment_image(image, g), mirrored));
  EXPECT_TRUE(torch::equal(make("flip", {{"p", 0.0}})->augment_image(image, g), image));
  // After normalize the image is [3,H,W] float: the width is dimension 2.
  const auto chw = image.permute({2, 0, 1}).to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(make("flip", {{"p", 1.0}})->augment_image(chw, g), chw.flip({2})));
}

TEST(RandomResizedCrop, AppliesWithProbabilityPAndKeepsTheSize) {
  const auto image = random_image();
  auto crop = make("random-resized-crop");  // p = 0.2 by default, as TFace/ADMIS
  auto g = at::detail::createCPUGenerator(3);
  const int n = 2000;
  int changed = 0;
  for (int i = 0; i < n; ++i) {
    const auto out = crop->augment_image(image, g);
    ASSERT_EQ(out.sizes(), image.sizes());
    ASSERT_EQ(out.scalar_type(), torch::kUInt8);
    if (!torch::equal(out, image)) ++changed;
  }
  // A crop of the whole image (possible at scale 1) leaves it unchanged, so slightly under p.
  EXPECT_NEAR(changed, 0.2 * n, 5 * std::sqrt(n * 0.2 * 0.8));
}

TEST(RandomResizedCrop, ResizeModeOfAConstantImageIsConstant) {
  const auto image = torch::full({20, 16, 3}, 77, torch::kUInt8);
  auto crop = make("random-resized-crop", {{"p", 1.0}});
  auto g = at::detail::createCPUGenerator(9);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(torch::equal(crop->augment_image(image, g), image));
}

TEST(RandomResizedCrop, ResizeModeMatchesTorchvisionsDrawsAndBilinearResize) {
  // The same draws, made here in torchvision's order, then torch's bilinear resize.
  const auto image = random_image(30, 30, 4);
  auto crop = make("random-resized-crop", {{"p", 1.0}});
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    auto g = at::detail::createCPUGenerator(seed), ref = at::detail::createCPUGenerator(seed);
    const auto out = crop->augment_image(image, g);
    ASSERT_LE(at::rand({1}, ref).item<float>(), 1.0f);  // the RandomApply draw
    std::int64_t top = -1, left = 0, h = 30, w = 30;
    for (int attempt = 0; attempt < 10 && top < 0; ++attempt) {
      const double target = 900.0 * torch::empty({1}).uniform_(0.2, 1.0, ref).item<double>();
      const double aspect =
          torch::empty({1}).uniform_(std::log(0.75f), std::log(4.0f / 3.0f), ref).exp().item<double>();
      const auto cw = static_cast<std::int64_t>(std::nearbyint(std::sqrt(target * aspect)));
      const auto ch = static_cast<std::int64_t>(std::nearbyint(std::sqrt(target / aspect)));
      if (cw > 0 && cw <= 30 && ch > 0 && ch <= 30) {
        h = ch;
        w = cw;
        top = at::randint(0, 30 - h + 1, {1}, ref).item<std::int64_t>();
        left = at::randint(0, 30 - w + 1, {1}, ref).item<std::int64_t>();
      }
    }
    if (top < 0) top = left = 0;
    const auto region = image.slice(0, top, top + h).slice(1, left, left + w).permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32);
    const auto expected = torch::nn::functional::interpolate(
                              region, torch::nn::functional::InterpolateFuncOptions().size(std::vector<std::int64_t>{30, 30})
                                          .mode(torch::kBilinear).align_corners(false))
                              .round().clamp(0, 255).to(torch::kUInt8).squeeze(0).permute({1, 2, 0});
    EXPECT_TRUE(torch::equal(out, expected)) << "seed " << seed;
  }
}

TEST(RandomResizedCrop, AdaFaceModeKeepsTheCropInPlaceOnBlack) {
  const auto image = (random_image(40, 40, 2) / 2 + 1).to(torch::kUInt8);  // no black pixels of its own
  auto crop = make("random-resized-crop", {{"p", 1.0}, {"mode", "adaface"}});
  auto g = at::detail::createCPUGenerator(21);
  for (int i = 0; i < 30; ++i) {
    const auto out = crop->augment_image(image, g);
    const auto kept = (out.sum(2) > 0);
    const auto rows = kept.any(1).nonzero().flatten(), cols = kept.any(0).nonzero().flatten();
    ASSERT_GT(rows.numel(), 0);
    const std::int64_t top = rows[0].item<std::int64_t>(), bottom = rows[-1].item<std::int64_t>() + 1;
    const std::int64_t left = cols[0].item<std::int64_t>(), right = cols[-1].item<std::int64_t>() + 1;
    const double area = static_cast<double>((bottom - top) * (right - left)) / 1600.0;
    EXPECT_GE(area, 0.2 * 0.9);  // scale (0.2, 1) up to rounding
    const double ratio = static_cast<double>(right - left) / static_cast<double>(bottom - top);
    EXPECT_GE(ratio, 0.75 * 0.85);
    EXPECT_LE(ratio, 4.0 / 3.0 / 0.85);
    // Inside the box: the input, untouched; outside: black.
    EXPECT_TRUE(torch::equal(out.slice(0, top, bottom).slice(1, left, right), image.slice(0, top, bottom).slice(1, left, right)));
    EXPECT_EQ(out.sum().item<std::int64_t>(), out.slice(0, top, bottom).slice(1, left, right).sum().item<std::int64_t>());
  }
}

TEST(Normalize, MapsUint8HWCToFloatCHWInMinusOneOne) {
  const auto image = random_image(5, 4);
  auto g = at::detail::createCPUGenerator(0);
  const auto out = make("normalize")->augment_image(image, g);
  ASSERT_EQ(out.sizes(), (std::vector<std::int64_t>{3, 5, 4}));
  ASSERT_EQ(out.scalar_type(), torch::kFloat32);
  const auto expected = (image.permute({2, 0, 1}).to(torch::kFloat64) / 255.0 - 0.5) / 0.5;
  EXPECT_TRUE(all_close(out.to(torch::kFloat64), expected, 1e-6));
  EXPECT_FLOAT_EQ(make("normalize")->augment_image(torch::full({1, 1, 3}, 255, torch::kUInt8), g).max().item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(make("normalize")->augment_image(torch::zeros({1, 1, 3}, torch::kUInt8), g).min().item<float>(), -1.0f);
  EXPECT_THAT(error_of([&] { make("normalize")->augment_image(torch::zeros({3, 5, 4}), g); }),
              ::testing::HasSubstr("augmenter/normalize: expected an image [H,W,3] uint8"));
}

}  // namespace
}  // namespace admis::test::augmenters
