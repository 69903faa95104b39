#pragma once
// The host services handed to plugins: weights I/O, nested creation, logging, settings.

#include <memory>
#include <string>

#include "admis/host/registry.h"
#include "admis/sdk/host.h"

namespace admis::host {

struct RunSettings {
  int threads = 0;  // 0: all cores
  std::string device = "cpu";
  std::uint64_t seed = 0;
  bool quiet = false;
};

// `options` plus the plugin's own checkpoint_layout() (its reference's wrapper prefixes
// and wrapper-only keys), so released checkpoints load as the reference saved them.
LoadOptions with_layout(LoadOptions options, const ModulePlugin& plugin);

class Runtime : public Host {
 public:
  Runtime(const Registry& registry, RunSettings settings);

  StateDict read_weights(const std::string& path) override;
  LoadReport load_state_dict(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options,
                             const std::string& source) override;
  void write_safetensors(const StateDict& tensors, const std::string& path,
                         const std::map<std::string, std::string>& metadata) override;
  std::shared_ptr<Plugin> create(const PluginSpec& spec) override;
  void log(LogLevel level, const std::string& who, const std::string& message) override;
  torch::Device device() const override { return device_; }
  int threads() const override { return threads_; }
  std::uint64_t seed() const override { return settings_.seed; }

  const Registry& registry() const { return registry_; }
  // Creates a plugin from raw manifest values, moves ModulePlugins to the device and loads
  // `weights` (strictly, with `options`) when given.
  std::shared_ptr<Plugin> create(Kind kind, const std::string& name, const std::map<std::string, Value>& raw,
                                 const std::string& weights = "", const LoadOptions& options = {},
                                 const std::string& base_dir = "", const std::string& where = "");

 private:
  const Registry& registry_;
  RunSettings settings_;
  torch::Device device_;
  int threads_;
};

}  // namespace admis::host
