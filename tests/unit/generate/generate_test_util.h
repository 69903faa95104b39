#pragma once
// Test-local implementations for the generative training and sampling code, so it is
// tested without the UNet and codec plugins: a small conditional conv denoiser, the
// identity codec, an in-memory context source with faces, and an identity augmenter that
// appends copies of the context face.

#include <torch/torch.h>

#include "admis/sdk.h"

namespace admis::test {

// eps_theta(x, t, c) = conv2(SiLU(conv1(x) + W_t t/T + W_c c')) with c' the context, or
// zero (the empty context) where dropped; a dropout layer so train mode draws randomness.
struct TinyDenoiserNetImpl : torch::nn::Module {
  TinyDenoiserNetImpl(std::int64_t channels, std::int64_t context) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, 16, 3).padding(1)));
    time = register_module("time", torch::nn::Linear(1, 16));
    if (context > 0) context_proj = register_module("context_proj", torch::nn::Linear(context, 16));
    dropout = register_module("dropout", torch::nn::Dropout(0.1));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, channels, 3).padding(1)));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear time{nullptr}, context_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(TinyDenoiserNet);

class TinyDenoiser : public Denoiser {
 public:
  TinyDenoiser(std::int64_t channels = 3, std::int64_t context = 8) : channels_(channels), context_(context), net_(channels, context) {}
  torch::nn::Module& module() override { return *net_; }
  std::int64_t in_channels() const override { return channels_; }
  std::int64_t out_channels() const override { return channels_; }
  std::int64_t context_size() const override { return context_; }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                        const torch::Tensor& mask) override {
    torch::Tensor h = net_->conv1(x) + net_->time(t.to(torch::kFloat32).unsqueeze(1) / 1000).unsqueeze(2).unsqueeze(3);
    if (context_ > 0 && context.defined()) {
      torch::Tensor c = net_->context_proj(context);
      if (mask.defined()) c = c * (~mask).to(c.dtype()).unsqueeze(1);
      h = h + c.unsqueeze(2).unsqueeze(3);
    }
    return net_->conv2(net_->dropout(torch::silu(h)));
  }

 private:
  std::int64_t channels_, context_;
  TinyDenoiserNet net_;
};

struct EmptyModuleImpl : torch::nn::Module {};
TORCH_MODULE(EmptyModule);

class IdentityCodec : public Codec {
 public:
  torch::nn::Module& module() override { return *module_; }
  std::int64_t latent_channels() const override { return 3; }
  std::int64_t downsampling_factor() const override { return 1; }
  torch::Tensor encode(const torch::Tensor& images) override { return images; }
  torch::Tensor decode(const torch::Tensor& latents) override { return latents; }

 private:
  EmptyModule module_;
};

// Context i: a fixed random unit vector; face i: a flat colour image.
class TableContexts : public ContextSource {
 public:
  TableContexts(std::int64_t count, std::int64_t dim) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(77);
    table_ = torch::nn::functional::normalize(at::randn({count, dim}, gen, torch::TensorOptions(torch::kFloat32)),
                                              torch::nn::functional::NormalizeFuncOptions().dim(1));
  }
  std::int64_t size() const override { return table_.size(0); }
  std::int64_t embedding_size() const override { return table_.size(1); }
  IdentityContexts read(std::int64_t first, std::int64_t count) override {
    IdentityContexts out;
    out.embeddings = table_.slice(0, first, first + count);
    out.faces = torch::empty({count, 20, 20, 3}, torch::kUInt8);
    for (std::int64_t k = 0; k < count; ++k) out.faces[k].fill_(static_cast<std::uint8_t>((first + k) * 37 % 256));
    return out;
  }

 private:
  torch::Tensor table_;
};

// Appends `copies` copies of the context face, numbered after the identity's images.
class CopyContextFace : public Augmenter {
 public:
  explicit CopyContextFace(int copies) : copies_(copies) {}
  AugmenterScope scope() const override { return AugmenterScope::Identity; }
  torch::Tensor augment_image(const torch::Tensor& image, at::Generator&) override { return image; }
  void augment_identity(IdentitySamples& identity) override {
    const auto n = identity.samples.size();
    for (int c = 0; c < copies_; ++c) {
      Sample s;
      s.image = identity.context_face;
      s.label_name = identity.label_name;
      s.name = std::to_string(n + static_cast<std::size_t>(c)) + ".png";
      identity.samples.push_back(s);
    }
  }

 private:
  int copies_;
};

}  // namespace admis::test
