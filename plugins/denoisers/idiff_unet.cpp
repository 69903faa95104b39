// `idiff-unet`: IDiff-Face's ConditionalUNet as ADMIS trains and samples it
// (generative_model_training/models/diffusion/unet.py and nn.py; the network follows the
// labml.ai annotated DDPM UNet). An image projection, a sinusoidal time embedding, a
// projected identity context, residual blocks conditioned in one of four ways, attention
// blocks (self-attention, or self- plus cross-attention on the context for 'CA'), and a
// zero-initialised output convolution that predicts eps.
//
// Conditioning (condition_type, as the reference's ResidualBlock reads it):
//   AddPlusGN  h = GroupNorm(conv1(...) + time_emb(t) + context_emb(c))        (Ho et al.)
//   AdaGN      h = (1 + scale(e)) GroupNorm(h) + shift(e), e = time_emb(t) + context_emb(c)
//   DiffAE     AdaGN on time only, then h *= context_emb(c)                     (Preechakul et al.)
//   CA         AdaGN on time only; the context enters through cross-attention blocks
// Module and parameter names are the reference's state-dict keys (without the DDPM
// wrapper's 'eps_model.' prefix, which checkpoint_layout() strips).

#include <cmath>
#include <limits>
#include <sstream>

#include "denoisers.h"
#include "layers.h"

namespace admis::denoisers {

namespace {

const char* const kWhere = "denoiser/idiff-unet";

enum class Condition { AddPlusGN, AdaGN, DiffAE, CA };

Condition parse_condition(const std::string& name) {
  if (name == "AddPlusGN") return Condition::AddPlusGN;
  if (name == "AdaGN") return Condition::AdaGN;
  if (name == "DiffAE") return Condition::DiffAE;
  if (name == "CA") return Condition::CA;
  // The schema's choices refuse anything else before construction.
  throw Error(kWhere, "parameter 'condition_type' = '" + name + "' is not one of: AddPlusGN, AdaGN, DiffAE, CA");
}

// Sequential(SiLU, Linear): the keys are <name>.1.weight / .bias.
torch::nn::Sequential silu_linear(std::int64_t in, std::int64_t out) {
  return torch::nn::Sequential(torch::nn::SiLU(), torch::nn::Linear(in, out));
}

// SinusoidalTimeEmbedding(n_channels): [cos | sin] of t times n_channels / 8 frequencies
// exp(-ln(10000) k / half), then lin1 - SiLU - lin2 to n_channels.
class SinusoidalTimeEmbeddingImpl : public torch::nn::Module {
 public:
  explicit SinusoidalTimeEmbeddingImpl(std::int64_t n_channels) : torch::nn::Module("SinusoidalTimeEmbedding") {
    const std::int64_t input_channels = n_channels / 4;
    const std::int64_t half = input_channels / 2;
    // The reference keeps the frequencies as a plain attribute, not a buffer: not in the state dict.
    frequencies_ = torch::exp(-std::log(10000.0) * torch::arange(half, torch::kFloat32) / static_cast<double>(half));
    lin1 = register_module("lin1", torch::nn::Linear(input_channels, n_channels));
    lin2 = register_module("lin2", torch::nn::Linear(n_channels, n_channels));
  }
  torch::Tensor forward(const torch::Tensor& t) {
    const torch::Tensor args = t.unsqueeze(1).to(torch::kFloat32) * frequencies_.to(t.device()).unsqueeze(0);
    const torch::Tensor emb = torch::cat({torch::cos(args), torch::sin(args)}, -1).to(lin1->weight.scalar_type());
    return lin2(torch::silu(lin1(emb)));
  }

  torch::nn::Linear lin1{nullptr}, lin2{nullptr};

 private:
  torch::Tensor frequencies_;
};
TORCH_MODULE(SinusoidalTimeEmbedding);

// AdaptiveGroupNormalization: (1 + scale) * GroupNorm(x) + shift.
class AdaptiveGroupNormalizationImpl : public torch::nn::Module {
 public:
  explicit AdaptiveGroupNormalizationImpl(std::int64_t channels) : torch::nn::Module("AdaptiveGroupNormalization") {
    norm = register_module("norm", group_norm(channels));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& shift) {
    return (1 + scale) * norm(x) + shift;
  }
  torch::nn::GroupNorm norm{nullptr};
};
TORCH_MODULE(AdaptiveGroupNormalization);

// What every block of the down, middle and up paths receives: features, the time
// embedding and the (possibly undefined) shared context embedding.
class StageImpl : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) = 0;
  // Upsample/Downsample: the up path applies them without a skip connection.
  virtual bool resamples() const { return false; }
};

