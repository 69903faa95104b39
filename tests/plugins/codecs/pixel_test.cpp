// pixel (the identity codec): latents are the images, shapes are checked.

#include <gmock/gmock.h>

#include "codecs_test_util.h"

namespace admis::test::codecs {
namespace {

TEST(Pixel, EncodeAndDecodeReturnTheirInput) {
  auto codec = make_codec("pixel");
  EXPECT_EQ(codec->latent_channels(), 3);
  EXPECT_EQ(codec->downsampling_factor(), 1);
  EXPECT_TRUE(codec->module().parameters().empty());
  const torch::Tensor images = random_images(2, 20);  // any size: nothing is resampled
  EXPECT_TRUE(torch::equal(codec->encode(images), images));
  EXPECT_TRUE(torch::equal(codec->decode(images), images));
}

TEST(Pixel, WrongShapesAreRefused) {
  auto codec = make_codec("pixel");
  EXPECT_EQ(error_of([&] { codec->encode(torch::zeros({2, 1, 8, 8})); }),
            "codec/pixel: images must have shape [N, 3, H, W], got [2, 1, 8, 8]");
  EXPECT_EQ(error_of([&] { codec->decode(torch::zeros({3, 8, 8})); }),
            "codec/pixel: latents must have shape [N, 3, H, W], got [3, 8, 8]");
  EXPECT_EQ(error_of([&] { codec->encode(torch::Tensor()); }),
            "codec/pixel: images must have shape [N, 3, H, W], got an undefined tensor");
  EXPECT_EQ(error_of([&] { codec->encode(torch::zeros({0, 3, 8, 8})); }),
            "codec/pixel: images hold no rows (the batch is empty)");
  EXPECT_EQ(error_of([&] { codec->encode(torch::zeros({1, 3, 8, 8}, torch::kUInt8)); }),
            "codec/pixel: images must be floating point, got Byte");
}

TEST(Pixel, WeightsAreRefusedAsItHasNone) {
  const std::string path = temp_dir("pixel") + "/w.safetensors";
  host::write_safetensors({{"scale", torch::ones({1})}}, path);
  EXPECT_THAT(error_of([&] { runtime().create(Kind::Codec, "pixel", {}, path); }),
              ::testing::HasSubstr("unexpected keys"));
}

}  // namespace
}  // namespace admis::test::codecs
