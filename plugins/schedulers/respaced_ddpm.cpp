// `respaced-ddpm`: ancestral sampling of guided-diffusion's SpacedDiffusion (respace.py)
// with GaussianDiffusion.p_mean_variance / p_sample (gaussian_diffusion.py), the sampler
// of the ADM UNet (DCFace's unconditional FFHQ model, respaced to 100 steps).
//
// Respacing keeps S of the T training timesteps, timestep_map[k] for respaced index k, and
// builds a new S-step process whose alpha_bars are the kept ones:
//   beta'_k = 1 - alpha_bar[timestep_map[k]] / alpha_bar[timestep_map[k-1]].
// Step i runs respaced index k = S-1-i; the model sees the original timestep
// timestep_map[k]. From eps it predicts x0 (clipped to [-1, 1] when clip_denoised), the
// posterior mean mu(x_t, x0) of q(x_{k-1} | x_k, x0), and the variance:
//   learn_sigma:  log var = f log beta'_k + (1 - f) log beta~_k, f = (v + 1) / 2, v the
//                 model's second C channels (the "learned range" of improved DDPM)
//   fixed_large:  beta'_k (beta~_1 at k = 0),   fixed_small: beta~_k (the posterior's)
// with beta~ the posterior variance, its log clipped at k = 0. The sample is
//   x_{k-1} = mu + (k > 0) exp(log var / 2) z.
//
// Precision follows the reference: every schedule quantity is float64 (numpy) and is cast
// to float32 where it meets the tensors (_extract_into_tensor's .float()); the
// elementwise arithmetic is float32, in the reference's order.

#include <cmath>

#include "scheduler_common.h"

namespace admis::schedulers {
namespace {

class RespacedDdpm final : public Scheduler {
 public:
  explicit RespacedDdpm(const Params& params)
      : where_(params.owner()),
        T_(params.get_int("num_train_timesteps")),
        learn_sigma_(params.get_bool("learn_sigma")),
        clip_denoised_(params.get_bool("clip_denoised")) {
    const std::string& schedule = params.get_string("schedule");
    const std::vector<double> betas = guided_betas(T_, schedule, where_);
    for (std::size_t t = 0; t < betas.size(); ++t) {
      if (!(betas[t] > 0.0 && betas[t] < 1.0))
        throw Error(where_, "parameter 'schedule' = '" + schedule +
                                "' with num_train_timesteps = " + std::to_string(T_) + " gives beta_" +
                                std::to_string(t) + " = " + std::to_string(betas[t]) +
                                "; every beta must lie in (0, 1) (linear needs num_train_timesteps > 20)");
    }

    // The training process: q(x_t | x_0) over the original T timesteps.
    std::vector<double> alphas_cumprod(betas.size());
    double product = 1.0;
    for (std::size_t t = 0; t < betas.size(); ++t) alphas_cumprod[t] = product *= 1.0 - betas[t];
    std::vector<float> sqrt_ac, sqrt_one_minus_ac;
    for (double a : alphas_cumprod) {
      sqrt_ac.push_back(static_cast<float>(std::sqrt(a)));
      sqrt_one_minus_ac.push_back(static_cast<float>(std::sqrt(1.0 - a)));
    }
    betas_ = to_float_tensor(betas);
    alpha_bars_ = to_float_tensor(alphas_cumprod);
    sqrt_alpha_bars_ = torch::tensor(sqrt_ac, torch::kFloat32);
    sqrt_one_minus_alpha_bars_ = torch::tensor(sqrt_one_minus_ac, torch::kFloat32);

    // SpacedDiffusion: keep the chosen timesteps and rebuild the betas between them.
    timestep_map_ = space_timesteps(T_, params.get_string("timestep_respacing"), where_);
    if (timestep_map_.size() < 2)
      throw Error(where_, "parameter 'timestep_respacing' = '" + params.get_string("timestep_respacing") + "' keeps " +
                              std::to_string(timestep_map_.size()) + " timestep; the posterior needs at least 2");
    std::vector<double> spaced_betas;
    double last_alpha_cumprod = 1.0;
    for (std::int64_t t : timestep_map_) {
      const double a = alphas_cumprod[static_cast<std::size_t>(t)];
      spaced_betas.push_back(1 - a / last_alpha_cumprod);
      last_alpha_cumprod = a;
    }

    // Model timesteps: the original ones, or scaled to 0..1000 with rescale_timesteps.
    // The interface carries integer timesteps, so the scale 1000 / T must be an integer.
    const bool rescale = params.get_bool("rescale_timesteps");
    if (rescale && 1000 % T_ != 0)
      throw Error(where_, "parameter 'rescale_timesteps' is true but num_train_timesteps = " + std::to_string(T_) +
                              " does not divide 1000, so the rescaled model timesteps t * 1000 / T would not be "
                              "integers");
    for (std::int64_t t : timestep_map_) model_timesteps_.push_back(rescale ? t * (1000 / T_) : t);

    build_posterior(spaced_betas, params.get_string("fixed_variance"));
  }

