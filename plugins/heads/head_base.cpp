#include "head_base.h"

#include <sstream>

namespace admis::heads {

namespace {

std::string shape_text(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace

HeadModule::HeadModule(const std::string& reference_name, std::int64_t in_features, std::int64_t out_features)
    : torch::nn::Module(reference_name) {
  // Column c is the centre of class c; TFace draws it from N(0, 0.01^2) (the default
  // generator, so a seeded host initialises heads reproducibly).
  kernel = register_parameter("kernel", torch::empty({in_features, out_features}).normal_(0.0, 0.01));
}

HeadBase::HeadBase(std::string name, const std::string& reference_name, const Params& params)
    : name_("head/" + std::move(name)),
      in_features_(params.get_int("in_features")),
      out_features_(params.get_int("out_features")),
      module_(std::make_shared<HeadModule>(reference_name, in_features_, out_features_)) {}

HeadOutput HeadBase::forward(const torch::Tensor& embeddings, const torch::Tensor& labels) {
  if (!embeddings.defined() || embeddings.dim() != 2 || embeddings.size(1) != in_features_)
    throw Error(name_, "embeddings must have shape [N, " + std::to_string(in_features_) +
                           "] (in_features = " + std::to_string(in_features_) + "), got " +
                           (embeddings.defined() ? shape_text(embeddings) : std::string("an undefined tensor")));
  if (!embeddings.is_floating_point())
    throw Error(name_, std::string("embeddings must be floating point, got ") + c10::toString(embeddings.scalar_type()));
  const std::int64_t n = embeddings.size(0);
  if (n == 0) throw Error(name_, "embeddings hold no rows (the batch is empty)");
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != n)
    throw Error(name_, "labels must have shape [" + std::to_string(n) + "] (one class index per embedding), got " +
                           (labels.defined() ? shape_text(labels) : std::string("an undefined tensor")));
  if (labels.is_floating_point() || labels.is_complex() || labels.scalar_type() == torch::kBool)
    throw Error(name_, std::string("labels must be integer class indices, got ") + c10::toString(labels.scalar_type()));

  const torch::Tensor kernel = module_->kernel;
  const torch::Tensor labels_long = labels.to(kernel.device(), torch::kLong);
  // One reduction (and one host synchronisation) per batch; the failing row is only looked
  // up once a bad label is known to exist.
  const torch::Tensor outside = (labels_long < 0).logical_or(labels_long >= out_features_);
  if (outside.any().item<bool>()) {
    const std::int64_t row = outside.nonzero()[0][0].item<std::int64_t>();
    const std::int64_t label = labels_long[row].item<std::int64_t>();
    throw Error(name_, "label " + std::to_string(label) + " at row " + std::to_string(row) + " is outside [0, " +
                           std::to_string(out_features_) + ") (out_features = " + std::to_string(out_features_) + ")");
  }
  return logits(embeddings.to(kernel.device(), kernel.scalar_type()), labels_long);
}

namespace {

// L2 norms along `dim`, kept as a broadcastable dimension, never below 1e-12 (as
// torch.nn.functional.normalize). Written as a sum of squares because LibTorch's CPU norm
// reduction across the rows of a [D, C] kernel is several times slower.
torch::Tensor l2_norms(const torch::Tensor& t, std::int64_t dim) {
  return t.pow(2).sum(dim, /*keepdim=*/true).sqrt().clamp_min(1e-12);
}

}  // namespace

torch::Tensor HeadBase::cosine(const torch::Tensor& embeddings) const {
  const torch::Tensor& kernel = module_->kernel;
  const torch::Tensor unit_embeddings = embeddings / l2_norms(embeddings, 1);
  // x^T (w / |w|) computed as (x^T w) / |w|: the division then touches the N x C logits
  // rather than the D x C kernel, which is larger for any batch smaller than D.
  return (unit_embeddings.mm(kernel) / l2_norms(kernel, 0)).clamp(-1.0, 1.0);
}

torch::Tensor target_column(const torch::Tensor& logits, const torch::Tensor& labels) {
  return logits.gather(1, labels.view({-1, 1}));
}

torch::Tensor with_target(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& target) {
  return logits.scatter(1, labels.view({-1, 1}), target);
}

ParamSpec in_features_param() {
  return ParamSpec::Int("in_features", 512, "size of the embeddings the backbone produces").at_least(1);
}

ParamSpec out_features_param() {
  return ParamSpec::Int("out_features", 10000, "number of identities (classes) in the training set").at_least(1);
}

ParamSpec scale_param(double default_scale) {
  return ParamSpec::Float("scale", default_scale, "s: radius of the hypersphere the cosine logits are scaled to")
      .range(1e-3, 1e4);
}

}  // namespace admis::heads
