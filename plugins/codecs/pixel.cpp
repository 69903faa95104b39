// pixel: the identity codec. Pixel-space diffusion (e.g. the unconditional FFHQ DDPM that
// makes ADMIS's context faces) runs its denoiser on the images themselves, so a pipeline
// that always encodes and decodes can use this codec to skip the latent space.

#include "codecs.h"

namespace admis::codecs {

namespace {

class PixelCodec final : public Codec {
 public:
  std::int64_t latent_channels() const override { return 3; }
  std::int64_t downsampling_factor() const override { return 1; }
  // No state: an empty module, so that the host can treat every codec alike.
  torch::nn::Module& module() override { return module_; }

  torch::Tensor encode(const torch::Tensor& images) override {
    check_batch(images, 3, 1, "codec/pixel", "images");
    return images;
  }
  torch::Tensor decode(const torch::Tensor& latents) override {
    check_batch(latents, 3, 1, "codec/pixel", "latents");
    return latents;
  }

 private:
  torch::nn::Module module_{"PixelCodec"};
};

}  // namespace

void register_pixel(FactoryList& registry) {
  registry.add(Kind::Codec, "pixel", "1.0.0",
               "identity codec for pixel-space diffusion: latents are the images themselves (3 channels, factor 1)",
               {}, [](const Params&, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<PixelCodec>(); });
}

}  // namespace admis::codecs
