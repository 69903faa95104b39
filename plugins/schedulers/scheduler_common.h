#pragma once
// What the four schedulers share: argument checks with messages that name the plugin,
// per-sample coefficient lookup, the IDiff-Face schedule parameters, and the base class
// for the schedulers built on IDiff-Face's float32 schedule (ddpm, ddim, ddim-admis).

#include <cstdint>
#include <string>
#include <vector>

#include "admis/sdk.h"
#include "beta_schedules.h"

namespace admis::schedulers {

void check_step_index(const std::string& where, std::int64_t step, std::int64_t num_steps);
// model_output must be x_t's shape, or have 2C channels when the variance is learned.
void check_model_output(const std::string& where, const torch::Tensor& model_output, const torch::Tensor& x_t,
                        bool learned_variance);
// A step that uses noise needs a tensor of x_t's shape; other steps ignore `noise`.
void check_noise(const std::string& where, std::int64_t step, bool uses_noise, const torch::Tensor& noise,
                 const torch::Tensor& x_t);
// timesteps [N] integer, within [0, T), N = batch size of x0; eps of x0's shape.
void check_add_noise(const std::string& where, const torch::Tensor& x0, const torch::Tensor& eps,
                     const torch::Tensor& timesteps, std::int64_t T);
// coefficients[t] for each sample, shaped [N,1,...,1] to broadcast against `like`, on its
// device and in its dtype.
torch::Tensor per_sample(const torch::Tensor& coefficients, const torch::Tensor& timesteps, const torch::Tensor& like);

// num_train_timesteps, schedule, schedule_k, schedule_beta_min, schedule_beta_max.
std::vector<ParamSpec> idiff_schedule_params();

// A scheduler over IDiff-Face's schedule: the training side (betas, alpha_bars, add_noise
// as the reference's forward()) is shared; subclasses define the reverse steps.
class IdiffScheduler : public Scheduler {
 public:
  explicit IdiffScheduler(const Params& params);

  std::int64_t num_train_timesteps() const override { return T_; }
  // Copies: a caller editing them in place must not change the sampler.
  torch::Tensor betas() const override { return schedule_.betas.clone(); }
  torch::Tensor alpha_bars() const override { return schedule_.alpha_bars.clone(); }
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& eps,
                          const torch::Tensor& timesteps) const override;
  bool expects_learned_variance() const override { return false; }

 protected:
  // The schedule constant at timestep t as the float32 value the reference multiplies by.
  static float at(const std::vector<float>& values, std::int64_t t) { return values[static_cast<std::size_t>(t)]; }
  static std::vector<float> to_vector(const torch::Tensor& t);

  std::string where_;  // "scheduler/<name>", prefixed to every error
  std::int64_t T_;
  IdiffSchedule schedule_;
  // CPU copies for scalar lookups inside step().
  std::vector<float> betas_, alpha_bars_, sigmas_, sqrt_alphas_inv_, sqrt_alpha_bars_, sqrt_one_minus_alpha_bars_,
      eps_coefficient_;
};

// The registration functions, one per plugin, called from the library's entry point.
void register_ddpm(FactoryList& registry);
void register_ddim(FactoryList& registry);
void register_ddim_admis(FactoryList& registry);
void register_respaced_ddpm(FactoryList& registry);

}  // namespace admis::schedulers