  std::int64_t num_train_timesteps() const override { return T_; }
  torch::Tensor betas() const override { return betas_.clone(); }
  torch::Tensor alpha_bars() const override { return alpha_bars_.clone(); }
  // q_sample over the original schedule: `timesteps` are original (model) timesteps.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& eps,
                          const torch::Tensor& timesteps) const override {
    check_add_noise(where_, x0, eps, timesteps, T_);
    return per_sample(sqrt_alpha_bars_, timesteps, x0) * x0 +
           per_sample(sqrt_one_minus_alpha_bars_, timesteps, x0) * eps;
  }

  std::int64_t num_steps() const override { return static_cast<std::int64_t>(timestep_map_.size()); }
  std::int64_t model_timestep(std::int64_t step) const override {
    return model_timesteps_[static_cast<std::size_t>(index_of(step))];
  }
  // p_sample's nonzero_mask: the last step (respaced index 0) returns the mean.
  bool uses_noise(std::int64_t step) const override { return index_of(step) > 0; }
  bool expects_learned_variance() const override { return learn_sigma_; }

  StepOutput step(const torch::Tensor& model_output, std::int64_t step, const torch::Tensor& x_t,
                  const torch::Tensor& noise) const override {
    const std::size_t k = static_cast<std::size_t>(index_of(step));
    check_model_output(where_, model_output, x_t, learn_sigma_);
    const bool noisy = uses_noise(step);
    check_noise(where_, step, noisy, noise, x_t);
    const Coefficients& c = coefficients_[k];

    StepOutput out;
    torch::Tensor eps = model_output;
    if (learn_sigma_) {
      const std::int64_t C = x_t.size(1);
      eps = model_output.narrow(1, 0, C);
      // v in [-1, 1] interpolates in log space between the posterior's variance (v = -1)
      // and beta (v = +1).
      const auto frac = (model_output.narrow(1, C, C) + 1) / 2;
      out.log_variance = frac * c.log_beta + (1 - frac) * c.posterior_log_variance_clipped;
    } else {
      out.log_variance = torch::full({}, c.fixed_log_variance, x_t.options()).expand_as(x_t);
    }
    out.pred_x0 = x_t * c.sqrt_recip_alphas_cumprod - eps * c.sqrt_recipm1_alphas_cumprod;
    if (clip_denoised_) out.pred_x0 = out.pred_x0.clamp(-1, 1);
    out.mean = out.pred_x0 * c.posterior_mean_coef1 + x_t * c.posterior_mean_coef2;
    out.prev_sample = noisy ? out.mean + torch::exp(0.5 * out.log_variance) * noise : out.mean;
    return out;
  }

 private:
  // One respaced index's constants, each the float32 cast of the float64 value.
  struct Coefficients {
    float sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod;
    float posterior_mean_coef1, posterior_mean_coef2;
    float log_beta, posterior_log_variance_clipped;
    float fixed_log_variance;
  };

  static torch::Tensor to_float_tensor(const std::vector<double>& values) {
    return torch::tensor(values, torch::kFloat64).to(torch::kFloat32);
  }

