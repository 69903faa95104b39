#pragma once
// Helpers shared by the scheduler tests: creating a scheduler with named parameters,
// reading the parity fixtures, deterministic inputs that do not depend on any random
// generator, and the sampling loop of kinds.h.

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "support/support.h"

namespace admis::test::schedulers {

using ParamMap = std::map<std::string, Value>;

inline std::shared_ptr<Scheduler> make_scheduler(const std::string& name, const ParamMap& params = {}) {
  return create<Scheduler>(Kind::Scheduler, name, params);
}

inline const torch::Tensor& fixture(const std::string& file, const std::string& key) {
  static std::map<std::string, StateDict> cache;
  auto it = cache.find(file);
  if (it == cache.end()) it = cache.emplace(file, host::read_safetensors(parity_file(file))).first;
  auto t = it->second.find(key);
  if (t == it->second.end()) throw Error(file, "fixture has no tensor '" + key + "'");
  return t->second;
}
// generative_shared.json, ddim_trajectory.
inline const torch::Tensor& ddim_io(const std::string& key) { return fixture("ddim_trajectory_io.safetensors", key); }
// adm_shared.json, adm_ffhq_unet.
inline const torch::Tensor& adm_io(const std::string& key) { return fixture("adm_ffhq_unet_io.safetensors", key); }

// |actual - expected| <= rtol * |expected| elementwise; reports the worst element.
inline ::testing::AssertionResult relative_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                                 double rtol) {
  if (!actual.defined() || !expected.defined()) return ::testing::AssertionFailure() << "undefined tensor";
  if (actual.sizes() != expected.sizes())
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " vs expected " << expected.sizes();
  const auto a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  const auto ratio = (a - e).abs() / e.abs();
  const auto worst = ratio.argmax().item<std::int64_t>();
  const double r = ratio.flatten()[worst].item<double>();
  if (r <= rtol) return ::testing::AssertionSuccess() << "max relative diff " << r;
  return ::testing::AssertionFailure() << "relative diff " << r << " at index " << worst << " ("
                                       << a.flatten()[worst].item<double>() << " vs expected "
                                       << e.flatten()[worst].item<double>() << ") exceeds " << rtol;
}

// The tolerance the fixtures state for tensors: max abs diff <= 1e-4 * max(1, max|value|).
inline double fixture_tolerance(const torch::Tensor& expected, double factor = 1e-4) {
  return factor * std::max(1.0, expected.abs().max().item<double>());
}

// A smooth, generator-free input: amplitude * sin(frequency * k + phase) over the
// elements k = 0, 1, ... of `shape`, float32.
inline torch::Tensor pattern(torch::IntArrayRef shape, double frequency, double phase, double amplitude = 1.0) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return (amplitude * torch::sin(torch::arange(n, torch::kFloat64) * frequency + phase))
      .to(torch::kFloat32)
      .view(shape);
}

using EpsFunction = std::function<torch::Tensor(const torch::Tensor& x, std::int64_t t)>;
using NoiseFunction = std::function<torch::Tensor(std::int64_t step)>;

// The loop of kinds.h: x = x_T; x = step(model(x, model_timestep(i)), i, x, z_i). z_i is
// only asked for the steps that use noise.
inline torch::Tensor sample(const Scheduler& scheduler, torch::Tensor x, const EpsFunction& model,
                            const NoiseFunction& noise = {}) {
  for (std::int64_t i = 0; i < scheduler.num_steps(); ++i) {
    const torch::Tensor z = scheduler.uses_noise(i) ? noise(i) : torch::Tensor();
    x = scheduler.step(model(x, scheduler.model_timestep(i)), i, x, z).prev_sample;
  }
  return x;
}

// The stand-in denoiser of the ddim-admis reference-loop golden (see
// ddim_admis_reference_loop.py): eps(x, t) = 0.1 tanh(x) + t / 1000 in float32.
inline torch::Tensor analytic_eps(const torch::Tensor& x, std::int64_t t) {
  return 0.1 * torch::tanh(x) + static_cast<double>(t) / 1000.0;
}

}  // namespace admis::test::schedulers
