#pragma once
// The plugin kinds and their contracts (DESIGN.md section 4). Tensors are float32 NCHW
// unless said otherwise. Plugins that hold weights expose their torch::nn::Module, whose
// parameter and buffer names are the reference implementation's state-dict keys, so the
// host can load released checkpoints, move the module to a device, switch train/eval
// mode and hand its parameters to an optimizer.

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "admis/sdk/error.h"

namespace admis {

enum class Kind { Backbone, Head, Denoiser, Scheduler, Codec, ContextSource, Augmenter, DatasetWriter, DatasetReader };

inline const char* to_string(Kind k) {
  switch (k) {
    case Kind::Backbone: return "backbone";
    case Kind::Head: return "head";
    case Kind::Denoiser: return "denoiser";
    case Kind::Scheduler: return "scheduler";
    case Kind::Codec: return "codec";
    case Kind::ContextSource: return "context-source";
    case Kind::Augmenter: return "augmenter";
    case Kind::DatasetWriter: return "dataset-writer";
    case Kind::DatasetReader: return "dataset-reader";
  }
  return "?";
}

inline const std::vector<Kind>& all_kinds() {
  static const std::vector<Kind> kinds = {Kind::Backbone, Kind::Head,          Kind::Denoiser,
                                          Kind::Scheduler, Kind::Codec,        Kind::ContextSource,
                                          Kind::Augmenter, Kind::DatasetWriter, Kind::DatasetReader};
  return kinds;
}

// Options for copying a checkpoint's tensors into a module (see Host::load_state_dict).
struct LoadOptions {
  bool strict = true;
  std::vector<std::string> strip_prefixes;  // removed from the start of checkpoint keys, in order
  std::vector<std::string> ignore_keys;     // checkpoint keys (after stripping) that are not loaded
};

// Every object a plugin creates derives from Plugin; it is destroyed through this virtual
// destructor, i.e. by the library that made it.
class ADMIS_SDK_API Plugin {
 public:
  virtual ~Plugin() = default;
  virtual Kind kind() const = 0;
};

// A plugin with learnable state. module() names parameters and buffers exactly as the
// reference's state dict does.
class ADMIS_SDK_API ModulePlugin : public Plugin {
 public:
  virtual torch::nn::Module& module() = 0;
  // How the reference's released checkpoints wrap this module: prefixes to strip (e.g.
  // 'eps_model.' of a DDPM wrapper, 'module.' of DataParallel) and keys that belong to the
  // wrapper rather than to the module (e.g. its noise-schedule buffers). The host applies
  // these on top of what the caller asks for, so released files load unchanged.
  virtual LoadOptions checkpoint_layout() const { return {}; }
};

// images [N,3,H,W] in [-1,1] -> embeddings [N,D].
class ADMIS_SDK_API Backbone : public ModulePlugin {
 public:
  Kind kind() const override { return Kind::Backbone; }
  virtual std::int64_t embedding_size() const = 0;
  virtual std::int64_t input_size() const = 0;  // H == W expected by the network
  virtual torch::Tensor forward(const torch::Tensor& images) = 0;
};

struct HeadOutput {
  torch::Tensor logits;           // [N,C] training logits, margin applied to the target class
  torch::Tensor original_logits;  // [N,C] scaled cosines (or plain logits), no margin
};

// embeddings [N,D] and labels [N] int64 -> logits for cross-entropy.
class ADMIS_SDK_API Head : public ModulePlugin {
 public:
  Kind kind() const override { return Kind::Head; }
  virtual std::int64_t in_features() const = 0;
  virtual std::int64_t out_features() const = 0;
  virtual HeadOutput forward(const torch::Tensor& embeddings, const torch::Tensor& labels) = 0;
};

// x_t [N,C,H,W], timesteps [N] int64, optional context [N,D], optional dropout mask [N]
// bool (true: this row's context is replaced by the empty context) -> model output
// [N,C,H,W] (eps), or [N,2C,H,W] when the model also predicts its variance.
class ADMIS_SDK_API Denoiser : public ModulePlugin {
 public:
  Kind kind() const override { return Kind::Denoiser; }
  virtual std::int64_t in_channels() const = 0;
  virtual std::int64_t out_channels() const = 0;
  virtual std::int64_t context_size() const = 0;  // 0: unconditional
  virtual torch::Tensor forward(const torch::Tensor& x_t, const torch::Tensor& timesteps,
                                const torch::Tensor& context = {}, const torch::Tensor& dropout_mask = {}) = 0;
};

// One reverse step's results. prev_sample is always set; the others when the scheduler
// computes them (pred_x0 for previews; mean and log_variance for the DDPM posterior).
struct StepOutput {
  torch::Tensor prev_sample;
  torch::Tensor pred_x0;
  torch::Tensor mean;
  torch::Tensor log_variance;
};

// A noise schedule, the forward process used in training, and the reverse sampling loop
// as a list of steps. The sampling loop is:
//   x = noise;  for i in 0..num_steps()-1:  x = step(model(x, model_timestep(i)), i, x, z_i)
class ADMIS_SDK_API Scheduler : public Plugin {
 public:
  Kind kind() const override { return Kind::Scheduler; }
  virtual std::int64_t num_train_timesteps() const = 0;
  virtual torch::Tensor betas() const = 0;       // [T] float32, the training schedule
  virtual torch::Tensor alpha_bars() const = 0;  // [T] float32, cumulative products of 1 - beta
  // q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t [N] int64.
  virtual torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& eps,
                                  const torch::Tensor& timesteps) const = 0;
  virtual std::int64_t num_steps() const = 0;                     // reverse steps taken when sampling
  virtual std::int64_t model_timestep(std::int64_t step) const = 0;  // timestep the model sees at step i
  virtual bool uses_noise(std::int64_t step) const = 0;           // whether step i consumes noise
  // Whether the denoiser output carries a variance channel block ([N,2C,...]).
  virtual bool expects_learned_variance() const = 0;
  virtual StepOutput step(const torch::Tensor& model_output, std::int64_t step, const torch::Tensor& x_t,
                          const torch::Tensor& noise) const = 0;
};

