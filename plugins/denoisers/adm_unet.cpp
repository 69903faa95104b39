// `adm-unet`: the ablated diffusion model (ADM) UNet of guided-diffusion (openai/guided-diffusion
// guided_diffusion/unet.py UNetModel, built as script_util.create_model builds it), which DCFace
// vendors for its unconditional FFHQ generator (ffhq_10m.pt, dcface/stage1/unconditional_generation).
// A 3x3 input convolution, per level num_res_blocks residual blocks (+ self-attention at the
// chosen downsample rates) and a downsampling block, a middle ResBlock-Attention-ResBlock, the
// mirrored up path fed with every input block's output, and a zero-initialised output
// convolution predicting eps (and, with learn_sigma, the variance interpolation v).
//
// ResBlocks take the timestep embedding as FiLM (use_scale_shift_norm: GroupNorm(h)(1 + scale)
// + shift) or as an added bias, and resample inside the block (resblock_updown) or through
// separate Downsample/Upsample convolutions. GroupNorm32 normalises in float32.
// Module and parameter names are the reference's state-dict keys; the released checkpoint is
// a plain UNetModel.state_dict(), so it loads strictly as it is.

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "denoisers.h"
#include "layers.h"

namespace admis::denoisers {

namespace {

const char* const kWhere = "denoiser/adm-unet";

std::string str(std::int64_t v) { return std::to_string(v); }

torch::nn::Conv1d conv1x1(std::int64_t in, std::int64_t out) {
  return torch::nn::Conv1d(torch::nn::Conv1dOptions(in, out, 1));
}

// GroupNorm32.forward: normalise in float32 and cast back (matters under half precision).
torch::Tensor group_norm32(torch::nn::GroupNorm norm, const torch::Tensor& x) {
  return norm(x.to(torch::kFloat32)).to(x.scalar_type());
}

torch::Tensor upsample_nearest(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::interpolate(x,
                        F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest));
}

torch::Tensor downsample_avg(const torch::Tensor& x) { return torch::avg_pool2d(x, {2, 2}, {2, 2}); }

// nn.timestep_embedding: [cos | sin] of t times dim / 2 frequencies exp(-ln(10000) k / half),
// computed in float32 from the (float) timesteps, as the reference does.
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, std::int64_t dim) {
  const std::int64_t half = dim / 2;
  const torch::Tensor freqs =
      torch::exp(-std::log(10000.0) * torch::arange(half, torch::kFloat32) / static_cast<double>(half))
          .to(timesteps.device());
  const torch::Tensor args = timesteps.unsqueeze(1).to(torch::kFloat32) * freqs.unsqueeze(0);
  torch::Tensor embedding = torch::cat({torch::cos(args), torch::sin(args)}, -1);
  if (dim % 2) embedding = torch::cat({embedding, torch::zeros_like(embedding.narrow(1, 0, 1))}, -1);
  return embedding;
}

// ResBlock: in_layers (GroupNorm, SiLU, conv), optionally resampling h and x between the
// norm and the conv (up/down), the timestep embedding through emb_layers (SiLU, Linear),
// out_layers (GroupNorm, SiLU, Dropout, zeroed conv) and a 1x1 skip_connection when the
// width changes.
class ResBlockImpl : public torch::nn::Module {
 public:
  enum class Resample { None, Up, Down };

