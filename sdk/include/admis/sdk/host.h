#pragma once
// Services the host offers to plugins at creation time: weights I/O (the torch.save
// reader and safetensors live in the host, so every plugin loads checkpoints the same
// way), nested plugin creation for composite plugins, logging and the run's settings.

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admis/sdk/kinds.h"
#include "admis/sdk/params.h"

namespace admis {

using StateDict = std::map<std::string, torch::Tensor>;

struct LoadReport {
  std::vector<std::string> missing;     // in the module, not in the checkpoint
  std::vector<std::string> unexpected;  // in the checkpoint, not in the module
  std::vector<std::string> mismatched;  // "key: checkpoint [a, b] vs module [c, d]"
  std::size_t loaded = 0;
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
};

enum class LogLevel { Debug, Info, Warning };

class ADMIS_SDK_API Host {
 public:
  virtual ~Host() = default;

  // Reads a torch.save zip checkpoint (.pt/.pth/.ckpt) or a .safetensors file. A nested
  // {'state_dict': ...} is unwrapped. Tensors come back on the CPU in their stored dtype.
  virtual StateDict read_weights(const std::string& path) = 0;
  // Copies `weights` into `module` (converting dtype). Strict loading throws admis::Error
  // listing every missing, unexpected and mismatched key by name.
  virtual LoadReport load_state_dict(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options,
                                     const std::string& source) = 0;
  virtual void write_safetensors(const StateDict& tensors, const std::string& path,
                                 const std::map<std::string, std::string>& metadata = {}) = 0;

  // Creates a nested plugin (a Plugin-typed parameter), loading its weights if given.
  virtual std::shared_ptr<Plugin> create(const PluginSpec& spec) = 0;

  virtual void log(LogLevel level, const std::string& who, const std::string& message) = 0;
  virtual torch::Device device() const = 0;
  virtual int threads() const = 0;
  virtual std::uint64_t seed() const = 0;

  template <class T>
  std::shared_ptr<T> create_as(const PluginSpec& spec) {
    auto p = std::dynamic_pointer_cast<T>(create(spec));
    if (!p) throw Error(spec.kind + "/" + spec.name, "plugin does not implement the requested interface");
    return p;
  }
};

}  // namespace admis
