// insightface's combined margin (Deng et al., ArcFace paper section 3.3): the target
// logit becomes s * (cos(m1 * theta + m2) - m3). m1=1, m2=0.5, m3=0 is ArcFace; m1=1,
// m2=0, m3=0.35 is CosFace; combinations of the three in between.
#include <admis/sdk.h>

#include <cmath>

namespace {

struct CombinedMarginModule : torch::nn::Module {
  CombinedMarginModule(std::int64_t in_features, std::int64_t out_features) {
    // Same layout as TFace heads: kernel [in_features, out_features].
    kernel = register_parameter("kernel", torch::randn({in_features, out_features}) * 0.01);
  }
  torch::Tensor kernel;
};

class CombinedMarginHead : public admis::Head {
 public:
  explicit CombinedMarginHead(const admis::Params& p)
      : name_(p.owner()),
        in_(p.get_int("in_features")),
        out_(p.get_int("out_features")),
        scale_(p.get_float("scale")),
        m1_(p.get_float("m1")),
        m2_(p.get_float("m2")),
        m3_(p.get_float("m3")),
        module_(std::make_shared<CombinedMarginModule>(in_, out_)) {}

  std::int64_t in_features() const override { return in_; }
  std::int64_t out_features() const override { return out_; }
  torch::nn::Module& module() override { return *module_; }

  admis::HeadOutput forward(const torch::Tensor& embeddings, const torch::Tensor& labels) override {
    if (embeddings.dim() != 2 || embeddings.size(1) != in_)
      throw admis::Error(name_, "embeddings must be [N, in_features=" + std::to_string(in_) + "]");
    if (labels.numel() > 0 && (labels.min().item<std::int64_t>() < 0 || labels.max().item<std::int64_t>() >= out_))
      throw admis::Error(name_, "labels must lie in [0, out_features=" + std::to_string(out_) + ")");
    auto cos_theta = torch::mm(torch::nn::functional::normalize(embeddings, torch::nn::functional::NormalizeFuncOptions().dim(1)),
                               torch::nn::functional::normalize(module_->kernel, torch::nn::functional::NormalizeFuncOptions().dim(0)))
                         .clamp(-1, 1);
    auto target_cos = cos_theta.gather(1, labels.view({-1, 1}));
    auto theta = torch::acos(target_cos.clamp(-1 + 1e-7, 1 - 1e-7));
    auto target_logit = torch::cos(m1_ * theta + m2_) - m3_;
    auto logits = cos_theta.scatter(1, labels.view({-1, 1}), target_logit);
    return {logits * scale_, cos_theta * scale_};
  }

 private:
  std::string name_;
  std::int64_t in_, out_;
  double scale_, m1_, m2_, m3_;
  std::shared_ptr<CombinedMarginModule> module_;
};

}  // namespace

ADMIS_PLUGIN("combined-margin-example", "1.0.0") {
  using admis::ParamSpec;
  registry.add(admis::Kind::Head, "combined-margin", "1.0.0",
               "insightface combined margin: s * (cos(m1*theta + m2) - m3) on the target class",
               {ParamSpec::Int("in_features", 512, "embedding size").at_least(1),
                ParamSpec::Int("out_features", 10, "number of identities").at_least(1),
                ParamSpec::Float("scale", 64.0, "logit scale s").at_least(0),
                ParamSpec::Float("m1", 1.0, "multiplicative angular margin").range(0.5, 4),
                ParamSpec::Float("m2", 0.5, "additive angular margin (radians)").range(0, 1.5),
                ParamSpec::Float("m3", 0.0, "additive cosine margin").range(0, 1)},
               [](const admis::Params& p, admis::Host&) -> std::unique_ptr<admis::Plugin> {
                 return std::make_unique<CombinedMarginHead>(p);
               });
}