// images [N,3,H,W] in [-1,1] <-> latents [N,C,H/f,W/f].
class ADMIS_SDK_API Codec : public ModulePlugin {
 public:
  Kind kind() const override { return Kind::Codec; }
  virtual std::int64_t latent_channels() const = 0;
  virtual std::int64_t downsampling_factor() const = 0;
  virtual torch::Tensor encode(const torch::Tensor& images) = 0;
  virtual torch::Tensor decode(const torch::Tensor& latents) = 0;
};

// Identity contexts, addressable by index so that any subset can be regenerated alike.
struct IdentityContexts {
  torch::Tensor embeddings;  // [K,D] float32
  torch::Tensor faces;       // [K,H,W,3] uint8 RGB, the face each context came from; undefined if none
};

class ADMIS_SDK_API ContextSource : public Plugin {
 public:
  Kind kind() const override { return Kind::ContextSource; }
  virtual std::int64_t size() const = 0;  // number of identities available
  virtual std::int64_t embedding_size() const = 0;
  // Contexts first..first+count-1; the same index always gives the same context.
  virtual IdentityContexts read(std::int64_t first, std::int64_t count) = 0;
};

// A labelled face as readers produce it and writers consume it.
struct Sample {
  torch::Tensor image;    // [H,W,3] uint8 RGB (may be undefined when only `encoded` is set)
  std::string encoded;    // the encoded file (JPEG/PNG bytes) when the source had one
  std::int64_t label = -1;
  std::string label_name;  // identity folder name
  std::string name;        // file name within the identity, e.g. "12.png"
};

// All images of one identity, for identity-level augmenters.
struct IdentitySamples {
  std::string label_name;
  std::vector<Sample> samples;
  torch::Tensor context_face;  // [H,W,3] uint8, undefined if none
};

enum class AugmenterScope { Image, Identity };

class ADMIS_SDK_API Augmenter : public Plugin {
 public:
  Kind kind() const override { return Kind::Augmenter; }
  virtual AugmenterScope scope() const = 0;
  // Image scope: one image tensor to another, randomness from `generator` only.
  virtual torch::Tensor augment_image(const torch::Tensor& image, at::Generator& generator) = 0;
  // Identity scope: edits the identity's sample list in place.
  virtual void augment_identity(IdentitySamples& identity) = 0;
};

// Writes labelled faces to `destination`. Nothing is visible there until commit(), which
// publishes atomically; destroying an uncommitted writer removes its temporary files.
class ADMIS_SDK_API DatasetWriter : public Plugin {
 public:
  Kind kind() const override { return Kind::DatasetWriter; }
  virtual void open(const std::string& destination) = 0;
  virtual void write(const Sample& sample) = 0;
  virtual void commit() = 0;
};

// Reads labelled faces from `source`. read() must be safe to call from several threads.
class ADMIS_SDK_API DatasetReader : public Plugin {
 public:
  Kind kind() const override { return Kind::DatasetReader; }
  virtual void open(const std::string& source) = 0;
  virtual std::int64_t size() const = 0;
  virtual std::vector<std::string> class_names() const = 0;  // label i is class_names()[i]
  virtual Sample read(std::int64_t index) const = 0;
};

}  // namespace admis
