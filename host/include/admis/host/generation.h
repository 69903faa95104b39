#pragma once
// The generative side as IDiff-Face / ADMIS run it (generative_model_training/main.py,
// diffusion/ddpm.py, utils/ema.py, sample.py): the reverse sampling loop with optional
// classifier-free guidance, the EMA of weights, Adam and cosine annealing with warm
// restarts, the DDPM wrapper's schedule buffers (so checkpoints keep the released layout),
// and image grids for previews.

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "admis/sdk/host.h"
#include "admis/sdk/kinds.h"

namespace admis::host {

// x_T -> x_0 with `scheduler`'s steps:  x = x_T;  for i: x = step(eps_theta(x, t_i, c), i, x, z_i).
// With guidance_scale w != 1, eps = (1 - w) eps(x, t, empty) + w eps(x, t, c) (the
// reference's sample_classifier_free_guided), both halves in one batched call. Noise z_i
// for steps that use it is drawn from `generator`. Runs in eval mode under InferenceMode.
torch::Tensor sample_reverse(Denoiser& denoiser, const Scheduler& scheduler, const torch::Tensor& x_T,
                             const torch::Tensor& context, double guidance_scale, at::Generator& generator);

// IDiff-Face's EMAModel (after diffusers): decay(n) = 0 for n - update_after_step - 1 <= 0,
// else clamp(1 - (1 + step / inv_gamma)^-power, min_value, max_value), where n counts the
// EMA updates so far. Parameters are averaged, buffers copied.
struct EmaOptions {
  double inv_gamma = 1.0, power = 0.75, min_value = 0.0, max_value = 0.9999;
  std::int64_t update_after_step = 0;
};
class ExponentialMovingAverage {
 public:
  ExponentialMovingAverage(torch::nn::Module& model, EmaOptions options);
  double decay(std::int64_t optimization_step) const;
  void step(torch::nn::Module& model);  // one update with the model's current weights
  std::int64_t optimization_step() const { return optimization_step_; }
  void set_optimization_step(std::int64_t n) { optimization_step_ = n; }
  const StateDict& averaged() const { return averaged_; }  // the module's keys
  void load(const StateDict& averaged, const std::string& source);

 private:
  EmaOptions options_;
  StateDict averaged_;
  std::int64_t optimization_step_ = 0;
};

// torch.optim.Adam (no weight decay, no amsgrad) with its state addressable by parameter
// name, for resumable checkpoints and for the reference's optimization.ckpt.
class Adam {
 public:
  Adam(std::vector<std::pair<std::string, torch::Tensor>> named_parameters, double beta1 = 0.9, double beta2 = 0.999,
       double eps = 1e-8);
  void zero_grad();
  void step(double lr);
  // "exp_avg.<name>", "exp_avg_sq.<name>", "step.<name>" for every parameter with state.
  StateDict state() const;
  void load_state(const StateDict& state, const std::string& source);
  const std::vector<std::pair<std::string, torch::Tensor>>& parameters() const { return params_; }
  double beta1() const { return beta1_; }
  double beta2() const { return beta2_; }
  double eps() const { return eps_; }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  double beta1_, beta2_, eps_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  std::vector<std::int64_t> steps_;
};

// Dynamic loss scaling for float16 training (torch.cuda.amp.GradScaler's defaults, as
// Lightning's precision=16 uses them): the loss is multiplied by `scale` before backward;
// unscale() divides the gradients back and reports whether any is inf/NaN; update() halves
// the scale after such a step (which the caller skips) and doubles it after
// `growth_interval` finite steps in a row.
class LossScaler {
 public:
  explicit LossScaler(double scale = 65536.0, std::int64_t growth_interval = 2000)
      : scale_(scale), growth_interval_(growth_interval) {}
  double scale() const { return scale_; }
  std::int64_t growth_tracker() const { return growth_tracker_; }
  void restore(double scale, std::int64_t growth_tracker) {
    scale_ = scale;
    growth_tracker_ = growth_tracker;
  }
  // Divides every defined gradient by the scale; true when all are finite.
  bool unscale(const std::vector<torch::Tensor>& parameters) const;
  void update(bool finite);