// ResidualBlock: GroupNorm - SiLU - conv1, the conditioning, SiLU - conv2 (zeroed), plus
// a 1x1 shortcut when the channel count changes. The reference's dropout has p = 0 (the
// UNet never sets it), so it is the identity and is left out.
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(std::int64_t in_channels, std::int64_t out_channels, std::int64_t time_channels,
                    std::int64_t context_channels, Condition condition, bool conditional)
      : torch::nn::Module("ResidualBlock"), condition_(condition), conditional_(conditional) {
    norm1 = register_module("norm1", group_norm(in_channels));
    conv1 = register_module("conv1", conv2d(in_channels, out_channels, 3, 1, 1));
    time_emb = register_module("time_emb", silu_linear(time_channels, out_channels));
    if (condition_ == Condition::AddPlusGN) {
      if (conditional_) context_emb = register_module("context_emb", silu_linear(context_channels, out_channels));
      norm2 = register_module("norm2", group_norm(out_channels));
    } else {
      // CA conditions its residual blocks on time alone.
      if (conditional_ && condition_ != Condition::CA)
        context_emb = register_module("context_emb", silu_linear(context_channels, out_channels));
      scale_emb = register_module("scale_emb", torch::nn::Linear(out_channels, out_channels));
      shift_emb = register_module("shift_emb", torch::nn::Linear(out_channels, out_channels));
      ada_norm2 = register_module("norm2", AdaptiveGroupNormalization(out_channels));
    }
    conv2 = register_module("conv2", zeroed(conv2d(out_channels, out_channels, 3, 1, 1)));
    if (in_channels != out_channels) shortcut = register_module("shortcut", conv2d(in_channels, out_channels, 1));
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) {
    torch::Tensor h = conv1(torch::silu(norm1(x)));
    switch (condition_) {
      case Condition::AddPlusGN:
        h = h + time_emb->forward(t).unsqueeze(-1).unsqueeze(-1);
        if (conditional_) h = h + context_emb->forward(c).unsqueeze(-1).unsqueeze(-1);
        h = norm2(h);
        break;
      case Condition::AdaGN:
      case Condition::DiffAE:
      case Condition::CA: {
        torch::Tensor emb = time_emb->forward(t);
        if (conditional_ && condition_ == Condition::AdaGN) emb = emb + context_emb->forward(c);
        h = ada_norm2(h, scale_emb(emb).unsqueeze(-1).unsqueeze(-1), shift_emb(emb).unsqueeze(-1).unsqueeze(-1));
        if (conditional_ && condition_ == Condition::DiffAE) h = h * context_emb->forward(c).unsqueeze(-1).unsqueeze(-1);
        break;
      }
    }
    h = conv2(torch::silu(h));
    return h + (shortcut ? pointwise(shortcut, x.flatten(2)).view(h.sizes()) : x);
  }

  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, shortcut{nullptr};
  torch::nn::Sequential time_emb{nullptr}, context_emb{nullptr};
  torch::nn::Linear scale_emb{nullptr}, shift_emb{nullptr};
  AdaptiveGroupNormalization ada_norm2{nullptr};

 private:
  Condition condition_;
  bool conditional_;
};
TORCH_MODULE(ResidualBlock);

torch::nn::Conv1d conv1x1(std::int64_t in, std::int64_t out) {
  return torch::nn::Conv1d(torch::nn::Conv1dOptions(in, out, 1));
}


// MultiHeadAttention over token sequences [B, channels, length]: 1x1 Conv1d projections,
// heads taken as consecutive channel blocks of head_channels, q and k each scaled by
// head_channels^(-1/4) (the reference's f16-friendly split of 1/sqrt(d)). All heads and
// the batch go through one batched matmul and one softmax.
class MultiHeadAttentionImpl : public torch::nn::Module {
 public:
  MultiHeadAttentionImpl(std::int64_t in_channels, std::int64_t key_value_channels, std::int64_t n_heads,
                         std::int64_t head_channels)
      : torch::nn::Module("MultiHeadAttention"), n_heads_(n_heads) {
    const std::int64_t inner = n_heads * head_channels;
    to_q = register_module("to_q", conv1x1(in_channels, inner));
    to_k = register_module("to_k", conv1x1(key_value_channels, inner));
    to_v = register_module("to_v", conv1x1(key_value_channels, inner));
    proj_out = register_module("proj_out", conv1x1(inner, in_channels));
  }