  // GaussianDiffusion.__init__ on the respaced betas, in float64.
  void build_posterior(const std::vector<double>& b, const std::string& fixed_variance) {
    if (fixed_variance != "fixed_small" && fixed_variance != "fixed_large")
      throw Error(where_,
                  "parameter 'fixed_variance' = '" + fixed_variance + "' is not one of: fixed_large, fixed_small");
    const std::size_t S = b.size();
    std::vector<double> acp(S), acp_prev(S), posterior_variance(S);
    double product = 1.0;
    for (std::size_t k = 0; k < S; ++k) {
      acp_prev[k] = product;
      acp[k] = product *= 1.0 - b[k];
    }
    for (std::size_t k = 0; k < S; ++k) posterior_variance[k] = b[k] * (1.0 - acp_prev[k]) / (1.0 - acp[k]);
    for (std::size_t k = 0; k < S; ++k) {
      // The posterior variance is 0 at k = 0; its log is clipped to the k = 1 value, and
      // fixed_large uses that value there too (for a better decoder likelihood).
      const double clipped_variance = k == 0 ? posterior_variance[1] : posterior_variance[k];
      const double large_variance = k == 0 ? posterior_variance[1] : b[k];
      Coefficients c;
      c.sqrt_recip_alphas_cumprod = static_cast<float>(std::sqrt(1.0 / acp[k]));
      c.sqrt_recipm1_alphas_cumprod = static_cast<float>(std::sqrt(1.0 / acp[k] - 1));
      c.posterior_mean_coef1 = static_cast<float>(b[k] * std::sqrt(acp_prev[k]) / (1.0 - acp[k]));
      c.posterior_mean_coef2 = static_cast<float>((1.0 - acp_prev[k]) * std::sqrt(1.0 - b[k]) / (1.0 - acp[k]));
      c.log_beta = static_cast<float>(std::log(b[k]));
      c.posterior_log_variance_clipped = static_cast<float>(std::log(clipped_variance));
      c.fixed_log_variance = fixed_variance == "fixed_small" ? c.posterior_log_variance_clipped
                                                             : static_cast<float>(std::log(large_variance));
      coefficients_.push_back(c);
    }
  }

  std::int64_t index_of(std::int64_t step) const {
    check_step_index(where_, step, num_steps());
    return num_steps() - 1 - step;
  }

  std::string where_;
  std::int64_t T_;
  bool learn_sigma_, clip_denoised_;
  torch::Tensor betas_, alpha_bars_, sqrt_alpha_bars_, sqrt_one_minus_alpha_bars_;  // training schedule, float32
  std::vector<std::int64_t> timestep_map_;     // respaced index -> original timestep
  std::vector<std::int64_t> model_timesteps_;  // respaced index -> timestep the model sees
  std::vector<Coefficients> coefficients_;     // by respaced index
};

}  // namespace

void register_respaced_ddpm(FactoryList& registry) {
  registry.add(
      Kind::Scheduler, "respaced-ddpm", "1.0.0",
      "guided-diffusion SpacedDiffusion ancestral sampling (p_mean_variance), e.g. DCFace's ADM FFHQ model",
      {
          ParamSpec::Int("num_train_timesteps", 1000, "T, the number of diffusion steps the model was trained with")
              .at_least(2),
          ParamSpec::String("schedule", "linear", "guided-diffusion named beta schedule").one_of({"linear", "cosine"}),
          ParamSpec::String("timestep_respacing", "",
                            "timesteps kept: \"100\", per-section counts \"10,20,30\", \"ddim50\"; empty keeps all T"),
          ParamSpec::Bool("learn_sigma", false,
                          "the model also outputs the variance value v in [-1, 1] (2C channels, learned range)"),
          ParamSpec::String("fixed_variance", "fixed_large",
                            "variance when learn_sigma is false: fixed_large (beta) or fixed_small (posterior)")
              .one_of({"fixed_large", "fixed_small"}),
          ParamSpec::Bool("clip_denoised", true, "clip the predicted x0 to [-1, 1] before the posterior mean"),
          ParamSpec::Bool("rescale_timesteps", false, "the model sees t * 1000 / T instead of t"),
      },
      [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<RespacedDdpm>(p); });
}

}  // namespace admis::schedulers
