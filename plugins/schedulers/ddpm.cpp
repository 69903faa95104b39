// `ddpm`: ancestral sampling of Ho et al. (Algorithm 2) as IDiff-Face/ADMIS's
// DenoisingDiffusionProbabilisticModel.sample runs it, over all T timesteps:
//
//   x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z,
//   sigma_t = sqrt(beta_t).

#include <cmath>

#include "scheduler_common.h"

namespace admis::schedulers {
namespace {

class Ddpm final : public IdiffScheduler {
 public:
  explicit Ddpm(const Params& params) : IdiffScheduler(params) {}

  std::int64_t num_steps() const override { return T_; }
  // Step i visits timestep T-1-i.
  std::int64_t model_timestep(std::int64_t step) const override {
    check_step_index(where_, step, num_steps());
    return T_ - 1 - step;
  }
  // The reference draws `z = randn(...) if i > 1 else 0` with i the timestep: the last
  // two steps (t = 1 and t = 0) add no noise, not only the last one as in Ho et al.
  // We match it so that released checkpoints sample what they sampled in the reference.
  bool uses_noise(std::int64_t step) const override { return model_timestep(step) > 1; }

  StepOutput step(const torch::Tensor& eps, std::int64_t step, const torch::Tensor& x_t,
                  const torch::Tensor& noise) const override {
    check_step_index(where_, step, num_steps());
    check_model_output(where_, eps, x_t, false);
    const bool noisy = uses_noise(step);
    check_noise(where_, step, noisy, noise, x_t);
    const std::int64_t t = model_timestep(step);

    StepOutput out;
    // The reference's operation order, with its float32 constants.
    out.mean = (x_t - eps * at(eps_coefficient_, t)) * at(sqrt_alphas_inv_, t);
    out.prev_sample = noisy ? out.mean + noise * at(sigmas_, t) : out.mean;
    out.pred_x0 = (x_t - eps * at(sqrt_one_minus_alpha_bars_, t)) / at(sqrt_alpha_bars_, t);
    // log sigma_t^2 = log beta_t, the variance of p(x_{t-1} | x_t) (reported even for the
    // last two steps, where the reference adds no noise).
    out.log_variance = torch::full({}, std::log(static_cast<double>(at(betas_, t))), x_t.options()).expand_as(x_t);
    return out;
  }
};

}  // namespace

void register_ddpm(FactoryList& registry) {
  registry.add(Kind::Scheduler, "ddpm", "1.0.0",
               "Ancestral DDPM sampling over all T steps, as IDiff-Face/ADMIS's DenoisingDiffusionProbabilisticModel",
               idiff_schedule_params(),
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<Ddpm>(p); });
}

}  // namespace admis::schedulers