  // c: the key/value tokens; undefined for self-attention.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& c = {}) {
    const torch::Tensor& kv = c.defined() ? c : x;
    const torch::Tensor q = pointwise(to_q, x), k = pointwise(to_k, kv), v = pointwise(to_v, kv);
    const std::int64_t b = q.size(0), width = q.size(1), lq = q.size(2), lk = k.size(2);
    const std::int64_t ch = width / n_heads_;
    const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
    const torch::Tensor qh = q.reshape({b * n_heads_, ch, lq}) * scale;
    const torch::Tensor kh = k.reshape({b * n_heads_, ch, lk}) * scale;
    const torch::Tensor vh = v.reshape({b * n_heads_, ch, lk});
    torch::Tensor weight = torch::softmax(torch::bmm(qh.transpose(1, 2), kh), -1);  // [B*h, lq, lk]
    // Far-off keys get subnormal weights (exp(< -87)); flushed, they no longer stall the product.
    weight = weight.masked_fill(weight < std::numeric_limits<float>::min(), 0.0);
    const torch::Tensor a = torch::bmm(vh, weight.transpose(1, 2));                        // [B*h, ch, lq]
    return pointwise(proj_out, a.reshape({b, width, lq}));
  }

  torch::nn::Conv1d to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, proj_out{nullptr};

 private:
  std::int64_t n_heads_;
};
TORCH_MODULE(MultiHeadAttention);

// attention_heads <= 0 means "as many heads of attention_head_channels as fit".
std::int64_t resolve_heads(std::int64_t heads, std::int64_t channels, std::int64_t head_channels) {
  return heads <= 0 ? channels / head_channels : heads;
}

// SpatialSelfAttentionBlock: x + attention(GroupNorm(x)) over the H*W positions.
class SpatialSelfAttentionBlockImpl : public torch::nn::Module {
 public:
  SpatialSelfAttentionBlockImpl(std::int64_t channels, std::int64_t n_heads, std::int64_t head_channels)
      : torch::nn::Module("SpatialSelfAttentionBlock") {
    attention = register_module(
        "attention", MultiHeadAttention(channels, channels, resolve_heads(n_heads, channels, head_channels), head_channels));
    norm = register_module("norm", group_norm(channels));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = attention(norm(x).flatten(2));
    return h.view(x.sizes()) + x;
  }
  MultiHeadAttention attention{nullptr};
  torch::nn::GroupNorm norm{nullptr};
};
TORCH_MODULE(SpatialSelfAttentionBlock);

// SpatialEmbeddingCrossAttentionBlock: the image tokens (projected to n_heads *
// head_channels) attend to themselves, then to context tokens, then pass a small GELU
// feed-forward; every step is pre-normalised by the one shared x_norm and residual. The
// context vector [B, D] becomes D tokens of head_channels values: c_proj_in to D * d,
// reshaped (D, d), GroupNorm over D.
class SpatialEmbeddingCrossAttentionBlockImpl : public torch::nn::Module {
 public:
  SpatialEmbeddingCrossAttentionBlockImpl(std::int64_t in_channels, std::int64_t context_dim, std::int64_t n_heads,
                                          std::int64_t head_channels)
      : torch::nn::Module("SpatialEmbeddingCrossAttentionBlock"), context_dim_(context_dim), tokens_(head_channels) {
    n_heads = resolve_heads(n_heads, in_channels, head_channels);
    inner_ = n_heads * head_channels;
    x_proj_in = register_module("x_proj_in", conv2d(in_channels, inner_, 1));
    x_proj_out = register_module("x_proj_out", zeroed(conv2d(inner_, in_channels, 1)));
    self_attention = register_module("self_attention", MultiHeadAttention(inner_, inner_, n_heads, head_channels));
    c_proj_in = register_module("c_proj_in", torch::nn::Linear(context_dim, context_dim * tokens_));
    cross_attention =
        register_module("cross_attention", MultiHeadAttention(inner_, context_dim, n_heads, head_channels));
    x_norm = register_module("x_norm", group_norm(inner_));
    c_norm = register_module("c_norm", group_norm(context_dim));
    ff_in = torch::nn::Linear(inner_, inner_ * 4);
    ff_out = torch::nn::Linear(inner_ * 4, inner_);
    ff = register_module("ff", torch::nn::Sequential(ff_in, torch::nn::GELU(), ff_out));
  }

  torch::Tensor forward(const torch::Tensor& x_in, const torch::Tensor& c_in) {
    const std::int64_t b = x_in.size(0);
    torch::Tensor x = pointwise(x_proj_in, x_in.flatten(2));                           // [B, inner, HW]
    const torch::Tensor c = c_norm(c_proj_in(c_in).view({b, context_dim_, tokens_}));  // [B, D, d]
    x = self_attention(x_norm(x)) + x;
    x = cross_attention(x_norm(x), c) + x;
    x = feed_forward(x_norm(x).transpose(1, 2)).transpose(1, 2) + x;
    return pointwise(x_proj_out, x).view(x_in.sizes()) + x_in;
  }

