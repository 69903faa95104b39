#pragma once
// What every bundled classification head shares: TFace's learnable `kernel` (one column
// per class, [in_features, out_features]), checking the inputs of a forward pass, and the
// normalised cosine logits that the margin heads start from.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::heads {

// The module a head exposes. Its parameter and buffer names are the reference's state-dict
// keys (`kernel`, CurricularFace's `t`, ...), so a TFace head checkpoint loads one to one.
class HeadModule : public torch::nn::Module {
 public:
  // `reference_name` is the Python class the module mirrors (shown when it is printed).
  HeadModule(const std::string& reference_name, std::int64_t in_features, std::int64_t out_features);

  torch::Tensor kernel;  // [in_features, out_features], N(0, 0.01^2) as TFace initialises it
};

class HeadBase : public Head {
 public:
  // Reads `in_features` and `out_features` from `params`; `name` is the registered plugin
  // name used in error messages.
  HeadBase(std::string name, const std::string& reference_name, const Params& params);

  std::int64_t in_features() const override { return in_features_; }
  std::int64_t out_features() const override { return out_features_; }
  torch::nn::Module& module() override { return *module_; }

  // Checks the inputs (shapes, dtypes, label range), then runs the head's own logits.
  HeadOutput forward(const torch::Tensor& embeddings, const torch::Tensor& labels) final;

 protected:
  // embeddings [N, in_features] floating point, labels [N] int64 in [0, out_features), both
  // on the module's device.
  virtual HeadOutput logits(const torch::Tensor& embeddings, const torch::Tensor& labels) = 0;

  // cos(theta) of every embedding with every class centre, [N, out_features]: both are
  // L2-normalised (embeddings along dim 1, kernel columns along dim 0) and the product is
  // clamped to [-1, 1] for the acos/sqrt that follow (TFace's calc_logits).
  torch::Tensor cosine(const torch::Tensor& embeddings) const;

  const std::string& name() const { return name_; }
  HeadModule& head_module() { return *module_; }

 private:
  std::string name_;
  std::int64_t in_features_;
  std::int64_t out_features_;
  std::shared_ptr<HeadModule> module_;
};

// The cosine of each row's own class, [N, 1].
torch::Tensor target_column(const torch::Tensor& logits, const torch::Tensor& labels);
// `logits` with each row's own class replaced by `target` [N, 1] (out of place, so autograd
// sees an ordinary function of both).
torch::Tensor with_target(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& target);

// Schema entries shared by all heads.
ParamSpec in_features_param();
ParamSpec out_features_param();
ParamSpec scale_param(double default_scale);

// The factories, one per head (defined next to each head).
void register_tface_heads(FactoryList& registry);    // arcface, cosface, curricularface
void register_elastic_heads(FactoryList& registry);  // elastic-arcface, elastic-cosface
void register_softmax_head(FactoryList& registry);   // softmax

}  // namespace admis::heads
