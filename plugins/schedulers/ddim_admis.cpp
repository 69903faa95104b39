// `ddim-admis`: the DDIM sampler exactly as ADMIS runs it
// (DenoisingDiffusionProbabilisticModel.sample_ddim in generative_model_training/diffusion/
// ddpm.py), so that its released checkpoint gives the published samples.
//
// It differs from textbook DDIM (the `ddim` plugin) in two ways that change the images:
//  - the previous alpha_bar is looked up as alphas_prev[t - skip], where
//    alphas_prev = [1, alpha_bar_0, ..., alpha_bar_{T-2}], i.e. alpha_bar_{t-skip-1}: one
//    timestep later than the textbook alpha_bar_{t-skip}; and 1 when t - skip < 0. With
//    T = 1000 and 50 steps (skip 20) the last two steps, t = 20 and t = 0, both jump to
//    alpha_bar = 1.
//  - the visited timesteps are reversed(range(0, T, skip)) with skip = T // steps, which
//    is ceil(T / skip) steps: more than `num_inference_steps` when it does not divide T
//    (T = 1000, 30 steps: skip 33, 31 steps).
// The scalar arithmetic is float32 in the reference's order (it operates on 0-dim float32
// tensors), and with eta > 0 every step draws noise, even those where sigma = 0, as the
// reference does; uses_noise() says so, so a seeded run consumes the same random stream.

#include <cmath>

#include "scheduler_common.h"

namespace admis::schedulers {
namespace {

class DdimAdmis final : public IdiffScheduler {
 public:
  explicit DdimAdmis(const Params& params)
      : IdiffScheduler(params), eta_(params.get_float("eta")), clip_x0_(params.get_bool("clip_x0")) {
    const std::int64_t steps = params.get_int("num_inference_steps");
    if (steps > T_)
      throw Error(where_, "parameter 'num_inference_steps' = " + std::to_string(steps) +
                              " exceeds num_train_timesteps = " + std::to_string(T_) +
                              " (the reference's skip = T // steps would be 0)");
    skip_ = T_ / steps;
    for (std::int64_t t = 0; t < T_; t += skip_) timesteps_.insert(timesteps_.begin(), t);
    // alphas_prev = cat([1], alpha_bars[:-1])
    alphas_prev_.push_back(1.0f);
    alphas_prev_.insert(alphas_prev_.end(), alpha_bars_.begin(), alpha_bars_.end() - 1);
  }

  std::int64_t num_steps() const override { return static_cast<std::int64_t>(timesteps_.size()); }
  std::int64_t model_timestep(std::int64_t step) const override {
    check_step_index(where_, step, num_steps());
    return timesteps_[static_cast<std::size_t>(step)];
  }
  bool uses_noise(std::int64_t step) const override {
    check_step_index(where_, step, num_steps());
    return eta_ > 0;
  }

  StepOutput step(const torch::Tensor& model_output, std::int64_t step, const torch::Tensor& x_t,
                  const torch::Tensor& noise) const override {
    check_step_index(where_, step, num_steps());
    check_model_output(where_, model_output, x_t, false);
    const bool noisy = uses_noise(step);
    check_noise(where_, step, noisy, noise, x_t);
    const std::int64_t t = model_timestep(step);
    const std::int64_t prev_timestep = t - skip_;

    // The reference's 0-dim float32 tensor arithmetic, operation by operation.
    const float alpha_prod_t = at(alpha_bars_, t);
    const float alpha_prod_t_prev = prev_timestep >= 0 ? at(alphas_prev_, prev_timestep) : 1.0f;
    const float beta_prod_t = 1.0f - alpha_prod_t;
    const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
    const float variance = (beta_prod_t_prev / beta_prod_t) * (1.0f - alpha_prod_t / alpha_prod_t_prev);
    const float std_dev_t = static_cast<float>(eta_) * std::sqrt(variance);

    StepOutput out;
    // Eq. 12's "predicted x0".
    out.pred_x0 = (x_t - model_output * std::sqrt(beta_prod_t)) / std::sqrt(alpha_prod_t);
    // The reference re-derives eps from x0, a GLIDE leftover for a clipped x0; its clip is
    // commented out, so by default this only reproduces its rounding. clip_x0 restores
    // the clip, which keeps an undertrained model's first steps (x0 = (x_t - ...) / 0.006 at
    // t = 950) from blowing the sample up.
    if (clip_x0_) out.pred_x0 = out.pred_x0.clamp(-1, 1);
    const auto eps = (x_t - out.pred_x0 * std::sqrt(alpha_prod_t)) / std::sqrt(beta_prod_t);
    const auto direction = eps * std::sqrt(1.0f - alpha_prod_t_prev - std_dev_t * std_dev_t);
    out.mean = out.pred_x0 * std::sqrt(alpha_prod_t_prev) + direction;
    out.prev_sample = noisy ? out.mean + noise * std_dev_t : out.mean;
    if (std_dev_t > 0.0f)
      out.log_variance = torch::full({}, 2 * std::log(static_cast<double>(std_dev_t)), x_t.options()).expand_as(x_t);
    return out;
  }

 private:
  double eta_;
  bool clip_x0_;
  std::int64_t skip_ = 1;
  std::vector<std::int64_t> timesteps_;  // reversed(range(0, T, skip))
  std::vector<float> alphas_prev_;       // [1, alpha_bar_0, ..., alpha_bar_{T-2}]
};

}  // namespace

void register_ddim_admis(FactoryList& registry) {
  auto params = idiff_schedule_params();
  params.push_back(ParamSpec::Int("num_inference_steps", 50,
                                  "the reference's ddim_step: skip = T // steps, visiting reversed(range(0, T, skip))")
                       .at_least(1));
  params.push_back(ParamSpec::Float("eta", 0.0, "stochasticity of eq. 16: 0 is deterministic").range(0.0, 1.0));
  params.push_back(ParamSpec::Bool("clip_x0", false,
                                   "clip the predicted x0 to [-1, 1] and re-derive eps from it (the reference's "
                                   "commented-out clip; ADMIS samples without it)"));
  registry.add(Kind::Scheduler, "ddim-admis", "1.0.0",
               "ADMIS's reference DDIM sampler (sample_ddim), including its previous-alpha lookup", std::move(params),
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<DdimAdmis>(p); });
}

}  // namespace admis::schedulers