  // ff = Linear - GELU - Linear. GELU maps strongly negative inputs to subnormal floats
  // (x * Phi(x) < 1e-38 below x ~ -13), and a matrix product over subnormals is two orders
  // of magnitude slower on x86; they are flushed to zero, which changes nothing above 1e-38.
  torch::Tensor feed_forward(const torch::Tensor& x) {
    torch::Tensor h = torch::gelu(ff_in->forward(x));
    h = h.masked_fill(h.abs() < std::numeric_limits<float>::min(), 0.0);
    return ff_out->forward(h);
  }

  torch::nn::Conv2d x_proj_in{nullptr}, x_proj_out{nullptr};
  torch::nn::Linear ff_in{nullptr}, ff_out{nullptr};
  MultiHeadAttention self_attention{nullptr}, cross_attention{nullptr};
  torch::nn::Linear c_proj_in{nullptr};
  torch::nn::GroupNorm x_norm{nullptr}, c_norm{nullptr};
  torch::nn::Sequential ff{nullptr};

 private:
  std::int64_t context_dim_, tokens_, inner_ = 0;
};
TORCH_MODULE(SpatialEmbeddingCrossAttentionBlock);

// The sizes every block shares (the reference's functools.partial arguments).
struct BlockConfig {
  std::int64_t time_channels;
  std::int64_t context_channels;
  std::int64_t attention_heads;
  std::int64_t attention_head_channels;
  Condition condition;
  bool conditional;
};

// The attention a block carries: cross-attention for a conditional 'CA' model, otherwise
// self-attention. Registered as `attn`.
class AttentionHolder {
 public:
  void make(torch::nn::Module& owner, std::int64_t channels, const BlockConfig& cfg) {
    if (cfg.condition == Condition::CA && cfg.conditional) {
      cross_ = owner.register_module(
          "attn", SpatialEmbeddingCrossAttentionBlock(channels, cfg.context_channels, cfg.attention_heads,
                                                      cfg.attention_head_channels));
    } else {
      self_ = owner.register_module(
          "attn", SpatialSelfAttentionBlock(channels, cfg.attention_heads, cfg.attention_head_channels));
    }
  }
  bool present() const { return cross_ || self_; }
  torch::Tensor operator()(const torch::Tensor& x, const torch::Tensor& c) { return cross_ ? cross_(x, c) : self_(x); }

 private:
  SpatialEmbeddingCrossAttentionBlock cross_{nullptr};
  SpatialSelfAttentionBlock self_{nullptr};
};

// DownBlock / UpBlock: a residual block, then attention where the resolution has it. An
// up block's residual block also takes the skip connection's channels.
class ResolutionBlockImpl : public StageImpl {
 public:
  ResolutionBlockImpl(const char* type, std::int64_t in_channels, std::int64_t out_channels, bool has_attention,
                      const BlockConfig& cfg)
      : StageImpl(type) {
    res = register_module("res", ResidualBlock(in_channels, out_channels, cfg.time_channels, cfg.context_channels,
                                               cfg.condition, cfg.conditional));
    if (has_attention) attn.make(*this, out_channels, cfg);
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) override {
    const torch::Tensor h = res(x, t, c);
    return attn.present() ? attn(h, c) : h;
  }
  ResidualBlock res{nullptr};
  AttentionHolder attn;
};

// MiddleBlock: res1 - attn - res2, attention always present.
class MiddleBlockImpl : public StageImpl {
 public:
  MiddleBlockImpl(std::int64_t channels, const BlockConfig& cfg) : StageImpl("MiddleBlock") {
    res1 = register_module("res1", ResidualBlock(channels, channels, cfg.time_channels, cfg.context_channels,
                                                 cfg.condition, cfg.conditional));
    attn.make(*this, channels, cfg);
    res2 = register_module("res2", ResidualBlock(channels, channels, cfg.time_channels, cfg.context_channels,
                                                 cfg.condition, cfg.conditional));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) override {
    return res2(attn(res1(x, t, c), c), t, c);
  }
  ResidualBlock res1{nullptr}, res2{nullptr};
  AttentionHolder attn;
};

// Downsample: stride-2 3x3 conv. Upsample: stride-2 4x4 transposed conv. Both as `conv`.
class DownsampleImpl : public StageImpl {
 public:
  explicit DownsampleImpl(std::int64_t channels) : StageImpl("Downsample") {
    conv = register_module("conv", conv2d(channels, channels, 3, 2, 1));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) override { return conv(x); }
  bool resamples() const override { return true; }
  torch::nn::Conv2d conv{nullptr};
};