  ResBlockImpl(std::int64_t channels, std::int64_t emb_channels, double dropout, std::int64_t out_channels,
               bool use_scale_shift_norm, Resample resample = Resample::None)
      : torch::nn::Module("ResBlock"), dropout_(dropout), scale_shift_(use_scale_shift_norm), resample_(resample) {
    in_norm = group_norm(channels);
    in_conv = conv2d(channels, out_channels, 3, 1, 1);
    in_layers = register_module("in_layers", torch::nn::Sequential(in_norm, torch::nn::SiLU(), in_conv));
    emb_linear = torch::nn::Linear(emb_channels, use_scale_shift_norm ? 2 * out_channels : out_channels);
    emb_layers = register_module("emb_layers", torch::nn::Sequential(torch::nn::SiLU(), emb_linear));
    out_norm = group_norm(out_channels);
    out_conv = zeroed(conv2d(out_channels, out_channels, 3, 1, 1));
    out_layers = register_module("out_layers", torch::nn::Sequential(out_norm, torch::nn::SiLU(),
                                                                     torch::nn::Dropout(dropout), out_conv));
    // UNetModel never asks for a 3x3 skip (use_conv), so a width change takes a 1x1 conv.
    if (out_channels != channels)
      skip_connection = register_module("skip_connection", conv2d(channels, out_channels, 1));
  }

  torch::Tensor forward(torch::Tensor x, const torch::Tensor& emb) {
    torch::Tensor h = torch::silu(group_norm32(in_norm, x));
    if (resample_ == Resample::Up) {
      h = upsample_nearest(h);
      x = upsample_nearest(x);
    } else if (resample_ == Resample::Down) {
      h = downsample_avg(h);
      x = downsample_avg(x);
    }
    h = in_conv(h);
    const torch::Tensor emb_out = emb_linear(torch::silu(emb)).to(h.scalar_type()).unsqueeze(-1).unsqueeze(-1);
    if (scale_shift_) {
      const auto scale_shift = emb_out.chunk(2, 1);
      h = group_norm32(out_norm, h) * (1 + scale_shift[0]) + scale_shift[1];
    } else {
      h = group_norm32(out_norm, h + emb_out);
    }
    h = out_conv(torch::dropout(torch::silu(h), dropout_, is_training()));
    return (skip_connection ? skip_connection(x) : x) + h;
  }

  torch::nn::Sequential in_layers{nullptr}, emb_layers{nullptr}, out_layers{nullptr};
  torch::nn::GroupNorm in_norm{nullptr}, out_norm{nullptr};
  torch::nn::Conv2d in_conv{nullptr}, out_conv{nullptr}, skip_connection{nullptr};
  torch::nn::Linear emb_linear{nullptr};

 private:
  double dropout_;
  bool scale_shift_;
  Resample resample_;
};
TORCH_MODULE(ResBlock);

// QKVAttentionLegacy (use_new_attention_order false) splits the qkv channels into heads
// first, each head holding its own q, k, v: [(H * 3 * C)]. QKVAttention (true) splits q, k,
// v first, then heads: [(3 * H * C)]. q and k are each scaled by C^(-1/4) before their
// product (the reference's f16-friendly split of 1/sqrt(C)); softmax in float32.
torch::Tensor qkv_attention(const torch::Tensor& qkv, std::int64_t n_heads, bool new_order) {
  const std::int64_t bs = qkv.size(0), width = qkv.size(1), length = qkv.size(2);
  const std::int64_t ch = width / (3 * n_heads);
  torch::Tensor q, k, v;
  if (new_order) {
    const auto parts = qkv.chunk(3, 1);
    q = parts[0].reshape({bs * n_heads, ch, length});
    k = parts[1].reshape({bs * n_heads, ch, length});
    v = parts[2].reshape({bs * n_heads, ch, length});
  } else {
    const auto parts = qkv.reshape({bs * n_heads, 3 * ch, length}).split(ch, 1);
    q = parts[0], k = parts[1], v = parts[2];
  }
  const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
  torch::Tensor weight = torch::bmm((q * scale).transpose(1, 2), k * scale);  // [B*H, T (queries), S (keys)]
  weight = torch::softmax(weight.to(torch::kFloat32), -1).to(weight.scalar_type());
  const torch::Tensor a = torch::bmm(v, weight.transpose(1, 2));  // [B*H, C, T]
  return a.reshape({bs, -1, length});
}

