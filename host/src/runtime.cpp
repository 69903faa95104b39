#include "admis/host/runtime.h"

#include <algorithm>

#include <fmt/format.h>

#include <iostream>
#include <thread>

#include "admis/host/distributed.h"
#include "admis/host/weights.h"

namespace admis::host {

namespace {

torch::Device parse_device(const std::string& requested) {
  // Under a launcher each worker takes the GPU of its local rank.
  const std::string text = requested == "cuda" ? rank_device(requested, dist_env_from_environment()) : requested;
  try {
    torch::Device d(text);
    if (d.is_cuda() && !torch::cuda::is_available())
      throw Error("--device", fmt::format("'{}' requested but this LibTorch has no usable CUDA device; use --device cpu",
                                          text));
    if (!d.is_cpu() && !d.is_cuda())
      throw Error("--device", fmt::format("'{}' is not supported; use cpu or cuda[:N]", text));
    return d;
  } catch (const Error&) {
    throw;
  } catch (const std::exception&) {
    throw Error("--device", fmt::format("'{}' is not a device; use cpu or cuda[:N]", text));
  }
}

}  // namespace

Runtime::Runtime(const Registry& registry, RunSettings settings)
    : registry_(registry), settings_(std::move(settings)), device_(parse_device(settings_.device)) {
  threads_ = settings_.threads > 0 ? settings_.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Subnormal floats (below ~1e-38, e.g. GELU and softmax tails of trained UNets) make x86
  // arithmetic ~100x slower; flush them to zero. Set before the intra-op pool starts, whose
  // threads inherit the floating-point mode.
  at::globalContext().setFlushDenormal(true);
  // LibTorch defaults to one intra-op thread here; set it explicitly for every run.
  torch::set_num_threads(threads_);
  torch::manual_seed(settings_.seed);
}

StateDict Runtime::read_weights(const std::string& path) { return host::read_weights(path); }

LoadReport Runtime::load_state_dict(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options,
                                    const std::string& source) {
  return host::load_state_dict(module, weights, options, source);
}

void Runtime::write_safetensors(const StateDict& tensors, const std::string& path,
                                const std::map<std::string, std::string>& metadata) {
  host::write_safetensors(tensors, path, metadata);
}

LoadOptions with_layout(LoadOptions options, const ModulePlugin& plugin) {
  const LoadOptions layout = plugin.checkpoint_layout();
  for (const auto& p : layout.strip_prefixes)
    if (std::find(options.strip_prefixes.begin(), options.strip_prefixes.end(), p) == options.strip_prefixes.end())
      options.strip_prefixes.push_back(p);
  options.ignore_keys.insert(options.ignore_keys.end(), layout.ignore_keys.begin(), layout.ignore_keys.end());
  return options;
}

std::shared_ptr<Plugin> Runtime::create(const PluginSpec& spec) {
  return create(parse_kind(spec.kind), spec.name, spec.params, spec.weights);
}

std::shared_ptr<Plugin> Runtime::create(Kind kind, const std::string& name, const std::map<std::string, Value>& raw,
                                        const std::string& weights, const LoadOptions& options,
                                        const std::string& base_dir, const std::string& where) {
  auto plugin = registry_.create(kind, name, raw, *this, base_dir, where);
  if (auto* m = dynamic_cast<ModulePlugin*>(plugin.get())) {
    if (!weights.empty()) load_state_dict(m->module(), read_weights(weights), with_layout(options, *m), weights);
    m->module().to(device_);
  } else if (!weights.empty()) {
    throw Error(fmt::format("{}/{}", to_string(kind), name), "this plugin has no weights, but a weights file was given");
  }
  return plugin;
}

void Runtime::log(LogLevel level, const std::string& who, const std::string& message) {
  if (settings_.quiet && level != LogLevel::Warning) return;
  if (level == LogLevel::Debug && !std::getenv("ADMIS_DEBUG")) return;
  const char* tag = level == LogLevel::Warning ? "warning: " : "";
  std::cerr << "[" << who << "] " << tag << message << std::endl;
}

}  // namespace admis::host
