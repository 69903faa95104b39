#include "scheduler_common.h"

#include <sstream>

namespace admis::schedulers {
namespace {

std::string shape_text(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

std::string shape_of(const torch::Tensor& t) { return t.defined() ? shape_text(t.sizes()) : "undefined"; }

}  // namespace

void check_step_index(const std::string& where, std::int64_t step, std::int64_t num_steps) {
  if (step < 0 || step >= num_steps)
    throw Error(where, "step " + std::to_string(step) + " is out of range: this scheduler takes " +
                           std::to_string(num_steps) + " steps (0 .. " + std::to_string(num_steps - 1) + ")");
}

void check_model_output(const std::string& where, const torch::Tensor& model_output, const torch::Tensor& x_t,
                        bool learned_variance) {
  if (!x_t.defined() || x_t.dim() < 2 || !x_t.is_floating_point())
    throw Error(where, "x_t must be a floating-point [N,C,...] tensor, got " + shape_of(x_t));
  if (!model_output.defined()) throw Error(where, "model_output is undefined");
  auto expected = x_t.sizes().vec();
  if (learned_variance) expected[1] *= 2;
  if (model_output.sizes().vec() != expected) {
    throw Error(where, "model_output has shape " + shape_of(model_output) + ", expected " + shape_text(expected) +
                           (learned_variance ? " (eps and the variance value: 2C channels, learn_sigma is true)"
                                             : " (eps, the shape of x_t)"));
  }
}

void check_noise(const std::string& where, std::int64_t step, bool uses_noise, const torch::Tensor& noise,
                 const torch::Tensor& x_t) {
  if (!uses_noise) return;
  if (!noise.defined() || noise.sizes() != x_t.sizes())
    throw Error(where, "step " + std::to_string(step) + " adds noise and needs a noise tensor of x_t's shape " +
                           shape_of(x_t) + ", got " + shape_of(noise));
}

void check_add_noise(const std::string& where, const torch::Tensor& x0, const torch::Tensor& eps,
                     const torch::Tensor& timesteps, std::int64_t T) {
  if (!x0.defined() || x0.dim() < 1 || !x0.is_floating_point())
    throw Error(where, "add_noise: x0 must be a floating-point [N,...] tensor, got " + shape_of(x0));
  if (!eps.defined() || eps.sizes() != x0.sizes())
    throw Error(where, "add_noise: eps has shape " + shape_of(eps) + ", expected x0's shape " + shape_of(x0));
  if (!timesteps.defined() || timesteps.dim() != 1 || timesteps.size(0) != x0.size(0) ||
      torch::isFloatingType(timesteps.scalar_type()) || timesteps.scalar_type() == torch::kBool)
    throw Error(where, "add_noise: timesteps must be an integer tensor [" + std::to_string(x0.size(0)) + "], got " +
                           shape_of(timesteps));
  if (timesteps.numel() > 0) {
    const auto lo = timesteps.min().item<std::int64_t>(), hi = timesteps.max().item<std::int64_t>();
    if (lo < 0 || hi >= T)
      throw Error(where, "add_noise: timesteps must lie in [0, " + std::to_string(T) + "), got values from " +
                             std::to_string(lo) + " to " + std::to_string(hi));
  }
}

torch::Tensor per_sample(const torch::Tensor& coefficients, const torch::Tensor& timesteps, const torch::Tensor& like) {
  auto values = coefficients.to(timesteps.device()).index_select(0, timesteps.to(torch::kLong));
  std::vector<std::int64_t> shape(static_cast<std::size_t>(like.dim()), 1);
  shape[0] = like.size(0);
  return values.view(shape).to(like.device(), like.scalar_type());
}

std::vector<ParamSpec> idiff_schedule_params() {
  return {
      ParamSpec::Int("num_train_timesteps", 1000, "T, the number of diffusion steps the model was trained with")
          .at_least(2),
      ParamSpec::String("schedule", "linear", "beta schedule as IDiff-Face's compute_beta_schedule")
          .one_of({"linear", "cosine", "cosine_warped"}),
      ParamSpec::Float("schedule_k", 1.0, "cosine_warped only: exponent k of the (1+s)^k denominator")
          .range(0.0, 100.0),
      ParamSpec::Float("schedule_beta_min", 0.0, "cosine_warped only: lower clip of the betas").range(0.0, 1.0),
      ParamSpec::Float("schedule_beta_max", 0.1, "cosine and cosine_warped: upper clip of the betas").range(0.0, 1.0),
  };
}

IdiffScheduler::IdiffScheduler(const Params& params)
    : where_(params.owner()), T_(params.get_int("num_train_timesteps")) {
  const std::string& schedule = params.get_string("schedule");
  const double beta_min = params.get_float("schedule_beta_min"), beta_max = params.get_float("schedule_beta_max");
  if (schedule == "cosine_warped" && beta_min > beta_max)
    throw Error(where_, "parameter 'schedule_beta_min' = " + std::to_string(beta_min) +
                            " exceeds 'schedule_beta_max' = " + std::to_string(beta_max));
  const torch::Tensor betas = idiff_betas(T_, schedule, params.get_float("schedule_k"), beta_min, beta_max, where_);
  // Every beta must lie in (0, 1): beta = 0 makes 1 - alpha_bar vanish at t = 0 (a division
  // by zero in every step) and beta = 1 destroys the signal.
  const float lo = betas.min().item<float>(), hi = betas.max().item<float>();
  if (!(lo > 0.0f) || !(hi < 1.0f))
    throw Error(where_, "parameter 'schedule' = '" + schedule + "' with num_train_timesteps = " + std::to_string(T_) +
                            " gives betas from " + std::to_string(lo) + " to " + std::to_string(hi) +
                            "; every beta must lie in (0, 1) (linear needs num_train_timesteps > 20; cosine needs "
                            "schedule_beta_max > 0)");
  schedule_ = idiff_schedule(betas);
  betas_ = to_vector(schedule_.betas);
  alpha_bars_ = to_vector(schedule_.alpha_bars);
  sigmas_ = to_vector(schedule_.sigmas);
  sqrt_alphas_inv_ = to_vector(schedule_.sqrt_alphas_inv);
  sqrt_alpha_bars_ = to_vector(schedule_.sqrt_alpha_bars);
  sqrt_one_minus_alpha_bars_ = to_vector(schedule_.sqrt_one_minus_alpha_bars);
  eps_coefficient_ = to_vector(schedule_.one_minus_alphas_over_sqrt_one_minus_alpha_bars);
}

std::vector<float> IdiffScheduler::to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

torch::Tensor IdiffScheduler::add_noise(const torch::Tensor& x0, const torch::Tensor& eps,
                                        const torch::Tensor& timesteps) const {
  check_add_noise(where_, x0, eps, timesteps, T_);
  // The reference forward(): mean = sqrt(alpha_bar_t) x0, sd = sqrt(1 - alpha_bar_t).
  const auto mean = per_sample(schedule_.sqrt_alpha_bars, timesteps, x0) * x0;
  const auto sd = per_sample(schedule_.sqrt_one_minus_alpha_bars, timesteps, x0);
  return mean + sd * eps;
}

}  // namespace admis::schedulers
