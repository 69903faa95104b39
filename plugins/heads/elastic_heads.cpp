// ElasticFace (Boutros et al. 2022, fdbtrs/ElasticFace utils/losses.py): ArcFace and
// CosFace with a margin drawn afresh for every sample and every call from N(m, std^2),
// so the decision boundary can stretch and shrink during training.
//
// The reference skips rows labelled -1 (a convention of its partial-FC training); here, as
// for every head, each row must name a class in [0, out_features).
//
// The margins come from LibTorch's default generator of the embeddings' device, exactly
// as the reference's torch.normal call: the host seeds that generator (torch::manual_seed
// from the run's seed), so a seeded run draws the same margins again; with the same seed
// they are the very draws PyTorch makes.

#include "head_base.h"

namespace admis::heads {

namespace {

// How the drawn margin enters the own-class logit.
enum class MarginSpace {
  Angle,   // ElasticFace-Arc: cos(theta + m)
  Cosine,  // ElasticFace-Cos: cos(theta) - m
};

class ElasticHead final : public HeadBase {
 public:
  ElasticHead(std::string name, const std::string& reference_name, MarginSpace space, const Params& p)
      : HeadBase(std::move(name), reference_name, p),
        space_(space),
        scale_(p.get_float("scale")),
        margin_(p.get_float("margin")),
        std_(p.get_float("std")),
        plus_(p.get_bool("plus")) {}

 protected:
  HeadOutput logits(const torch::Tensor& embeddings, const torch::Tensor& labels) override {
    const torch::Tensor cos_theta = cosine(embeddings);
    const torch::Tensor target = target_column(cos_theta, labels);
    const torch::Tensor margins = draw_margins(target);
    // Unlike TFace's ArcFace there is no fallback where theta + m passes pi: ElasticFace
    // takes the cosine of the shifted angle as it is.
    const torch::Tensor final_target =
        space_ == MarginSpace::Angle ? torch::cos(torch::acos(target) + margins) : target - margins;
    return {with_target(cos_theta, labels, final_target) * scale_, cos_theta.detach() * scale_};
  }

 private:
  // One margin per sample, [N, 1]. ElasticFace+ pairs the sorted draws with the samples
  // ranked by their own-class cosine: the sample closest to its class centre receives the
  // smallest margin, the farthest the largest.
  //
  // The reference writes this pairing as margin_sorted[order] with order the descending
  // argsort of the cosines, which gathers with the ranking instead of scattering by it and
  // so pairs them only when the ranking is its own inverse; we implement the pairing the
  // two sorts are there to make (and the paper describes).
  torch::Tensor draw_margins(const torch::Tensor& target) const {
    torch::Tensor margins = torch::normal(margin_, std_, {target.size(0), 1}, c10::nullopt, target.options());
    if (!plus_) return margins;
    torch::NoGradGuard no_grad;
    const torch::Tensor closest_first = std::get<1>(target.view({-1}).sort(/*dim=*/0, /*descending=*/true));
    const torch::Tensor smallest_first = std::get<0>(margins.view({-1}).sort(/*dim=*/0));
    return torch::empty_like(smallest_first).scatter_(0, closest_first, smallest_first).view({-1, 1});
  }

  MarginSpace space_;
  double scale_;
  double margin_;
  double std_;
  bool plus_;
};

std::vector<ParamSpec> elastic_params(double default_margin, double max_margin, const std::string& margin_doc,
                                      const std::string& std_doc) {
  return {in_features_param(), out_features_param(), scale_param(64.0),
          ParamSpec::Float("margin", default_margin, margin_doc).range(0.0, max_margin),
          ParamSpec::Float("std", 0.05, std_doc).range(0.0, 1.0),
          ParamSpec::Bool("plus", false,
                          "ElasticFace+: sorted margins go to samples by own-class cosine, the closest the smallest")};
}

}  // namespace

void register_elastic_heads(FactoryList& registry) {
  registry.add(Kind::Head, "elastic-arcface", "1.0.0",
               "ElasticFace-Arc head: s*cos(theta+m) on the own class with m ~ N(margin, std^2) per sample",
               elastic_params(0.5, 1.5707963267948966, "mean of the additive angular margin, in radians",
                              "standard deviation of the margin (ElasticFace: 0.05, and 0.0175 for the + variant)"),
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> {
                 return std::make_unique<ElasticHead>("elastic-arcface", "ElasticArcFace", MarginSpace::Angle, p);
               });
  registry.add(Kind::Head, "elastic-cosface", "1.0.0",
               "ElasticFace-Cos head: s*(cos(theta)-m) on the own class with m ~ N(margin, std^2) per sample",
               elastic_params(0.35, 1.0, "mean of the margin subtracted from the own class's cosine",
                              "standard deviation of the margin (ElasticFace: 0.05, and 0.02 for the + variant)"),
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> {
                 return std::make_unique<ElasticHead>("elastic-cosface", "ElasticCosFace", MarginSpace::Cosine, p);
               });
}

}  // namespace admis::heads