class UpsampleImpl : public StageImpl {
 public:
  explicit UpsampleImpl(std::int64_t channels) : StageImpl("Upsample") {
    conv = register_module("conv", torch::nn::ConvTranspose2d(
                                       torch::nn::ConvTranspose2dOptions(channels, channels, 4).stride(2).padding(1)));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) override { return conv(x); }
  bool resamples() const override { return true; }
  torch::nn::ConvTranspose2d conv{nullptr};
};

// The constructor arguments of ConditionalUNet, read from the plugin's parameters.
struct UNetConfig {
  std::int64_t input_channels;
  std::int64_t initial_channels;
  std::vector<std::int64_t> channel_multipliers;
  std::vector<bool> is_attention;
  std::int64_t attention_heads;
  std::int64_t attention_head_channels;
  std::int64_t n_blocks_per_resolution;
  Condition condition;
  std::int64_t context_input_channels;
  std::int64_t context_channels;
  bool is_context_conditional;
  std::int64_t n_context_classes;
  bool learn_empty_context;
  double context_dropout_probability;
};

class ConditionalUNetImpl : public torch::nn::Module {
 public:
  explicit ConditionalUNetImpl(const UNetConfig& cfg) : torch::nn::Module("ConditionalUNet"), cfg_(cfg) {
    const auto n_resolutions = static_cast<std::int64_t>(cfg.channel_multipliers.size());
    image_proj = register_module("image_proj", conv2d(cfg.input_channels, cfg.initial_channels, 3, 1, 1));
    const std::int64_t time_channels = cfg.initial_channels * 4;
    time_emb = register_module("time_emb", SinusoidalTimeEmbedding(time_channels));

    if (cfg.is_context_conditional) {
      // context_dropout (nn.Dropout or Identity) has no state; it is applied in forward().
      if (cfg.n_context_classes > 0) {
        context_emb_classes = register_module(
            "context_emb", torch::nn::Embedding(cfg.n_context_classes, cfg.context_channels));
      } else {
        context_emb_linear =
            register_module("context_emb", torch::nn::Linear(cfg.context_input_channels, cfg.context_channels));
      }
      if (cfg.learn_empty_context) {
        empty_context_embedding =
            register_parameter("empty_context_embedding", torch::empty({cfg.context_channels}).normal_());
      } else {
        // A plain attribute in the reference, so neither learnt nor saved.
        empty_context_embedding = torch::zeros({cfg.context_channels});
      }
    }

    const BlockConfig block{time_channels,   cfg.context_channels,   cfg.attention_heads, cfg.attention_head_channels,
                            cfg.condition,   cfg.is_context_conditional};

    down = register_module("down", torch::nn::ModuleList());
    std::int64_t in_channels = cfg.initial_channels, out_channels = cfg.initial_channels;
    for (std::int64_t i = 0; i < n_resolutions; ++i) {
      out_channels = in_channels * cfg.channel_multipliers[i];
      for (std::int64_t k = 0; k < cfg.n_blocks_per_resolution; ++k) {
        add(down, down_stages_,
            std::make_shared<ResolutionBlockImpl>("DownBlock", in_channels, out_channels, cfg.is_attention[i], block));
        in_channels = out_channels;
      }
      if (i < n_resolutions - 1) add(down, down_stages_, std::make_shared<DownsampleImpl>(in_channels));
    }

    middle_ = std::make_shared<MiddleBlockImpl>(out_channels, block);
    register_module("middle", middle_);

    up = register_module("up", torch::nn::ModuleList());
    in_channels = out_channels;
    for (std::int64_t i = n_resolutions - 1; i >= 0; --i) {
      out_channels = in_channels;
      for (std::int64_t k = 0; k < cfg.n_blocks_per_resolution; ++k)
        add(up, up_stages_,
            std::make_shared<ResolutionBlockImpl>("UpBlock", in_channels + out_channels, out_channels,
                                                  cfg.is_attention[i], block));
      // a final block per resolution reduces the channel count
      out_channels = in_channels / cfg.channel_multipliers[i];
      add(up, up_stages_,
          std::make_shared<ResolutionBlockImpl>("UpBlock", in_channels + out_channels, out_channels,
                                                cfg.is_attention[i], block));
      in_channels = out_channels;
      if (i > 0) add(up, up_stages_, std::make_shared<UpsampleImpl>(in_channels));
    }

    norm = register_module("norm", group_norm(cfg.initial_channels));
    final = register_module("final", zeroed(conv2d(in_channels, cfg.input_channels, 3, 1, 1)));
  }

