// Sampling loop, EMA, Adam, cosine warm restarts, schedule buffers and image grids: see
// generation.h.
#include "admis/host/generation.h"

#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <unistd.h>

#include <cmath>

#include "admis/host/weights.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

// Restores train/eval mode on scope exit.
struct EvalModeGuard {
  explicit EvalModeGuard(torch::nn::Module& m) : module(m), was_training(m.is_training()) { m.eval(); }
  ~EvalModeGuard() { module.train(was_training); }
  torch::nn::Module& module;
  bool was_training;
};

}  // namespace

torch::Tensor sample_reverse(Denoiser& denoiser, const Scheduler& scheduler, const torch::Tensor& x_T,
                             const torch::Tensor& context, double guidance_scale, at::Generator& generator) {
  EvalModeGuard eval(denoiser.module());
  torch::InferenceMode inference;
  const std::int64_t n = x_T.size(0);
  const bool guided = guidance_scale != 1.0 && context.defined();
  // Classifier-free guidance: the unconditional half is the same rows with the context
  // dropped to the empty-context embedding.
  torch::Tensor guided_context, guided_mask;
  if (guided) {
    guided_context = torch::cat({context, context});
    guided_mask = torch::cat({torch::zeros({n}, torch::kBool), torch::ones({n}, torch::kBool)}).to(x_T.device());
  }
  torch::Tensor x = x_T;
  for (std::int64_t i = 0; i < scheduler.num_steps(); ++i) {
    const torch::Tensor t = torch::full({n}, scheduler.model_timestep(i), torch::TensorOptions(torch::kInt64).device(x.device()));
    torch::Tensor model_output;
    if (guided) {
      const torch::Tensor both = denoiser.forward(torch::cat({x, x}), torch::cat({t, t}), guided_context, guided_mask);
      const torch::Tensor conditional = both.slice(0, 0, n), unconditional = both.slice(0, n);
      const std::int64_t c = x.size(1);  // guide eps only; a learned variance comes from the conditional half
      const torch::Tensor eps = (1 - guidance_scale) * unconditional.slice(1, 0, c) + guidance_scale * conditional.slice(1, 0, c);
      model_output = conditional.size(1) > c ? torch::cat({eps, conditional.slice(1, c)}, 1) : eps;
    } else {
      model_output = denoiser.forward(x, t, context);
    }
    torch::Tensor noise;
    if (scheduler.uses_noise(i))
      noise = at::randn(x.sizes(), generator, torch::TensorOptions(torch::kFloat32)).to(x.device());
    x = scheduler.step(model_output, i, x, noise).prev_sample;
  }
  return x;
}

ExponentialMovingAverage::ExponentialMovingAverage(torch::nn::Module& model, EmaOptions options) : options_(options) {
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : module_state_dict(model)) averaged_[name] = tensor.detach().clone();
}

double ExponentialMovingAverage::decay(std::int64_t optimization_step) const {
  const std::int64_t step = std::max<std::int64_t>(0, optimization_step - options_.update_after_step - 1);
  if (step <= 0) return 0.0;
  const double value = 1 - std::pow(1 + static_cast<double>(step) / options_.inv_gamma, -options_.power);
  return std::max(options_.min_value, std::min(value, options_.max_value));
}

void ExponentialMovingAverage::step(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  const double d = decay(optimization_step_);
  for (const auto& p : model.named_parameters()) {
    torch::Tensor& avg = averaged_.at(p.key());
    if (!p.value().requires_grad()) avg.copy_(p.value());
    else avg.mul_(d).add_(p.value().detach(), 1 - d);
  }
  for (const auto& b : model.named_buffers()) averaged_.at(b.key()).copy_(b.value());
  ++optimization_step_;
}

void ExponentialMovingAverage::load(const StateDict& averaged, const std::string& source) {
  for (auto& [name, tensor] : averaged_) {
    auto it = averaged.find(name);
    if (it == averaged.end()) throw Error(source, fmt::format("the EMA weights have no '{}'", name));
    if (!it->second.sizes().equals(tensor.sizes()))
      throw Error(source, fmt::format("EMA '{}' has shape [{}], the model [{}]", name, fmt::join(it->second.sizes(), ","),
                                      fmt::join(tensor.sizes(), ",")));
    tensor.copy_(it->second);
  }
}

Adam::Adam(std::vector<std::pair<std::string, torch::Tensor>> named_parameters, double beta1, double beta2, double eps)
    : params_(std::move(named_parameters)), beta1_(beta1), beta2_(beta2), eps_(eps),
      exp_avg_(params_.size()), exp_avg_sq_(params_.size()), steps_(params_.size(), 0) {}

void Adam::zero_grad() {
  for (auto& [name, p] : params_)
    if (p.grad().defined()) p.mutable_grad().zero_();
}

void Adam::step(double lr) {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor& p = params_[i].second;
    if (!p.grad().defined()) continue;
    const torch::Tensor g = p.grad();
    if (!exp_avg_[i].defined()) {
      exp_avg_[i] = torch::zeros_like(p);
      exp_avg_sq_[i] = torch::zeros_like(p);
    }
    const std::int64_t step = ++steps_[i];
    exp_avg_[i].mul_(beta1_).add_(g, 1 - beta1_);
    exp_avg_sq_[i].mul_(beta2_).addcmul_(g, g, 1 - beta2_);
    const double bias_correction1 = 1 - std::pow(beta1_, static_cast<double>(step));
    const double bias_correction2 = 1 - std::pow(beta2_, static_cast<double>(step));
    const torch::Tensor denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bias_correction2)).add_(eps_);
    p.addcdiv_(exp_avg_[i], denom, -lr / bias_correction1);
  }
}