// AttentionBlock: x + proj_out(attention(qkv(norm(x)))) over the H*W positions; heads of
// num_head_channels each, or num_heads heads when num_head_channels is -1.
class AttentionBlockImpl : public torch::nn::Module {
 public:
  AttentionBlockImpl(std::int64_t channels, std::int64_t n_heads, bool new_order)
      : torch::nn::Module("AttentionBlock"), n_heads_(n_heads), new_order_(new_order) {
    norm = register_module("norm", group_norm(channels));
    qkv = register_module("qkv", conv1x1(channels, 3 * channels));
    proj_out = register_module("proj_out", zeroed(conv1x1(channels, channels)));
  }
  torch::Tensor forward(const torch::Tensor& x_in) {
    const torch::Tensor x = x_in.flatten(2);
    const torch::Tensor qkv_tokens = pointwise(qkv, group_norm32(norm, x));
    const torch::Tensor h = pointwise(proj_out, qkv_attention(qkv_tokens, n_heads_, new_order_));
    return (x + h).view(x_in.sizes());
  }

  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv1d qkv{nullptr}, proj_out{nullptr};

 private:
  std::int64_t n_heads_;
  bool new_order_;
};
TORCH_MODULE(AttentionBlock);

// Downsample / Upsample with conv_resample (create_model's UNetModel always has it): a
// stride-2 3x3 conv 'op', or nearest 2x upsampling then a 3x3 'conv'.
class DownsampleImpl : public torch::nn::Module {
 public:
  explicit DownsampleImpl(std::int64_t channels) : torch::nn::Module("Downsample") {
    op = register_module("op", conv2d(channels, channels, 3, 2, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return op(x); }
  torch::nn::Conv2d op{nullptr};
};
TORCH_MODULE(Downsample);

class UpsampleImpl : public torch::nn::Module {
 public:
  explicit UpsampleImpl(std::int64_t channels) : torch::nn::Module("Upsample") {
    conv = register_module("conv", conv2d(channels, channels, 3, 1, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return conv(upsample_nearest(x)); }
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample);

// TimestepEmbedSequential: children named 0, 1, ...; those that take the timestep
// embedding (ResBlocks) receive it.
class TimestepEmbedSequentialImpl : public torch::nn::Module {
 public:
  TimestepEmbedSequentialImpl() : torch::nn::Module("TimestepEmbedSequential") {}

  template <class Holder>
  void append(Holder layer) {
    register_module(str(static_cast<std::int64_t>(layers_.size())), layer);
    layers_.push_back([layer](const torch::Tensor& x, const torch::Tensor&) mutable { return layer->forward(x); });
  }
  void append(ResBlock block) {
    register_module(str(static_cast<std::int64_t>(layers_.size())), block);
    layers_.push_back(
        [block](const torch::Tensor& x, const torch::Tensor& emb) mutable { return block->forward(x, emb); });
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& emb) {
    for (const auto& layer : layers_) x = layer(x, emb);
    return x;
  }

 private:
  std::vector<std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>> layers_;
};
TORCH_MODULE(TimestepEmbedSequential);

struct AdmConfig {
  std::int64_t image_size = 256;
  std::int64_t model_channels = 128;  // create_model's num_channels
  std::int64_t num_res_blocks = 1;
  std::vector<double> channel_mult;
  std::vector<std::int64_t> attention_ds;  // downsample rates image_size // resolution
  std::int64_t num_heads = 4, num_head_channels = 64, num_heads_upsample = 4;
  bool use_scale_shift_norm = true, resblock_updown = true, use_new_attention_order = false;
  double dropout = 0.0;
  std::int64_t in_channels = 3, out_channels = 6;

  // int(mult * model_channels), as the reference (0.5 for 512 px).
  std::int64_t width(double mult) const {
    return static_cast<std::int64_t>(mult * static_cast<double>(model_channels));
  }
  bool attends(std::int64_t ds) const {
    return std::find(attention_ds.begin(), attention_ds.end(), ds) != attention_ds.end();
  }
  // AttentionBlock's head count (num_head_channels -1: num_heads as given).
  std::int64_t heads(std::int64_t channels, bool upsample) const {
    return num_head_channels == -1 ? (upsample ? num_heads_upsample : num_heads) : channels / num_head_channels;
  }
};

class AdmUNetImpl : public torch::nn::Module {
 public:
  explicit AdmUNetImpl(const AdmConfig& cfg) : torch::nn::Module("UNetModel"), cfg_(cfg) {
    const std::int64_t emb_dim = cfg.model_channels * 4;
    time_embed = register_module("time_embed", torch::nn::Sequential(torch::nn::Linear(cfg.model_channels, emb_dim),
                                                                     torch::nn::SiLU(),
                                                                     torch::nn::Linear(emb_dim, emb_dim)));
    using Resample = ResBlockImpl::Resample;
    auto res_block = [&](std::int64_t in, std::int64_t out, Resample resample = Resample::None) {
      return ResBlock(in, emb_dim, cfg.dropout, out, cfg.use_scale_shift_norm, resample);
    };
    auto attention = [&](std::int64_t channels, bool upsample) {
      return AttentionBlock(channels, cfg.heads(channels, upsample), cfg.use_new_attention_order);
    };

    input_blocks = register_module("input_blocks", torch::nn::ModuleList());
    output_blocks = register_module("output_blocks", torch::nn::ModuleList());
    const std::int64_t input_ch = cfg.width(cfg.channel_mult[0]);
    std::int64_t ch = input_ch;
    auto add_input = [&](TimestepEmbedSequential block) {
      input_blocks->push_back(block);
      inputs_.push_back(block);
    };
    TimestepEmbedSequential first;
    first->append(conv2d(cfg.in_channels, ch, 3, 1, 1));
    add_input(first);
    std::vector<std::int64_t> input_block_chans{ch};
    std::int64_t ds = 1;
    const std::size_t levels = cfg.channel_mult.size();
    for (std::size_t level = 0; level < levels; ++level) {
      for (std::int64_t i = 0; i < cfg.num_res_blocks; ++i) {
        TimestepEmbedSequential block;
        block->append(res_block(ch, cfg.width(cfg.channel_mult[level])));
        ch = cfg.width(cfg.channel_mult[level]);
        if (cfg.attends(ds)) block->append(attention(ch, false));
        add_input(block);
        input_block_chans.push_back(ch);
      }
      if (level + 1 != levels) {
        TimestepEmbedSequential block;
        if (cfg.resblock_updown) {
          block->append(res_block(ch, ch, Resample::Down));
        } else {
          block->append(Downsample(ch));
        }
        add_input(block);
        input_block_chans.push_back(ch);
        ds *= 2;
      }
    }

    middle_block = register_module("middle_block", TimestepEmbedSequential());
    middle_block->append(res_block(ch, ch));
    middle_block->append(attention(ch, false));
    middle_block->append(res_block(ch, ch));

    for (std::size_t level = levels; level-- > 0;) {
      for (std::int64_t i = 0; i <= cfg.num_res_blocks; ++i) {
        const std::int64_t ich = input_block_chans.back();
        input_block_chans.pop_back();
        TimestepEmbedSequential block;
        block->append(res_block(ch + ich, cfg.width(cfg.channel_mult[level])));
        ch = cfg.width(cfg.channel_mult[level]);
        if (cfg.attends(ds)) block->append(attention(ch, true));
        if (level > 0 && i == cfg.num_res_blocks) {
          if (cfg.resblock_updown) {
            block->append(res_block(ch, ch, Resample::Up));
          } else {
            block->append(Upsample(ch));
          }
          ds /= 2;
        }
        output_blocks->push_back(block);
        outputs_.push_back(block);
      }
    }

    out_norm = group_norm(ch);
    out_conv = zeroed(conv2d(input_ch, cfg.out_channels, 3, 1, 1));
    out = register_module("out", torch::nn::Sequential(out_norm, torch::nn::SiLU(), out_conv));
  }

  // x [N,3,H,W] and timesteps [N], already checked and on the module's device.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& timesteps) {
    const torch::Tensor emb = time_embed->forward(timestep_embedding(timesteps, cfg_.model_channels));
    std::vector<torch::Tensor> hs;
    torch::Tensor h = x;
    for (auto& block : inputs_) {
      h = block->forward(h, emb);
      hs.push_back(h);
    }
    h = middle_block->forward(h, emb);
    for (auto& block : outputs_) {
      h = block->forward(torch::cat({h, hs.back()}, 1), emb);
      hs.pop_back();
    }
    return out_conv(torch::silu(group_norm32(out_norm, h)));
  }

  torch::nn::Sequential time_embed{nullptr}, out{nullptr};
  torch::nn::ModuleList input_blocks{nullptr}, output_blocks{nullptr};
  TimestepEmbedSequential middle_block{nullptr};
  torch::nn::GroupNorm out_norm{nullptr};
  torch::nn::Conv2d out_conv{nullptr};

 private:
  AdmConfig cfg_;
  std::vector<TimestepEmbedSequential> inputs_, outputs_;
};
TORCH_MODULE(AdmUNet);

std::string join(const std::vector<std::int64_t>& values) {
  std::string text;
  for (auto v : values) text += (text.empty() ? "" : ", ") + str(v);
  return text;
}

// Reads create_model's arguments and refuses what the reference would only fail on deep
// inside (an assert in QKVAttention, a GroupNorm) or silently ignore (an attention
// resolution the UNet never reaches), naming the parameter.
AdmConfig read_config(const Params& p) {
  AdmConfig cfg;
  cfg.image_size = p.get_int("image_size");
  cfg.model_channels = p.get_int("num_channels");
  cfg.num_res_blocks = p.get_int("num_res_blocks");
  cfg.num_heads = p.get_int("num_heads");
  cfg.num_head_channels = p.get_int("num_head_channels");
  cfg.num_heads_upsample = p.get_int("num_heads_upsample");
  if (cfg.num_heads_upsample == -1) cfg.num_heads_upsample = cfg.num_heads;
  cfg.use_scale_shift_norm = p.get_bool("use_scale_shift_norm");
  cfg.resblock_updown = p.get_bool("resblock_updown");
  cfg.use_new_attention_order = p.get_bool("use_new_attention_order");
  cfg.dropout = p.get_float("dropout");
  cfg.out_channels = p.get_bool("learn_sigma") ? 2 * cfg.in_channels : cfg.in_channels;

  if (p.get_bool("class_cond"))
    throw Error(kWhere, "parameter 'class_cond' = true is not supported: the denoiser interface carries no class "
                        "labels (the released ffhq_10m.pt is unconditional)");

  // create_model's per-size channel multipliers when none are given.
  const auto& given = p.get_ints("channel_mult");
  if (!given.empty()) {
    cfg.channel_mult.assign(given.begin(), given.end());
  } else if (cfg.image_size == 512) {
    cfg.channel_mult = {0.5, 1, 1, 2, 2, 4, 4};
  } else if (cfg.image_size == 256) {
    cfg.channel_mult = {1, 1, 2, 2, 4, 4};
  } else if (cfg.image_size == 128) {
    cfg.channel_mult = {1, 1, 2, 3, 4};
  } else if (cfg.image_size == 64) {
    cfg.channel_mult = {1, 2, 3, 4};
  } else {
    throw Error(kWhere, "parameter 'channel_mult' is empty and 'image_size' = " + str(cfg.image_size) +
                            " has no default multipliers (create_model knows 512, 256, 128, 64): give channel_mult");
  }

  // Every level's width feeds a GroupNorm of 32 groups (and the output ResBlocks' inputs are
  // sums of these widths).
  for (double mult : cfg.channel_mult) {
    const std::int64_t w = cfg.width(mult);
    if (w < 32 || w % 32 != 0)
      throw Error(kWhere, "parameters 'num_channels' = " + str(cfg.model_channels) +
                              " x 'channel_mult' give a width of " +
                              str(w) + ", which must be a positive multiple of 32 (GroupNorm32 has 32 groups)");
  }

  // attention_resolutions are resolutions; the UNet compares downsample rates.
  const std::size_t levels = cfg.channel_mult.size();
  std::vector<std::int64_t> resolutions;
  for (std::size_t level = 0; level < levels; ++level) resolutions.push_back(cfg.image_size >> level);
  for (std::int64_t res : p.get_ints("attention_resolutions")) {
    const std::int64_t ds = res < 1 ? 0 : cfg.image_size / res;
    if (ds < 1 || cfg.image_size % res != 0 || (ds & (ds - 1)) != 0 ||
        ds > (std::int64_t{1} << (levels - 1)))
      throw Error(kWhere, "parameter 'attention_resolutions' holds " + str(res) +
                              ", which the UNet never reaches: with image_size " + str(cfg.image_size) + " and " +
                              str(static_cast<std::int64_t>(levels)) + " levels its resolutions are " +
                              join(resolutions));
    cfg.attention_ds.push_back(ds);
  }

  // Heads of every attention block (the middle block's too, at the last width).
  if (cfg.num_head_channels == 0 || cfg.num_head_channels < -1)
    throw Error(kWhere, "parameter 'num_head_channels' = " + str(cfg.num_head_channels) +
                            " must be positive, or -1 to use num_heads");
  if (cfg.num_heads < 1) throw Error(kWhere, "parameter 'num_heads' = " + str(cfg.num_heads) + " must be positive");
  if (cfg.num_heads_upsample < 1)
    throw Error(kWhere, "parameter 'num_heads_upsample' = " + str(cfg.num_heads_upsample) +
                            " must be positive, or -1 to use num_heads");
  std::set<std::int64_t> attended;
  for (std::size_t level = 0; level < levels; ++level)
    if (cfg.attends(std::int64_t{1} << level)) attended.insert(cfg.width(cfg.channel_mult[level]));
  attended.insert(cfg.width(cfg.channel_mult.back()));
  for (std::int64_t channels : attended) {
    if (cfg.num_head_channels != -1) {
      if (channels % cfg.num_head_channels != 0)
        throw Error(kWhere, "parameter 'num_head_channels' = " + str(cfg.num_head_channels) + " does not divide the " +
                                str(channels) + " channels of an attention block");
    } else {
      for (const auto& [key, heads] : {std::pair<const char*, std::int64_t>{"num_heads", cfg.num_heads},
                                       {"num_heads_upsample", cfg.num_heads_upsample}})
        if (channels % heads != 0)
          throw Error(kWhere, std::string("parameter '") + key + "' = " + str(heads) + " does not divide the " +
                                  str(channels) + " channels of an attention block (num_head_channels = -1)");
    }
  }
  return cfg;
}

class AdmUNetDenoiser final : public Denoiser {
 public:
  explicit AdmUNetDenoiser(const Params& p) : cfg_(read_config(p)), net_(cfg_) {}

  torch::nn::Module& module() override { return *net_; }
  std::int64_t in_channels() const override { return cfg_.in_channels; }
  std::int64_t out_channels() const override { return cfg_.out_channels; }
  std::int64_t context_size() const override { return 0; }

  // The reference UNet runs on any H, W that its downsamplings halve evenly (image_size only
  // chooses channel_mult and the attention rates), so the input size is checked against that.
  torch::Tensor forward(const torch::Tensor& x_t, const torch::Tensor& timesteps, const torch::Tensor& context,
                        const torch::Tensor& /*dropout_mask: no context to drop*/) override {
    const std::int64_t levels = static_cast<std::int64_t>(cfg_.channel_mult.size());
    const std::int64_t factor = std::int64_t{1} << (levels - 1);
    if (!x_t.defined() || x_t.dim() != 4 || x_t.size(1) != cfg_.in_channels)
      throw Error(kWhere, "x_t must have shape [N, " + str(cfg_.in_channels) + ", H, W], got " + shape_text(x_t));
    if (!x_t.is_floating_point())
      throw Error(kWhere, std::string("x_t must be floating point, got ") + c10::toString(x_t.scalar_type()));
    const std::int64_t n = x_t.size(0);
    if (n == 0) throw Error(kWhere, "x_t holds no rows (the batch is empty)");
    if (x_t.size(2) % factor != 0 || x_t.size(3) % factor != 0 || x_t.size(2) == 0 || x_t.size(3) == 0)
      throw Error(kWhere, "x_t's height and width must be positive multiples of " + str(factor) + " (" +
                              str(levels - 1) + " downsamplings for " + str(levels) + " channel_mult levels; " +
                              "image_size = " + str(cfg_.image_size) + "), got " + shape_text(x_t));
    if (!timesteps.defined() || timesteps.dim() != 1 || timesteps.size(0) != n)
      throw Error(kWhere, "timesteps must have shape [" + str(n) + "] (one per row of x_t), got " +
                              shape_text(timesteps));
    if (context.defined())
      throw Error(kWhere, "this model is unconditional (context_size 0) but a context " + shape_text(context) +
                              " was passed");
    const torch::Tensor& reference = net_->out_conv->weight;
    return net_->forward(x_t.to(reference.device(), reference.scalar_type()), timesteps.to(reference.device()));
  }

 private:
  AdmConfig cfg_;
  AdmUNet net_;
};

}  // namespace

void register_adm_unet(FactoryList& registry) {
  registry.add(
      Kind::Denoiser, "adm-unet", "1.0.0",
      "guided-diffusion ADM UNetModel (create_model), unconditional, as DCFace's FFHQ generator ffhq_10m.pt: eps "
      "and, with learn_sigma, the variance interpolation v",
      {ParamSpec::Int("image_size", 256, "training resolution; picks the default channel_mult and turns "
                                         "attention_resolutions into downsample rates")
           .at_least(1),
       ParamSpec::Int("num_channels", 128, "base width (model_channels); the time embedding is 4x this").at_least(1),
       ParamSpec::Int("num_res_blocks", 1, "residual blocks per level on the way down (one more on the way up)")
           .at_least(1),
       ParamSpec::IntList("channel_mult", {},
                          "width multiplier per level; empty: create_model's default for image_size "
                          "(512: 0.5,1,1,2,2,4,4; 256: 1,1,2,2,4,4; 128: 1,1,2,3,4; 64: 1,2,3,4)")
           .at_least(1),
       ParamSpec::Bool("learn_sigma", true, "also predict the variance interpolation v (6 output channels)"),
       ParamSpec::Bool("class_cond", false,
                       "class-conditional model; not supported (no class labels in the interface)"),
       ParamSpec::IntList("attention_resolutions", {16}, "resolutions whose blocks carry self-attention, e.g. [16]")
           .at_least(1),
       ParamSpec::Int("num_heads", 4, "attention heads when num_head_channels is -1").at_least(1),
       ParamSpec::Int("num_head_channels", 64, "channels per attention head; -1: use num_heads"),
       ParamSpec::Int("num_heads_upsample", -1, "heads of the up path's attention when num_head_channels is -1; "
                                                "-1: num_heads"),
       ParamSpec::Bool("use_scale_shift_norm", true, "FiLM the timestep embedding: GroupNorm(h)(1 + scale) + shift"),
       ParamSpec::Float("dropout", 0.0, "dropout before each ResBlock's last conv (train mode only)").range(0.0, 1.0),
       ParamSpec::Bool("resblock_updown", true, "resample inside ResBlocks instead of separate (conv) layers"),
       ParamSpec::Bool("use_new_attention_order", false,
                       "split q, k, v before heads (QKVAttention) instead of heads first (QKVAttentionLegacy)")},
      [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<AdmUNetDenoiser>(p); });
}

}  // namespace admis::denoisers