  // x [N,C,H,W], t [N], context [N,D] (or [N] class indices) or undefined, dropout_mask
  // [N] bool or undefined; all on the module's device, already checked.
  torch::Tensor forward(const torch::Tensor& x_in, const torch::Tensor& t_in, const torch::Tensor& context,
                        const torch::Tensor& dropout_mask) {
    const torch::Tensor t = time_emb(t_in);
    torch::Tensor x = image_proj(x_in);

    torch::Tensor c;
    if (cfg_.is_context_conditional) {
      const torch::Tensor empty = empty_context_embedding.to(x.device(), x.scalar_type());
      if (!context.defined()) {
        c = empty.unsqueeze(0).repeat({x.size(0), 1});
      } else {
        c = context_emb_linear ? context_emb_linear(context) : context_emb_classes(context);
        // Rows whose whole context is dropped get the empty-context embedding.
        if (dropout_mask.defined()) c = torch::where(dropout_mask.unsqueeze(1), empty.expand_as(c), c);
        // Component dropout against context overfitting (train mode only).
        if (cfg_.context_dropout_probability > 0) c = torch::dropout(c, cfg_.context_dropout_probability, is_training());
      }
    }

    std::vector<torch::Tensor> skips{x};
    for (auto& m : down_stages_) {
      x = m->forward(x, t, c);
      skips.push_back(x);
    }
    x = middle_->forward(x, t, c);
    for (auto& m : up_stages_) {
      if (!m->resamples()) {
        x = torch::cat({x, skips.back()}, 1);
        skips.pop_back();
      }
      x = m->forward(x, t, c);
    }
    return final(torch::silu(norm(x)));
  }

  torch::nn::Conv2d image_proj{nullptr}, final{nullptr};
  SinusoidalTimeEmbedding time_emb{nullptr};
  torch::nn::Linear context_emb_linear{nullptr};
  torch::nn::Embedding context_emb_classes{nullptr};
  torch::Tensor empty_context_embedding;
  torch::nn::ModuleList down{nullptr}, up{nullptr};
  torch::nn::GroupNorm norm{nullptr};

 private:
  static void add(torch::nn::ModuleList& list, std::vector<std::shared_ptr<StageImpl>>& stages,
                  std::shared_ptr<StageImpl> stage) {
    list->push_back(stage);
    stages.push_back(std::move(stage));
  }

  UNetConfig cfg_;
  std::vector<std::shared_ptr<StageImpl>> down_stages_, up_stages_;
  std::shared_ptr<MiddleBlockImpl> middle_;
};
TORCH_MODULE(ConditionalUNet);

// Refuses parameter combinations the reference would only fail on deep inside (or, worse,
// silently misread), naming the parameter.
UNetConfig read_config(const Params& p) {
  UNetConfig cfg;
  cfg.input_channels = p.get_int("input_channels");
  cfg.initial_channels = p.get_int("initial_channels");
  cfg.channel_multipliers = p.get_ints("channel_multipliers");
  cfg.is_attention = p.get_bools("is_attention");
  cfg.attention_heads = p.get_int("attention_heads");
  cfg.attention_head_channels = p.get_int("attention_head_channels");
  cfg.n_blocks_per_resolution = p.get_int("n_blocks_per_resolution");
  cfg.condition = parse_condition(p.get_string("condition_type"));
  cfg.context_input_channels = p.get_int("context_input_channels");
  cfg.context_channels = p.get_int("context_channels");
  cfg.is_context_conditional = p.get_bool("is_context_conditional");
  cfg.n_context_classes = p.get_int("n_context_classes");
  cfg.learn_empty_context = p.get_bool("learn_empty_context");
  cfg.context_dropout_probability = p.get_float("context_dropout_probability");

  if (cfg.channel_multipliers.empty())
    throw Error(kWhere, "parameter 'channel_multipliers' is empty: give one multiplier per resolution");
  if (cfg.is_attention.size() != cfg.channel_multipliers.size())
    throw Error(kWhere, "parameter 'is_attention' has " + std::to_string(cfg.is_attention.size()) +
                            " entries but channel_multipliers has " + std::to_string(cfg.channel_multipliers.size()) +
                            ": give one flag per resolution");
  // Every GroupNorm has 32 groups; all widths are multiples of initial_channels.
  if (cfg.initial_channels % 32 != 0)
    throw Error(kWhere, "parameter 'initial_channels' = " + std::to_string(cfg.initial_channels) +
                            " must be a multiple of 32 (the network's GroupNorm layers use 32 groups)");
  std::int64_t width = cfg.initial_channels;
  std::vector<std::int64_t> widths;
  for (auto m : cfg.channel_multipliers) widths.push_back(width *= m);
  const bool cross = cfg.condition == Condition::CA && cfg.is_context_conditional;
  for (std::size_t i = 0; i <= widths.size(); ++i) {
    // The middle block (i == widths.size()) always has attention, at the last width.
    if (i < widths.size() && !cfg.is_attention[i]) continue;
    const std::int64_t channels = i < widths.size() ? widths[i] : widths.back();
    const std::int64_t heads = resolve_heads(cfg.attention_heads, channels, cfg.attention_head_channels);
    if (heads < 1)
      throw Error(kWhere, "parameter 'attention_head_channels' = " + std::to_string(cfg.attention_head_channels) +
                              " exceeds the " + std::to_string(channels) +
                              " channels of an attention block (attention_heads <= 0 fits channels / "
                              "attention_head_channels heads)");
    if (cross && (heads * cfg.attention_head_channels) % 32 != 0)
      throw Error(kWhere, "parameters 'attention_heads' x 'attention_head_channels' = " +
                              std::to_string(heads * cfg.attention_head_channels) +
                              " must be a multiple of 32 (the cross-attention block's GroupNorm)");
  }
  if (cross && cfg.context_channels % 32 != 0)
    throw Error(kWhere, "parameter 'context_channels' = " + std::to_string(cfg.context_channels) +
                            " must be a multiple of 32 with condition_type 'CA' (the context tokens' GroupNorm)");
  return cfg;
}

