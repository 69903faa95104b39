#include "admis/host/forward.h"

#include <fmt/format.h>

#include "admis/host/text.h"

namespace admis::host {

namespace {

const torch::Tensor& need(const StateDict& in, const std::string& name, const std::string& who) {
  auto it = in.find(name);
  if (it == in.end()) {
    std::vector<std::string> have;
    for (const auto& [k, v] : in) have.push_back(k);
    throw Error(who, fmt::format("input tensor '{}' is missing; the input file has: {}", name,
                                 have.empty() ? "(nothing)" : join(have, ", ")));
  }
  return it->second;
}

torch::Tensor optional(const StateDict& in, const std::string& name) {
  auto it = in.find(name);
  return it == in.end() ? torch::Tensor() : it->second;
}

torch::Tensor as_float(const torch::Tensor& t, torch::Device device) { return t.to(device, torch::kFloat32); }

}  // namespace

StateDict forward_plugin(Plugin& plugin, const StateDict& inputs, const std::string& who) {
  StateDict out;
  torch::Device device = torch::kCPU;
  if (auto* m = dynamic_cast<ModulePlugin*>(&plugin)) {
    m->module().eval();
    for (const auto& p : m->module().parameters()) {
      device = p.device();
      break;
    }
  }
  auto cpu = [](const torch::Tensor& t) { return t.defined() ? t.detach().to(torch::kCPU).contiguous() : t; };
  torch::NoGradGuard no_grad;
  switch (plugin.kind()) {
    case Kind::Backbone: {
      auto& b = dynamic_cast<Backbone&>(plugin);
      out["output"] = cpu(b.forward(as_float(need(inputs, "input", who), device)));
      break;
    }
    case Kind::Head: {
      auto& h = dynamic_cast<Head&>(plugin);
      HeadOutput r = h.forward(as_float(need(inputs, "embeddings", who), device),
                               need(inputs, "labels", who).to(device, torch::kInt64));
      out["logits"] = cpu(r.logits);
      out["original_logits"] = cpu(r.original_logits);
      break;
    }
    case Kind::Denoiser: {
      auto& d = dynamic_cast<Denoiser&>(plugin);
      torch::Tensor context = optional(inputs, "context");
      torch::Tensor mask = optional(inputs, "dropout_mask");
      out["output"] = cpu(d.forward(as_float(need(inputs, "x", who), device), need(inputs, "t", who).to(device, torch::kInt64),
                                    context.defined() ? as_float(context, device) : context,
                                    mask.defined() ? mask.to(device, torch::kBool) : mask));
      break;
    }
    case Kind::Codec: {
      auto& c = dynamic_cast<Codec&>(plugin);
      if (inputs.count("image")) out["latent"] = cpu(c.encode(as_float(inputs.at("image"), device)));
      else if (inputs.count("latent")) out["decoded"] = cpu(c.decode(as_float(inputs.at("latent"), device)));
      else throw Error(who, "a codec needs an input tensor named 'image' (to encode) or 'latent' (to decode)");
      break;
    }
    case Kind::Scheduler: {
      auto& s = dynamic_cast<Scheduler&>(plugin);
      out["betas"] = cpu(s.betas());
      out["alpha_bars"] = cpu(s.alpha_bars());
      std::vector<std::int64_t> timesteps;
      for (std::int64_t i = 0; i < s.num_steps(); ++i) timesteps.push_back(s.model_timestep(i));
      out["model_timesteps"] = torch::tensor(timesteps, torch::kInt64);
      if (inputs.count("model_output")) {
        const std::int64_t step = need(inputs, "step", who).item<std::int64_t>();
        if (step < 0 || step >= s.num_steps())
          throw Error(who, fmt::format("input 'step' = {} is outside 0..{}", step, s.num_steps() - 1));
        StepOutput r = s.step(as_float(inputs.at("model_output"), torch::kCPU), step, as_float(need(inputs, "x_t", who), torch::kCPU),
                              inputs.count("noise") ? as_float(inputs.at("noise"), torch::kCPU) : torch::Tensor());
        out["prev_sample"] = cpu(r.prev_sample);
        if (r.pred_x0.defined()) out["pred_x0"] = cpu(r.pred_x0);
        if (r.mean.defined()) out["mean"] = cpu(r.mean);
        if (r.log_variance.defined()) out["log_variance"] = cpu(r.log_variance);
      }
      break;
    }
    default:
      throw Error(who, fmt::format("forward runs backbones, heads, denoisers, codecs and schedulers, not {} plugins",
                                   to_string(plugin.kind())));
  }
  return out;
}

}  // namespace admis::host
