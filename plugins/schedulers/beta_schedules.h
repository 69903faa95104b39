#pragma once
// Noise schedules exactly as the two reference code bases compute them. The two differ in
// precision on purpose: IDiff-Face/ADMIS builds its schedule in float32 torch tensors,
// guided-diffusion in float64 numpy arrays. Reproducing each bit for bit is what lets a
// checkpoint trained with one of them sample the same images here.

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace admis::schedulers {

// IDiff-Face / ADMIS `compute_beta_schedule` (generative_model_training/diffusion/ddpm.py).
//   linear:        scale = 1000/T, linspace(scale*1e-4, scale*0.02, T) in float32
//   cosine:        betas_for_alpha_bar with alpha_bar(t) = cos(pi/2 (t+s)/(1+s))^2, s = 0.008,
//                  beta_min = 0, clipped above at beta_max
//   cosine_warped: the same with (1+s)^k in the denominator and betas clipped to
//                  [beta_min, beta_max]
// Returns float32 [T]. `where` names the plugin in errors.
torch::Tensor idiff_betas(std::int64_t T, const std::string& schedule, double k, double beta_min, double beta_max,
                          const std::string& where);

// The constants IDiff-Face's `precompute_schedule_constants` derives from the betas, all
// float32 [T] and in the same operation order as the reference.
struct IdiffSchedule {
  torch::Tensor betas;
  torch::Tensor alphas;                                           // 1 - beta
  torch::Tensor sigmas;                                           // sqrt(beta)
  torch::Tensor sqrt_alphas_inv;                                  // 1 / sqrt(alpha)
  torch::Tensor alpha_bars;                                       // exp(cumsum(log(alpha)))
  torch::Tensor sqrt_alpha_bars;                                  // sqrt(alpha_bar)
  torch::Tensor sqrt_one_minus_alpha_bars;                        // sqrt(1 - alpha_bar)
  torch::Tensor one_minus_alphas_over_sqrt_one_minus_alpha_bars;  // (1 - alpha) / sqrt(1 - alpha_bar)
};
IdiffSchedule idiff_schedule(const torch::Tensor& betas);

// guided-diffusion `get_named_beta_schedule`, float64:
//   linear: scale = 1000/T, numpy linspace(scale*1e-4, scale*0.02, T)
//   cosine: improved-DDPM betas_for_alpha_bar, alpha_bar(t) = cos((t+0.008)/1.008 pi/2)^2,
//           betas clipped at 0.999
std::vector<double> guided_betas(std::int64_t T, const std::string& schedule, const std::string& where);

// guided-diffusion `space_timesteps`: the original timesteps kept by a respacing such as
// "100" (evenly strided), "10,20,30" (per-section counts over equal thirds) or "ddim50"
// (the integer stride that yields exactly 50 steps). An empty string keeps all T.
// Returned sorted ascending (the reference returns a set, iterated in order later).
std::vector<std::int64_t> space_timesteps(std::int64_t T, const std::string& respacing, const std::string& where);

}  // namespace admis::schedulers