 private:
  double scale_;
  std::int64_t growth_interval_;
  std::int64_t growth_tracker_ = 0;
};

// torch.optim.lr_scheduler.CosineAnnealingWarmRestarts stepped once per optimizer step:
// after `step` scheduler steps, T_cur and T_i follow its bookkeeping and
// lr = eta_min + (base - eta_min) (1 + cos(pi T_cur / T_i)) / 2.
struct CosineWarmRestarts {
  double base_lr = 1e-4;
  std::int64_t t_0 = 10000;
  std::int64_t t_mult = 2;
  double eta_min = 0;
  double at(std::int64_t step) const;
  void position(std::int64_t step, std::int64_t& t_cur, std::int64_t& t_i) const;
};

// The buffers DenoisingDiffusionProbabilisticModel registers (precompute_schedule_constants),
// computed from `betas` in float32 as the reference does; with the UNet's keys under
// 'eps_model.' they make a checkpoint in the released layout.
StateDict ddpm_schedule_buffers(const torch::Tensor& betas);

// Images [N,3,H,W] in [0,1] as a grid PNG (torchvision make_grid: `per_row` per row,
// `padding` pixels of value `pad_value`), written atomically.
void save_image_grid(const torch::Tensor& images, std::int64_t per_row, const std::string& path,
                     std::int64_t padding = 2, double pad_value = 1.0);
// One image [3,H,W] in [0,1] -> [H,W,3] uint8 RGB, rounded as torchvision's save_image
// (x * 255 + 0.5, clamped).
torch::Tensor to_uint8_image(const torch::Tensor& image);
// An [H,W,3] uint8 RGB image as PNG at `path` (written in place; callers publish folders atomically).
void write_png(const torch::Tensor& image, const std::string& path);

}  // namespace admis::host

namespace admis::host {

// The sampling stage's work (ADMIS sample.py, made resumable and shardable): for each
// identity i of the context source, M images from noise that depends only on (seed, i, k),
// the reverse process conditioned on context i, decoded, mapped [-1,1] -> [0,1], resized
// bilinearly to output_size, passed through the identity augmenters (e.g. id-oversample,
// which receives the context's face), and written as <images_dir>/<i>/<k>.png. An identity
// folder appears by one rename when complete, so a folder that exists is complete and a
// resumed run skips it; partial work (a hidden .tmp folder) is redone.
struct IdentitySamplingOptions {
  std::int64_t first_identity = 0;
  std::int64_t identities = 0;           // 0: every identity from first_identity on
  std::int64_t images_per_identity = 50;
  std::int64_t batch_size = 50;
  std::int64_t generation_size = 128;    // decoded image size, sets the latent size through the codec
  std::int64_t output_size = 112;
  double guidance_scale = 1.0;           // classifier-free guidance weight; 1: the conditional model alone
  std::uint64_t seed = 0;
  std::int64_t shard_index = 0, shard_count = 1;  // this run takes identities with i mod count == index
  std::int64_t preview_identities = 8;   // preview.png: their first 8 images; 0: none
  std::ostream* progress = nullptr;
};

struct IdentitySamplingSummary {
  std::int64_t identities = 0;  // in this shard
  std::int64_t generated = 0;   // sampled in this call
  std::int64_t skipped = 0;     // already complete
  double seconds = 0;
};

IdentitySamplingSummary sample_identities(Denoiser& denoiser, Codec& codec, const Scheduler& scheduler,
                                          ContextSource& contexts, const std::vector<Augmenter*>& identity_augmenters,
                                          const IdentitySamplingOptions& options, const std::string& images_dir);

// "i/n" -> (i, n), with an error naming `where` unless 0 <= i < n.
std::pair<std::int64_t, std::int64_t> parse_shard(const std::string& text, const std::string& where);

}  // namespace admis::host
