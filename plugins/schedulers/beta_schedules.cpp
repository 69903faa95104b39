#include "beta_schedules.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "admis/sdk/error.h"

namespace admis::schedulers {
namespace {

constexpr double kPi = 3.14159265358979323846;  // math.pi

// Python's float `**` is C pow; using it (not x*x) keeps the last bit identical.
double py_pow(double x, double y) { return std::pow(x, y); }

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t");
  return s.substr(first, last - first + 1);
}

std::int64_t parse_count(const std::string& text, const std::string& respacing, const std::string& where) {
  const std::string t = trim(text);
  std::size_t used = 0;
  std::int64_t value = 0;
  try {
    value = std::stoll(t, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (t.empty() || used != t.size())
    throw Error(where, "parameter 'timestep_respacing' = '" + respacing + "': '" + text +
                           "' is not a step count (write \"100\", \"10,20,30\" or \"ddim50\")");
  if (value < 1)
    throw Error(where, "parameter 'timestep_respacing' = '" + respacing + "': step counts must be at least 1");
  return value;
}

}  // namespace

torch::Tensor idiff_betas(std::int64_t T, const std::string& schedule, double k, double beta_min, double beta_max,
                          const std::string& where) {
  if (schedule == "linear") {
    // Ho et al.'s 1e-4 .. 0.02 over 1000 steps, stretched so other T keep the same
    // total noise.
    const double scale = 1000.0 / static_cast<double>(T);
    return torch::linspace(scale * 0.0001, scale * 0.02, T, torch::kFloat32);
  }
  if (schedule == "cosine" || schedule == "cosine_warped") {
    // Nichol & Dhariwal's cosine alpha_bar; IDiff-Face's "warped" variant raises the
    // (1+s) denominator to k and clips betas from below as well. Plain cosine is k = 1,
    // beta_min = 0 whatever the parameters say, as in the reference.
    const double s = 0.008;
    const bool warped = schedule == "cosine_warped";
    const double kk = warped ? k : 1.0;
    const double lo = warped ? beta_min : 0.0;
    const auto alpha_bar = [&](double t) { return py_pow(std::cos(kPi / 2 * (t + s) / py_pow(1 + s, kk)), 2.0); };
    std::vector<float> betas(static_cast<std::size_t>(T));
    for (std::int64_t i = 0; i < T; ++i) {
      const double t1 = static_cast<double>(i) / static_cast<double>(T);
      const double t2 = static_cast<double>(i + 1) / static_cast<double>(T);
      const double beta = std::min(std::max(1 - alpha_bar(t2) / alpha_bar(t1), lo), beta_max);
      betas[static_cast<std::size_t>(i)] = static_cast<float>(beta);  // torch.tensor(list).float()
    }
    return torch::tensor(betas, torch::kFloat32);
  }
  throw Error(where, "parameter 'schedule' = '" + schedule + "' is not one of: linear, cosine, cosine_warped");
}

IdiffSchedule idiff_schedule(const torch::Tensor& betas) {
  IdiffSchedule s;
  s.betas = betas;
  s.alphas = 1 - betas;
  s.sqrt_alphas_inv = 1 / s.alphas.sqrt();
  s.sigmas = betas.sqrt();
  // The reference accumulates in log space; cumprod would round differently.
  s.alpha_bars = torch::cumsum(torch::log(s.alphas), 0).exp();
  s.sqrt_alpha_bars = s.alpha_bars.sqrt();
  s.sqrt_one_minus_alpha_bars = (1 - s.alpha_bars).sqrt();
  s.one_minus_alphas_over_sqrt_one_minus_alpha_bars = (1 - s.alphas) / s.sqrt_one_minus_alpha_bars;
  return s;
}

std::vector<double> guided_betas(std::int64_t T, const std::string& schedule, const std::string& where) {
  std::vector<double> betas(static_cast<std::size_t>(T));
  if (schedule == "linear") {
    const double scale = 1000.0 / static_cast<double>(T);
    const double start = scale * 0.0001, stop = scale * 0.02;
    // numpy.linspace: start + i * ((stop - start) / (T - 1)), the last entry exactly stop.
    const double step = T > 1 ? (stop - start) / static_cast<double>(T - 1) : 0.0;
    for (std::int64_t i = 0; i < T; ++i) betas[static_cast<std::size_t>(i)] = static_cast<double>(i) * step + start;
    if (T > 1) betas.back() = stop;
    return betas;
  }
  if (schedule == "cosine") {
    const auto alpha_bar = [](double t) { return py_pow(std::cos((t + 0.008) / 1.008 * kPi / 2), 2.0); };
    for (std::int64_t i = 0; i < T; ++i) {
      const double t1 = static_cast<double>(i) / static_cast<double>(T);
      const double t2 = static_cast<double>(i + 1) / static_cast<double>(T);
      betas[static_cast<std::size_t>(i)] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999);
    }
    return betas;
  }
  throw Error(where, "parameter 'schedule' = '" + schedule + "' is not one of: linear, cosine");
}

std::vector<std::int64_t> space_timesteps(std::int64_t T, const std::string& respacing, const std::string& where) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) all[static_cast<std::size_t>(t)] = t;
  const std::string spec = trim(respacing);
  if (spec.empty()) return all;  // guided-diffusion: "" means no respacing

  if (spec.rfind("ddim", 0) == 0) {
    // The DDIM paper's fixed striding: the one integer stride giving exactly N steps.
    const std::int64_t desired = parse_count(spec.substr(4), respacing, where);
    for (std::int64_t stride = 1; stride < T; ++stride) {
      if ((T + stride - 1) / stride == desired) {
        std::vector<std::int64_t> steps;
        for (std::int64_t t = 0; t < T; t += stride) steps.push_back(t);
        return steps;
      }
    }
    throw Error(where, "parameter 'timestep_respacing' = '" + respacing + "': cannot create exactly " +
                           std::to_string(desired) +
                           " steps with an integer stride over num_train_timesteps = " + std::to_string(T));
  }

  std::vector<std::int64_t> counts;
  std::stringstream in(spec);
  for (std::string item; std::getline(in, item, ',');) counts.push_back(parse_count(item, respacing, where));
  if (counts.empty() || spec.back() == ',')
    throw Error(where, "parameter 'timestep_respacing' = '" + respacing + "' has an empty section count");

  // T is cut into len(counts) nearly equal sections (the first T % len one step longer);
  // section i keeps counts[i] steps spaced by a fractional stride, rounded half to even
  // like Python's round().
  const auto sections = static_cast<std::int64_t>(counts.size());
  if (sections > T)
    throw Error(where, "parameter 'timestep_respacing' = '" + respacing + "' has more sections than the " +
                           std::to_string(T) + " training timesteps");
  const std::int64_t size_per = T / sections, extra = T % sections;
  std::set<std::int64_t> kept;
  std::int64_t start = 0;
  for (std::int64_t i = 0; i < sections; ++i) {
    const std::int64_t size = size_per + (i < extra ? 1 : 0);
    const std::int64_t count = counts[static_cast<std::size_t>(i)];
    if (size < count)
      throw Error(where, "parameter 'timestep_respacing' = '" + respacing + "': cannot divide section of " +
                             std::to_string(size) + " steps into " + std::to_string(count) +
                             " (num_train_timesteps = " + std::to_string(T) + ")");
    const double stride = count <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
    double position = 0.0;
    for (std::int64_t j = 0; j < count; ++j) {
      kept.insert(start + static_cast<std::int64_t>(std::nearbyint(position)));
      position += stride;
    }
    start += size;
  }
  return std::vector<std::int64_t>(kept.begin(), kept.end());
}

}  // namespace admis::schedulers
