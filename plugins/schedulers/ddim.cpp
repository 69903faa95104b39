// `ddim`: DDIM as written in Song et al. 2021 (eqs. 12 and 16), on IDiff-Face's schedule.
//
// S of the T training timesteps are visited, t_0 > t_1 > ... > t_{S-1}. Step i predicts
//   x0   = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
//   x_p  = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) eps + sigma z,
//   sigma = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p),
// where a = alpha_bar, t = t_i and p = t_{i+1} is the next timestep visited; after the last
// one a_p = 1 (the clean image; the paper's alpha_0 = 1, diffusers' set_alpha_to_one).
//
// Timestep spacing:
//   leading  (default; the DDIM paper's uniform tau and diffusers' "leading"):
//            skip = T // S, t_i = (S-1-i) skip, so the last step is t = 0
//   trailing (Lin et al. 2024, diffusers' "trailing"): t_i = round((S-i) T / S) - 1, so the
//            first step starts from t = T-1, the fully noised end of training
//
// Scalars are computed in double from the float32 alpha_bars; see `ddim-admis` for the
// ADMIS reference sampler with its exact float32 arithmetic and previous-alpha lookup.

#include <cmath>

#include "scheduler_common.h"

namespace admis::schedulers {
namespace {

class Ddim final : public IdiffScheduler {
 public:
  explicit Ddim(const Params& params)
      : IdiffScheduler(params), eta_(params.get_float("eta")), clip_x0_(params.get_bool("clip_x0")) {
    const std::int64_t S = params.get_int("num_inference_steps");
    if (S > T_)
      throw Error(where_, "parameter 'num_inference_steps' = " + std::to_string(S) +
                              " exceeds num_train_timesteps = " + std::to_string(T_));
    const std::string& spacing = params.get_string("timestep_spacing");
    for (std::int64_t i = 0; i < S; ++i) {
      if (spacing == "leading") {
        timesteps_.push_back((S - 1 - i) * (T_ / S));
      } else if (spacing == "trailing") {
        // round((S-i) T / S) - 1 in integers, halves rounded up
        timesteps_.push_back(((S - i) * T_ * 2 + S) / (2 * S) - 1);
      } else {
        throw Error(where_, "parameter 'timestep_spacing' = '" + spacing + "' is not one of: leading, trailing");
      }
    }
    for (std::int64_t i = 0; i < S; ++i) {
      const double a_t = alpha_bar(timesteps_[static_cast<std::size_t>(i)]);
      const double a_p = i + 1 < S ? alpha_bar(timesteps_[static_cast<std::size_t>(i + 1)]) : 1.0;
      step_sigmas_.push_back(eta_ * std::sqrt((1 - a_p) / (1 - a_t)) * std::sqrt(1 - a_t / a_p));
      alpha_prev_.push_back(a_p);
    }
  }

  std::int64_t num_steps() const override { return static_cast<std::int64_t>(timesteps_.size()); }
  std::int64_t model_timestep(std::int64_t step) const override {
    check_step_index(where_, step, num_steps());
    return timesteps_[static_cast<std::size_t>(step)];
  }
  // sigma = 0 (eta = 0, and always at the last step, where a_p = 1) adds no noise.
  bool uses_noise(std::int64_t step) const override {
    check_step_index(where_, step, num_steps());
    return step_sigmas_[static_cast<std::size_t>(step)] > 0.0;
  }

  StepOutput step(const torch::Tensor& model_output, std::int64_t step, const torch::Tensor& x_t,
                  const torch::Tensor& noise) const override {
    check_step_index(where_, step, num_steps());
    check_model_output(where_, model_output, x_t, false);
    const bool noisy = uses_noise(step);
    check_noise(where_, step, noisy, noise, x_t);
    const auto i = static_cast<std::size_t>(step);
    const double a_t = alpha_bar(timesteps_[i]), a_p = alpha_prev_[i], sigma = step_sigmas_[i];

    StepOutput out;
    torch::Tensor eps = model_output;
    out.pred_x0 = (x_t - eps * std::sqrt(1 - a_t)) / std::sqrt(a_t);
    if (clip_x0_) {
      // Clip the prediction to the data range and re-derive eps from it, so that the
      // direction term points back at x_t consistently (as GLIDE and diffusers do).
      out.pred_x0 = out.pred_x0.clamp(-1, 1);
      eps = (x_t - out.pred_x0 * std::sqrt(a_t)) / std::sqrt(1 - a_t);
    }
    // max(0, .) guards the square root against rounding when a_p = 1 and sigma = 0.
    out.mean = out.pred_x0 * std::sqrt(a_p) + eps * std::sqrt(std::max(0.0, 1 - a_p - sigma * sigma));
    out.prev_sample = noisy ? out.mean + noise * sigma : out.mean;
    if (noisy) out.log_variance = torch::full({}, 2 * std::log(sigma), x_t.options()).expand_as(x_t);
    return out;
  }

 private:
  double alpha_bar(std::int64_t t) const { return static_cast<double>(at(alpha_bars_, t)); }

  double eta_;
  bool clip_x0_;
  std::vector<std::int64_t> timesteps_;  // t_i visited at step i
  std::vector<double> alpha_prev_;       // a_p of step i
  std::vector<double> step_sigmas_;      // sigma of step i
};

}  // namespace

void register_ddim(FactoryList& registry) {
  auto params = idiff_schedule_params();
  params.push_back(ParamSpec::Int("num_inference_steps", 50, "S, the number of DDIM steps (at most T)").at_least(1));
  params.push_back(ParamSpec::Float("eta", 0.0, "stochasticity: 0 is deterministic DDIM, 1 the DDPM posterior variance")
                       .range(0.0, 1.0));
  params.push_back(ParamSpec::Bool("clip_x0", false, "clip the predicted x0 to [-1, 1] and re-derive eps from it"));
  params.push_back(ParamSpec::String("timestep_spacing", "leading",
                                     "leading: t = (S-1-i) (T//S), ends at 0; trailing: starts at T-1")
                       .one_of({"leading", "trailing"}));
  registry.add(Kind::Scheduler, "ddim", "1.0.0", "Textbook DDIM (Song et al. 2021) on IDiff-Face's noise schedule",
               std::move(params),
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<Ddim>(p); });
}

}  // namespace admis::schedulers
