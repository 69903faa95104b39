// vq-f4: the LDM VQ-f4 first stage as ADMIS (IDiff-Face's generative code) uses it.
// models/autoencoder/vqgan.py splits the LDM VQModel in two:
//   VQEncoderInterface  x -> quant_conv(encoder(x))                      (no quantisation)
//   VQDecoderInterface  h -> decoder(post_quant_conv(quantize(h)))      (nearest code first,
//                                                                         unless force_not_quantize)
// Training maps images to latents with the encoder; sampling decodes the DDIM result with
// the decoder, which snaps every latent vector to its nearest codebook entry before
// decoding. The networks are LDM's Encoder/Decoder (models/autoencoder/modules.py, the same
// as ldm/modules/diffusionmodules/model.py with the vanilla attention) and taming's
// VectorQuantizer2. Module names are the reference state-dict keys: encoder.*, quant_conv.*,
// quantize.embedding.weight, post_quant_conv.*, decoder.*.

#include <algorithm>
#include <cmath>
#include <set>

#include "codecs.h"

namespace admis::codecs {

namespace {

constexpr const char* kWho = "codec/vq-f4";

using torch::nn::Conv2d;
using torch::nn::Conv2dOptions;

torch::Tensor swish(const torch::Tensor& x) { return x * torch::sigmoid(x); }

// LDM's Normalize: GroupNorm with 32 groups and eps 1e-6.
torch::nn::GroupNorm normalize(std::int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(32, channels).eps(1e-6).affine(true));
}

Conv2d conv(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1, std::int64_t padding = 0) {
  return Conv2d(Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
}

// Nearest-neighbour x2, then a 3x3 convolution.
class UpsampleImpl : public torch::nn::Module {
 public:
  explicit UpsampleImpl(std::int64_t channels) : torch::nn::Module("Upsample") {
    conv = register_module("conv", codecs::conv(channels, channels, 3, 1, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    namespace F = torch::nn::functional;
    return conv(F::interpolate(
        x, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest)));
  }
  Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample);

// A stride-2 3x3 convolution without padding after padding one zero row and column at the
// bottom and right only: LDM's asymmetric padding, which torch's conv cannot express.
class DownsampleImpl : public torch::nn::Module {
 public:
  explicit DownsampleImpl(std::int64_t channels) : torch::nn::Module("Downsample") {
    conv = register_module("conv", codecs::conv(channels, channels, 3, 2, 0));
  }
  torch::Tensor forward(const torch::Tensor& x) { return conv(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0)); }
  Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample);

// norm - swish - conv - norm - swish - dropout - conv, plus the input (through a 1x1
// nin_shortcut when the width changes). The first stage has no timestep embedding
// (temb_ch = 0), so there is no temb_proj.
class ResnetBlockImpl : public torch::nn::Module {
 public:
  ResnetBlockImpl(std::int64_t in_channels, std::int64_t out_channels, double dropout_p)
      : torch::nn::Module("ResnetBlock") {
    norm1 = register_module("norm1", normalize(in_channels));
    conv1 = register_module("conv1", conv(in_channels, out_channels, 3, 1, 1));
    norm2 = register_module("norm2", normalize(out_channels));
    dropout = register_module("dropout", torch::nn::Dropout(dropout_p));
    conv2 = register_module("conv2", conv(out_channels, out_channels, 3, 1, 1));
    if (in_channels != out_channels) nin_shortcut = register_module("nin_shortcut", conv(in_channels, out_channels, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = conv1(swish(norm1(x)));
    h = conv2(dropout(swish(norm2(h))));
    return (nin_shortcut ? nin_shortcut(x) : x) + h;
  }
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2d conv1{nullptr}, conv2{nullptr}, nin_shortcut{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ResnetBlock);

// Single-head self-attention over all positions, with 1x1 convolutions for q, k, v and the
// output projection (LDM's vanilla AttnBlock).
class AttnBlockImpl : public torch::nn::Module {
 public:
  explicit AttnBlockImpl(std::int64_t channels) : torch::nn::Module("AttnBlock") {
    norm = register_module("norm", normalize(channels));
    q = register_module("q", conv(channels, channels, 1));
    k = register_module("k", conv(channels, channels, 1));
    v = register_module("v", conv(channels, channels, 1));
    proj_out = register_module("proj_out", conv(channels, channels, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = norm(x);
    const auto b = x.size(0), c = x.size(1), height = x.size(2), width = x.size(3);
    const torch::Tensor query = q(h).reshape({b, c, height * width}).permute({0, 2, 1});  // b, hw, c
    const torch::Tensor key = k(h).reshape({b, c, height * width});                      // b, c, hw
    torch::Tensor weights = torch::bmm(query, key) * std::pow(static_cast<double>(c), -0.5);
    weights = torch::softmax(weights, 2);
    const torch::Tensor value = v(h).reshape({b, c, height * width});
    const torch::Tensor attended = torch::bmm(value, weights.permute({0, 2, 1})).reshape({b, c, height, width});
    return x + proj_out(attended);
  }
  torch::nn::GroupNorm norm{nullptr};
  Conv2d q{nullptr}, k{nullptr}, v{nullptr}, proj_out{nullptr};
};
TORCH_MODULE(AttnBlock);

// The constructor arguments of LDM's Encoder/Decoder that the first stage's ddconfig sets.
struct DdConfig {
  bool double_z = false;
  std::int64_t z_channels = 3, resolution = 256, in_channels = 3, out_ch = 3, ch = 128;
  std::vector<std::int64_t> ch_mult{1, 2, 4};
  std::int64_t num_res_blocks = 2;
  std::vector<std::int64_t> attn_resolutions;
  double dropout = 0.0;

  bool attends_at(std::int64_t res) const {
    return std::find(attn_resolutions.begin(), attn_resolutions.end(), res) != attn_resolutions.end();
  }
};

// One resolution level: resnet blocks, attention after each block when the level's
// resolution is listed in attn_resolutions, and the resampling layer (all but the last
// level), under the keys block.N, attn.N, downsample / upsample.
struct Level {
  std::shared_ptr<torch::nn::Module> holder = std::make_shared<torch::nn::Module>("Level");
  std::vector<ResnetBlock> blocks;
  std::vector<AttnBlock> attns;
  Downsample downsample{nullptr};
  Upsample upsample{nullptr};

  Level(std::int64_t block_in, std::int64_t block_out, std::int64_t n_blocks, bool attend, double dropout) {
    torch::nn::ModuleList block, attn;
    for (std::int64_t i = 0; i < n_blocks; ++i) {
      blocks.emplace_back(block_in, block_out, dropout);
      block->push_back(blocks.back());
      block_in = block_out;
      if (attend) {
        attns.emplace_back(block_in);
        attn->push_back(attns.back());
      }
    }
    holder->register_module("block", block);
    holder->register_module("attn", attn);
  }
  torch::Tensor blocks_forward(torch::Tensor h) {
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      h = blocks[i](h);
      if (!attns.empty()) h = attns[i](h);
    }
    return h;
  }
};

// mid.block_1 - mid.attn_1 - mid.block_2 at the lowest resolution.
std::shared_ptr<torch::nn::Module> make_mid(std::int64_t channels, double dropout, ResnetBlock& b1, AttnBlock& a1,
                                            ResnetBlock& b2) {
  auto mid = std::make_shared<torch::nn::Module>("Mid");
  b1 = mid->register_module("block_1", ResnetBlock(channels, channels, dropout));
  a1 = mid->register_module("attn_1", AttnBlock(channels));
  b2 = mid->register_module("block_2", ResnetBlock(channels, channels, dropout));
  return mid;
}

class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const DdConfig& c) : torch::nn::Module("Encoder") {
    conv_in = register_module("conv_in", conv(c.in_channels, c.ch, 3, 1, 1));
    auto down = torch::nn::ModuleList();
    std::int64_t curr_res = c.resolution, block_in = c.ch;
    const auto n = static_cast<std::int64_t>(c.ch_mult.size());
    for (std::int64_t level = 0; level < n; ++level) {
      const std::int64_t block_out = c.ch * c.ch_mult[level];
      levels.emplace_back(block_in, block_out, c.num_res_blocks, c.attends_at(curr_res), c.dropout);
      block_in = block_out;
      if (level != n - 1) {
        levels.back().downsample = levels.back().holder->register_module("downsample", Downsample(block_in));
        curr_res /= 2;
      }
      down->push_back(levels.back().holder);
    }
    register_module("down", down);
    register_module("mid", make_mid(block_in, c.dropout, mid_block_1, mid_attn_1, mid_block_2));
    norm_out = register_module("norm_out", normalize(block_in));
    conv_out = register_module("conv_out", conv(block_in, c.double_z ? 2 * c.z_channels : c.z_channels, 3, 1, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = conv_in(x);
    for (auto& level : levels) {
      h = level.blocks_forward(h);
      if (level.downsample) h = level.downsample(h);
    }
    h = mid_block_2(mid_attn_1(mid_block_1(h)));
    return conv_out(swish(norm_out(h)));
  }

  Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
  std::vector<Level> levels;
  ResnetBlock mid_block_1{nullptr}, mid_block_2{nullptr};
  AttnBlock mid_attn_1{nullptr};
};
TORCH_MODULE(Encoder);

class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const DdConfig& c) : torch::nn::Module("Decoder") {
    const auto n = static_cast<std::int64_t>(c.ch_mult.size());
    std::int64_t block_in = c.ch * c.ch_mult[n - 1];
    std::int64_t curr_res = c.resolution >> (n - 1);
    conv_in = register_module("conv_in", conv(c.z_channels, block_in, 3, 1, 1));
    register_module("mid", make_mid(block_in, c.dropout, mid_block_1, mid_attn_1, mid_block_2));
    // Built from the lowest resolution up, stored by level (up.0 is the full resolution), as
    // the reference's up.insert(0, ...) does.
    std::vector<Level> built;
    for (std::int64_t level = n - 1; level >= 0; --level) {
      const std::int64_t block_out = c.ch * c.ch_mult[level];
      built.emplace_back(block_in, block_out, c.num_res_blocks + 1, c.attends_at(curr_res), c.dropout);
      block_in = block_out;
      if (level != 0) {
        built.back().upsample = built.back().holder->register_module("upsample", Upsample(block_in));
        curr_res *= 2;
      }
    }
    levels.assign(built.rbegin(), built.rend());
    auto up = torch::nn::ModuleList();
    for (auto& level : levels) up->push_back(level.holder);
    register_module("up", up);
    norm_out = register_module("norm_out", normalize(block_in));
    conv_out = register_module("conv_out", conv(block_in, c.out_ch, 3, 1, 1));
  }
  torch::Tensor forward(const torch::Tensor& z) {
    torch::Tensor h = mid_block_2(mid_attn_1(mid_block_1(conv_in(z))));
    for (auto level = levels.rbegin(); level != levels.rend(); ++level) {
      h = level->blocks_forward(h);
      if (level->upsample) h = level->upsample(h);
    }
    return conv_out(swish(norm_out(h)));
  }

  Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
  std::vector<Level> levels;  // by level, 0 = full resolution
  ResnetBlock mid_block_1{nullptr}, mid_block_2{nullptr};
  AttnBlock mid_attn_1{nullptr};
};
TORCH_MODULE(Decoder);

// taming's VectorQuantizer2 at inference: every latent vector (over channels) is replaced
// by its nearest codebook entry in Euclidean distance. The codebook starts uniform in
// [-1/n_e, 1/n_e] as in the reference.
class VectorQuantizerImpl : public torch::nn::Module {
 public:
  VectorQuantizerImpl(std::int64_t n_e, std::int64_t e_dim) : torch::nn::Module("VectorQuantizer2") {
    embedding = register_module("embedding", torch::nn::Embedding(n_e, e_dim));
    torch::NoGradGuard no_grad;
    embedding->weight.uniform_(-1.0 / static_cast<double>(n_e), 1.0 / static_cast<double>(n_e));
  }

  torch::Tensor forward(const torch::Tensor& z) {
    const torch::Tensor codebook = embedding->weight;
    const torch::Tensor z_hwc = z.permute({0, 2, 3, 1}).contiguous();
    const torch::Tensor flat = z_hwc.view({-1, codebook.size(1)});
    const torch::Tensor codebook_sq = codebook.pow(2).sum(1);
    // The reference's distance |z|^2 + |e|^2 - 2 z.e (the same arithmetic, so that the
    // same code wins), over blocks of rows: the full [positions, n_e] matrix of a batch of
    // 50 faces at 32x32 latents with 8192 codes would take 1.6 GB.
    constexpr std::int64_t kRows = 4096;
    std::vector<torch::Tensor> indices;
    for (std::int64_t start = 0; start < flat.size(0); start += kRows) {
      const torch::Tensor rows = flat.slice(0, start, std::min(start + kRows, flat.size(0)));
      const torch::Tensor d =
          rows.pow(2).sum(1, /*keepdim=*/true) + codebook_sq - 2 * torch::matmul(rows, codebook.t());
      indices.push_back(d.argmin(1));
    }
    const torch::Tensor z_q = embedding(torch::cat(indices)).view(z_hwc.sizes());
    // Straight-through form, z + (z_q - z).detach(), as the reference returns it: equal
    // to z_q up to rounding, with the gradient of z.
    const torch::Tensor out = z_hwc + (z_q - z_hwc).detach();
    return out.permute({0, 3, 1, 2}).contiguous();
  }

  torch::nn::Embedding embedding{nullptr};
};
TORCH_MODULE(VectorQuantizer);

// The whole first stage under the reference keys; encoder_part / decoder_part hold the
// same submodules as VQEncoderInterface / VQDecoderInterface do, so that each released
// file loads strictly into exactly its half.
class VQModelImpl : public torch::nn::Module {
 public:
  VQModelImpl(const DdConfig& c, std::int64_t embed_dim, std::int64_t n_embed) : torch::nn::Module("VQModel") {
    encoder = register_module("encoder", Encoder(c));
    quant_conv = register_module("quant_conv", conv(c.z_channels, embed_dim, 1));
    quantize = register_module("quantize", VectorQuantizer(n_embed, embed_dim));
    post_quant_conv = register_module("post_quant_conv", conv(embed_dim, c.z_channels, 1));
    decoder = register_module("decoder", Decoder(c));

    encoder_part = std::make_shared<torch::nn::Module>("VQEncoderInterface");
    encoder_part->register_module("encoder", encoder);
    encoder_part->register_module("quant_conv", quant_conv);
    decoder_part = std::make_shared<torch::nn::Module>("VQDecoderInterface");
    decoder_part->register_module("decoder", decoder);
    decoder_part->register_module("quantize", quantize);
    decoder_part->register_module("post_quant_conv", post_quant_conv);
  }

  torch::Tensor encode(const torch::Tensor& x) { return quant_conv(encoder(x)); }
  torch::Tensor decode(const torch::Tensor& h, bool force_not_quantize) {
    const torch::Tensor quant = force_not_quantize ? h : quantize(h);
    return decoder(post_quant_conv(quant));
  }

  Encoder encoder{nullptr};
  Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
  VectorQuantizer quantize{nullptr};
  Decoder decoder{nullptr};
  std::shared_ptr<torch::nn::Module> encoder_part, decoder_part;
};
TORCH_MODULE(VQModel);

DdConfig read_ddconfig(const Params& p) {
  DdConfig c;
  c.double_z = p.get_bool("double_z");
  c.z_channels = p.get_int("z_channels");
  c.resolution = p.get_int("resolution");
  c.in_channels = p.get_int("in_channels");
  c.out_ch = p.get_int("out_ch");
  c.ch = p.get_int("ch");
  c.ch_mult = p.get_ints("ch_mult");
  c.num_res_blocks = p.get_int("num_res_blocks");
  c.attn_resolutions = p.get_ints("attn_resolutions");
  c.dropout = p.get_float("dropout");

  // VQModel's quant_conv takes z_channels; a doubled output (a KL autoencoder's mean and
  // log-variance) cannot feed it.
  if (c.double_z)
    throw Error(kWho, "double_z = true makes the encoder output 2 * z_channels (mean and log-variance of a KL "
                      "autoencoder), which quant_conv (z_channels -> embed_dim) cannot take; a VQ first stage "
                      "uses double_z = false");
  // Every GroupNorm has 32 groups (LDM's Normalize), so every width (ch * ch_mult) must be
  // a multiple of 32; ch being one suffices.
  if (c.ch % 32 != 0)
    throw Error(kWho, "ch = " + std::to_string(c.ch) +
                          " is not a multiple of 32, the GroupNorm group count (LDM's Normalize)");
  // (The schema already holds every multiplier >= 1.)
  if (c.ch_mult.empty()) throw Error(kWho, "ch_mult must list at least one multiplier");
  return c;
}

class VqF4Codec final : public Codec {
 public:
  VqF4Codec(const Params& p, Host& host)
      : config_(read_ddconfig(p)),
        embed_dim_(p.get_int("embed_dim")),
        factor_(std::int64_t{1} << (config_.ch_mult.size() - 1)),
        force_not_quantize_(p.get_bool("force_not_quantize")),
        model_(config_, embed_dim_, p.get_int("n_embed")) {
    load_part(host, *model_->encoder_part, p.get_path("encoder_weights"), "encoder_weights",
              "first_stage_encoder_state_dict.pt (keys encoder.*, quant_conv.*)");
    load_part(host, *model_->decoder_part, p.get_path("decoder_weights"), "decoder_weights",
              "first_stage_decoder_state_dict.pt (keys decoder.*, quantize.embedding.weight, post_quant_conv.*)");
  }

  std::int64_t latent_channels() const override { return embed_dim_; }
  std::int64_t downsampling_factor() const override { return factor_; }
  torch::nn::Module& module() override { return *model_; }

  torch::Tensor encode(const torch::Tensor& images) override {
    check_batch(images, config_.in_channels, factor_, kWho, "images");
    return model_->encode(on_module(images));
  }

  torch::Tensor decode(const torch::Tensor& latents) override {
    check_batch(latents, embed_dim_, 1, kWho, "latents");
    return model_->decode(on_module(latents), force_not_quantize_);
  }

 private:
  // The released halves load strictly, each into the submodules its interface holds. A
  // file of the other half (or of something else) is named with the key groups it lacks.
  static void load_part(Host& host, torch::nn::Module& part, const std::string& path, const std::string& param,
                        const std::string& expected) {
    if (path.empty()) return;
    StateDict weights;
    try {
      weights = host.read_weights(path);
    } catch (const Error& e) {
      throw Error(kWho, param + " = '" + path + "' cannot be read: " + e.what());
    }
    std::set<std::string> groups;  // top-level names in the file: encoder, quant_conv, ...
    for (const auto& [key, tensor] : weights) groups.insert(key.substr(0, key.find('.')));
    std::string absent;
    for (const auto& child : part.named_children())
      if (!groups.count(child.key())) absent += (absent.empty() ? "" : ", ") + child.key() + ".*";
    std::string diagnosis;
    if (!absent.empty()) {
      std::string present;
      for (const auto& g : groups) present += (present.empty() ? "" : ", ") + g + ".*";
      diagnosis = "; it has no " + absent + " keys" + (present.empty() ? "" : " but " + present);
    }
    try {
      host.load_state_dict(part, weights, LoadOptions{}, path);
    } catch (const Error& e) {
      throw Error(kWho, param + " = '" + path + "' does not hold the expected weights (the released " + expected +
                            ")" + diagnosis + ": " + e.what());
    }
  }

  // The module's first parameter says where and in what type to compute.
  torch::Tensor on_module(const torch::Tensor& t) {
    const torch::Tensor reference = model_->encoder->conv_in->weight;
    return t.to(reference.device(), reference.scalar_type());
  }

  DdConfig config_;
  std::int64_t embed_dim_;
  std::int64_t factor_;
  bool force_not_quantize_;
  VQModel model_;
};

}  // namespace

void register_vq_f4(FactoryList& registry) {
  registry.add(
      Kind::Codec, "vq-f4", "1.0.0",
      "LDM VQ-f4 first stage as ADMIS/IDiff-Face use it: encode without quantising, decode after nearest-code "
      "lookup",
      {ParamSpec::Bool("double_z", false, "ddconfig: encoder outputs 2*z_channels (KL autoencoders); must be false"),
       ParamSpec::Int("z_channels", 3, "ddconfig: channels of the encoder output / decoder input").at_least(1),
       ParamSpec::Int("resolution", 256, "ddconfig: nominal image side, places attn_resolutions").at_least(1),
       ParamSpec::Int("in_channels", 3, "ddconfig: image channels the encoder takes").at_least(1),
       ParamSpec::Int("out_ch", 3, "ddconfig: image channels the decoder returns").at_least(1),
       ParamSpec::Int("ch", 128, "ddconfig: base width (a multiple of 32, the GroupNorm groups)").at_least(32),
       ParamSpec::IntList("ch_mult", {1, 2, 4}, "ddconfig: width multipliers per level; f = 2^(levels-1)")
           .at_least(1),
       ParamSpec::Int("num_res_blocks", 2, "ddconfig: resnet blocks per level (decoder: one more)").at_least(1),
       ParamSpec::IntList("attn_resolutions", {}, "ddconfig: resolutions with self-attention after each block"),
       ParamSpec::Float("dropout", 0.0, "ddconfig: dropout inside the resnet blocks").range(0.0, 0.999),
       ParamSpec::Int("embed_dim", 3, "codebook vector size = latent channels").at_least(1),
       ParamSpec::Int("n_embed", 8192, "codebook entries").at_least(1),
       ParamSpec::Bool("force_not_quantize", false,
                       "decode the latents as they are, skipping the nearest-code lookup (VQDecoderInterface flag)"),
       ParamSpec::Path("encoder_weights", "",
                       "released first_stage_encoder_state_dict.pt (encoder.*, quant_conv.*); empty: none"),
       ParamSpec::Path("decoder_weights", "",
                       "released first_stage_decoder_state_dict.pt (decoder.*, quantize.*, post_quant_conv.*); "
                       "empty: none")},
      [](const Params& p, Host& host) -> std::unique_ptr<Plugin> { return std::make_unique<VqF4Codec>(p, host); });
}

}  // namespace admis::codecs