class IdiffUNet final : public Denoiser {
 public:
  explicit IdiffUNet(const Params& p) : cfg_(read_config(p)), net_(cfg_) {}

  torch::nn::Module& module() override { return *net_; }
  std::int64_t in_channels() const override { return cfg_.input_channels; }
  std::int64_t out_channels() const override { return cfg_.input_channels; }
  // Class-conditional models take one class index per row.
  std::int64_t context_size() const override {
    if (!cfg_.is_context_conditional) return 0;
    return cfg_.n_context_classes > 0 ? 1 : cfg_.context_input_channels;
  }

  // Released checkpoints are the DDPM wrapper's state dict (DenoisingDiffusionProbabilisticModel
  // in diffusion/ddpm.py): the UNet under 'eps_model.' next to the schedule buffers that
  // precompute_schedule_constants registers.
  LoadOptions checkpoint_layout() const override {
    LoadOptions options;
    options.strip_prefixes = {"module.", "eps_model."};
    options.ignore_keys = {"betas",
                           "alphas",
                           "sigmas",
                           "sqrt_alphas_inv",
                           "alpha_bars",
                           "sqrt_alpha_bars",
                           "sqrt_one_minus_alpha_bars",
                           "one_minus_alphas_over_sqrt_one_minus_alpha_bars"};
    return options;
  }

  torch::Tensor forward(const torch::Tensor& x_t, const torch::Tensor& timesteps, const torch::Tensor& context,
                        const torch::Tensor& dropout_mask) override {
    const std::int64_t levels = static_cast<std::int64_t>(cfg_.channel_multipliers.size());
    const std::int64_t factor = std::int64_t{1} << (levels - 1);
    if (!x_t.defined() || x_t.dim() != 4 || x_t.size(1) != cfg_.input_channels)
      throw Error(kWhere, "x_t must have shape [N, " + std::to_string(cfg_.input_channels) +
                              ", H, W] (input_channels = " + std::to_string(cfg_.input_channels) + "), got " +
                              shape_text(x_t));
    if (!x_t.is_floating_point())
      throw Error(kWhere, std::string("x_t must be floating point, got ") + c10::toString(x_t.scalar_type()));
    const std::int64_t n = x_t.size(0);
    if (n == 0) throw Error(kWhere, "x_t holds no rows (the batch is empty)");
    if (x_t.size(2) % factor != 0 || x_t.size(3) % factor != 0)
      throw Error(kWhere, "x_t's height and width must be multiples of " + std::to_string(factor) + " (" +
                              std::to_string(levels - 1) + " downsamplings for " + std::to_string(levels) +
                              " channel_multipliers), got " + shape_text(x_t));
    if (!timesteps.defined() || timesteps.dim() != 1 || timesteps.size(0) != n)
      throw Error(kWhere, "timesteps must have shape [" + std::to_string(n) + "] (one per row of x_t), got " +
                              shape_text(timesteps));

    const torch::Tensor reference = net_->image_proj->weight;
    const auto device = reference.device();
    torch::Tensor c, mask;
    if (cfg_.is_context_conditional && context.defined()) c = checked_context(context, n).to(device);
    if (cfg_.is_context_conditional && context.defined() && dropout_mask.defined()) {
      if (dropout_mask.dim() != 1 || dropout_mask.size(0) != n ||
          !(dropout_mask.scalar_type() == torch::kBool || !dropout_mask.is_floating_point()))
        throw Error(kWhere, "dropout_mask must be a [" + std::to_string(n) + "] bool tensor (true: drop the row's "
                                "context), got " + shape_text(dropout_mask) + " of " +
                                c10::toString(dropout_mask.scalar_type()));
      mask = dropout_mask.to(device).to(torch::kBool);
    }
    // An unconditional model has no use for a context or a mask: ignored, as in the reference.
    return net_->forward(x_t.to(device, reference.scalar_type()), timesteps.to(device), c, mask);
  }

