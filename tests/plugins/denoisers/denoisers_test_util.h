#pragma once
// Helpers shared by the denoiser tests: creating idiff-unet with named parameters, the
// parity fixtures of generative_shared.json (their constructor arguments, weights and
// inputs), a small configuration for fast tests, and seeded non-trivial weights.

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "support/support.h"

namespace admis::test::denoisers {

using ParamMap = std::map<std::string, Value>;

inline std::shared_ptr<Denoiser> make_unet(const ParamMap& params = {}, const std::string& weights = "") {
  auto p = std::dynamic_pointer_cast<Denoiser>(runtime().create(Kind::Denoiser, "idiff-unet", params, weights));
  if (!p) throw Error("idiff-unet", "plugin does not implement Denoiser");
  return p;
}

// generative_shared.json: the constructor shared by idiff_unet_ca/adagn/uncond and
// ddim_trajectory, differing only in condition_type and is_context_conditional.
inline ParamMap fixture_params(const std::string& condition_type, bool conditional) {
  return {{"input_channels", Value(3)},
          {"initial_channels", Value(32)},
          {"channel_multipliers", Value(std::vector<std::int64_t>{1, 2, 2})},
          {"is_attention", Value(std::vector<bool>{false, true, true})},
          {"attention_heads", Value(-1)},
          {"attention_head_channels", Value(32)},
          {"n_blocks_per_resolution", Value(2)},
          {"context_input_channels", Value(512)},
          {"context_channels", Value(64)},
          {"n_context_classes", Value(0)},
          {"learn_empty_context", Value(false)},
          {"context_dropout_probability", Value(0.25)},
          {"condition_type", Value(condition_type)},
          {"is_context_conditional", Value(conditional)}};
}

// A fixture's UNet with its checkpoint loaded through the host (checkpoint_layout strips
// 'eps_model.' and skips the DDPM schedule buffers), in eval mode.
inline std::shared_ptr<Denoiser> fixture_unet(const std::string& condition_type, bool conditional,
                                              const std::string& ckpt) {
  auto unet = make_unet(fixture_params(condition_type, conditional), parity_file(ckpt));
  unet->module().eval();
  return unet;
}

inline const StateDict& fixture_io(const std::string& file) {
  static std::map<std::string, StateDict> cache;
  auto it = cache.find(file);
  if (it == cache.end()) it = cache.emplace(file, host::read_safetensors(parity_file(file))).first;
  return it->second;
}

// generative_shared.json: eps max abs diff <= 1e-4 * max(1, max|eps|); samples 1e-3.
inline double tolerance(const torch::Tensor& expected, double factor) {
  return factor * std::max(1.0, expected.abs().max().item<double>());
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// A small configuration (two resolutions) for behaviour tests.
inline ParamMap small_params(const std::string& condition_type, ParamMap extra = {}) {
  ParamMap p = {{"initial_channels", Value(32)},
                {"channel_multipliers", Value(std::vector<std::int64_t>{1, 2})},
                {"is_attention", Value(std::vector<bool>{false, true})},
                {"n_blocks_per_resolution", Value(1)},
                {"context_input_channels", Value(16)},
                {"context_channels", Value(32)},
                {"condition_type", Value(condition_type)}};
  for (auto& [k, v] : extra) p[k] = v;
  return p;
}

// The reference zero-initialises every output path (conv2, x_proj_out, final), so a fresh
// network predicts 0 whatever its inputs: overwrite every parameter with seeded values so
// that each one shapes the output.
inline void randomize(Denoiser& unet, std::uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : unet.module().named_parameters()) {
    const bool norm_scale = p.key().find("norm") != std::string::npos && p.key().size() > 7 &&
                            p.key().compare(p.key().size() - 7, 7, ".weight") == 0;
    if (norm_scale) {
      p.value().uniform_(0.8, 1.2);
    } else {
      const double fan_in = p.value().dim() > 1 ? static_cast<double>(p.value().numel() / p.value().size(0)) : 16.0;
      p.value().normal_(0.0, 1.0 / std::sqrt(fan_in));
    }
  }
}

}  // namespace admis::test::denoisers