StateDict Adam::state() const {
  StateDict out;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!exp_avg_[i].defined()) continue;
    const std::string& name = params_[i].first;
    out["exp_avg." + name] = exp_avg_[i].detach().to(torch::kCPU).contiguous();
    out["exp_avg_sq." + name] = exp_avg_sq_[i].detach().to(torch::kCPU).contiguous();
    out["step." + name] = torch::tensor(steps_[i], torch::kInt64);
  }
  return out;
}

void Adam::load_state(const StateDict& state, const std::string& source) {
  std::size_t used = 0;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    auto m = state.find("exp_avg." + name), v = state.find("exp_avg_sq." + name), s = state.find("step." + name);
    if (m == state.end() || v == state.end() || s == state.end()) {
      exp_avg_[i] = exp_avg_sq_[i] = torch::Tensor();
      steps_[i] = 0;
      continue;
    }
    if (!m->second.sizes().equals(p.sizes()) || !v->second.sizes().equals(p.sizes()))
      throw Error(source, fmt::format("Adam state of '{}' has shape [{}], the parameter [{}]", name,
                                      fmt::join(m->second.sizes(), ","), fmt::join(p.sizes(), ",")));
    exp_avg_[i] = m->second.to(p.device(), p.scalar_type()).clone();
    exp_avg_sq_[i] = v->second.to(p.device(), p.scalar_type()).clone();
    steps_[i] = s->second.item<std::int64_t>();
    used += 3;
  }
  if (used != state.size())
    throw Error(source, fmt::format("{} optimizer tensors belong to parameters this model does not have", state.size() - used));
}

bool LossScaler::unscale(const std::vector<torch::Tensor>& parameters) const {
  torch::NoGradGuard no_grad;
  bool finite = true;
  for (const auto& p : parameters) {
    if (!p.grad().defined()) continue;
    p.grad().div_(scale_);
    finite = finite && torch::isfinite(p.grad()).all().item<bool>();
  }
  return finite;
}

void LossScaler::update(bool finite) {
  if (!finite) {
    scale_ *= 0.5;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ == growth_interval_) {
    scale_ *= 2.0;
    growth_tracker_ = 0;
  }
}

void CosineWarmRestarts::position(std::int64_t step, std::int64_t& t_cur, std::int64_t& t_i) const {
  t_cur = step;
  t_i = t_0;
  while (t_cur >= t_i) {
    t_cur -= t_i;
    t_i *= t_mult;
  }
}

double CosineWarmRestarts::at(std::int64_t step) const {
  std::int64_t t_cur = 0, t_i = 0;
  position(step, t_cur, t_i);
  return eta_min + (base_lr - eta_min) * (1 + std::cos(M_PI * static_cast<double>(t_cur) / static_cast<double>(t_i))) / 2;
}

StateDict ddpm_schedule_buffers(const torch::Tensor& betas_in) {
  const torch::Tensor betas = betas_in.to(torch::kFloat32).contiguous();
  const torch::Tensor alphas = 1 - betas;
  const torch::Tensor alpha_bars = torch::cumsum(torch::log(alphas), 0).exp();
  const torch::Tensor sqrt_one_minus_alpha_bars = (1 - alpha_bars).sqrt();
  return {
      {"betas", betas},
      {"alphas", alphas},
      {"sigmas", betas.sqrt()},
      {"sqrt_alphas_inv", 1 / alphas.sqrt()},
      {"alpha_bars", alpha_bars},
      {"sqrt_alpha_bars", alpha_bars.sqrt()},
      {"sqrt_one_minus_alpha_bars", sqrt_one_minus_alpha_bars},
      {"one_minus_alphas_over_sqrt_one_minus_alpha_bars", (1 - alphas) / sqrt_one_minus_alpha_bars},
  };
}

torch::Tensor to_uint8_image(const torch::Tensor& image) {
  return image.detach().to(torch::kCPU, torch::kFloat32).mul(255).add_(0.5).clamp_(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
}

void write_png(const torch::Tensor& image, const std::string& path) {
  const torch::Tensor rgb = image.contiguous();
  cv::Mat view(static_cast<int>(rgb.size(0)), static_cast<int>(rgb.size(1)), CV_8UC3, rgb.data_ptr());
  cv::Mat bgr;
  cv::cvtColor(view, bgr, cv::COLOR_RGB2BGR);
  if (!cv::imwrite(path, bgr)) throw Error(path, "cannot write the PNG image");
}

void save_image_grid(const torch::Tensor& images, std::int64_t per_row, const std::string& path, std::int64_t padding,
                     double pad_value) {
  if (images.dim() != 4 || images.size(1) != 3 || images.size(0) == 0)
    throw Error(path, "an image grid needs images [N,3,H,W]");
  const std::int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  const std::int64_t cols = std::min(per_row, n), rows = (n + cols - 1) / cols;
  torch::Tensor grid = torch::full({3, rows * (h + padding) + padding, cols * (w + padding) + padding}, pad_value);
  for (std::int64_t k = 0; k < n; ++k) {
    const std::int64_t y = (k / cols) * (h + padding) + padding, x = (k % cols) * (w + padding) + padding;
    grid.slice(1, y, y + h).slice(2, x, x + w).copy_(images[k].to(torch::kCPU, torch::kFloat32));
  }
  const fs::path target(path);
  fs::create_directories(target.parent_path().empty() ? fs::path(".") : target.parent_path());
  const std::string tmp = (target.parent_path() / fmt::format(".{}.tmp-{}.png", target.filename().string(), ::getpid())).string();
  write_png(to_uint8_image(grid), tmp);
  fs::rename(tmp, target);
}

}  // namespace admis::host