 private:
  torch::Tensor checked_context(const torch::Tensor& context, std::int64_t n) const {
    if (cfg_.n_context_classes > 0) {
      const torch::Tensor labels = context.dim() == 2 && context.size(1) == 1 ? context.squeeze(1) : context;
      if (labels.dim() != 1 || labels.size(0) != n)
        throw Error(kWhere, "context must hold one class index per row, shape [" + std::to_string(n) + "] or [" +
                                std::to_string(n) + ", 1] (n_context_classes = " +
                                std::to_string(cfg_.n_context_classes) + "), got " + shape_text(context));
      const torch::Tensor indices = labels.to(torch::kInt64);
      if (!labels.is_floating_point() || torch::equal(indices.to(labels.scalar_type()), labels)) {
        if (indices.numel() == 0 ||
            (indices.min().item<std::int64_t>() >= 0 && indices.max().item<std::int64_t>() < cfg_.n_context_classes))
          return indices;
      }
      throw Error(kWhere, "context class indices must be integers in [0, " + std::to_string(cfg_.n_context_classes) +
                              ") (n_context_classes)");
    }
    if (context.dim() != 2 || context.size(0) != n || context.size(1) != cfg_.context_input_channels)
      throw Error(kWhere, "context must have shape [" + std::to_string(n) + ", " +
                              std::to_string(cfg_.context_input_channels) + "] (context_input_channels = " +
                              std::to_string(cfg_.context_input_channels) + "), got " + shape_text(context));
    if (!context.is_floating_point())
      throw Error(kWhere, std::string("context must be floating point, got ") + c10::toString(context.scalar_type()));
    return context.to(net_->image_proj->weight.scalar_type());
  }

  UNetConfig cfg_;
  ConditionalUNet net_;
};

}  // namespace

void register_idiff_unet(FactoryList& registry) {
  const std::string ref = " (ConditionalUNet)";
  registry.add(
      Kind::Denoiser, "idiff-unet", "1.0.0",
      "IDiff-Face ConditionalUNet as ADMIS uses it: eps prediction conditioned on an identity embedding "
      "(CA, AdaGN, AddPlusGN, DiffAE) or unconditional",
      {ParamSpec::Int("input_channels", 3, "channels of x_t (and of the predicted eps); 3 for VQ-f4 latents")
           .at_least(1),
       ParamSpec::Int("initial_channels", 96, "width after image_proj, a multiple of 32; time embedding is 4x this")
           .at_least(32),
       ParamSpec::IntList("channel_multipliers", {1, 2, 2, 2},
                          "per resolution, width = previous width x multiplier; one 2x downsampling between")
           .at_least(1),
       ParamSpec::BoolList("is_attention", {false, true, true, true},
                           "per resolution, whether its blocks carry attention (same length as channel_multipliers)"),
       ParamSpec::Int("attention_heads", -1, "heads per attention block; <= 0: channels / attention_head_channels"),
       ParamSpec::Int("attention_head_channels", 32, "channels per attention head (also the context tokens' length)")
           .at_least(1),
       ParamSpec::Int("n_blocks_per_resolution", 2, "residual (+attention) blocks per resolution on the way down")
           .at_least(1),
       ParamSpec::String("condition_type", "CA",
                         "how the context enters: CA cross-attention, AdaGN, AddPlusGN, DiffAE scaling")
           .one_of({"AddPlusGN", "AdaGN", "DiffAE", "CA"}),
       ParamSpec::Int("context_input_channels", 512, "size of the input context embedding (identity features)")
           .at_least(1),
       ParamSpec::Int("context_channels", 256, "size of the projected context shared by all blocks").at_least(1),
       ParamSpec::Bool("is_context_conditional", true, "whether the context is used at all"),
       ParamSpec::Int("n_context_classes", 0, "> 0: the context is a class index embedded by nn.Embedding")
           .at_least(0),
       ParamSpec::Bool("learn_empty_context", false,
                       "learn the embedding of dropped contexts (else a fixed zero vector)"),
       ParamSpec::Float("context_dropout_probability", 0.25,
                        "component dropout on the projected context, in train mode only")
           .range(0.0, 0.999)},
      [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<IdiffUNet>(p); });
}

}  // namespace admis::denoisers
