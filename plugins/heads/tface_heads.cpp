// The margin heads of TFace (torchkit/head/localfc): ArcFace, CosFace and CurricularFace.
// Each starts from the clamped cosines cos(theta_j) of an embedding with every class
// centre, changes only the column of the sample's own class, and scales by s.

#include <cmath>

#include "head_base.h"

namespace admis::heads {

namespace {

constexpr double kPi = 3.14159265358979323846;

// The additive angular margin shared by ArcFace and CurricularFace: cos(theta + m) for the
// target class. Where theta + m would pass pi (cos theta <= cos(pi - m)) the cosine is no
// longer decreasing in theta, so TFace falls back to the CosFace-like penalty
// cos(theta) - m sin(pi - m), which keeps the logit monotonic. With easy_margin the margin
// is applied only where cos theta > 0 and the target is left alone elsewhere.
struct AngularMargin {
  explicit AngularMargin(double margin)
      : cos_m(std::cos(margin)),
        sin_m(std::sin(margin)),
        threshold(std::cos(kPi - margin)),
        fallback(std::sin(kPi - margin) * margin) {}

  // cos(theta + m) from cos(theta), [N, 1].
  torch::Tensor cos_theta_plus_m(const torch::Tensor& cos_theta) const {
    const torch::Tensor sin_theta = torch::sqrt(1.0 - cos_theta.pow(2));
    return cos_theta * cos_m - sin_theta * sin_m;
  }
  torch::Tensor target_logit(const torch::Tensor& cos_theta, const torch::Tensor& cos_theta_m,
                             bool easy_margin) const {
    if (easy_margin) return torch::where(cos_theta > 0, cos_theta_m, cos_theta);
    return torch::where(cos_theta > threshold, cos_theta_m, cos_theta - fallback);
  }

  double cos_m, sin_m, threshold, fallback;
};

// ArcFace (Deng et al. 2019): s * cos(theta_y + m) for the own class, s * cos(theta_j) else.
class ArcFace final : public HeadBase {
 public:
  explicit ArcFace(const Params& p)
      : HeadBase("arcface", "ArcFace", p),
        scale_(p.get_float("scale")),
        margin_(p.get_float("margin")),
        easy_margin_(p.get_bool("easy_margin")) {}

 protected:
  HeadOutput logits(const torch::Tensor& embeddings, const torch::Tensor& labels) override {
    const torch::Tensor cos_theta = cosine(embeddings);
    const torch::Tensor target = target_column(cos_theta, labels);
    const torch::Tensor final_target = margin_.target_logit(target, margin_.cos_theta_plus_m(target), easy_margin_);
    return {with_target(cos_theta, labels, final_target) * scale_, cos_theta.detach() * scale_};
  }

 private:
  double scale_;
  AngularMargin margin_;
  bool easy_margin_;
};

// CosFace (Wang et al. 2018): s * (cos(theta_y) - m) for the own class.
class CosFace final : public HeadBase {
 public:
  explicit CosFace(const Params& p)
      : HeadBase("cosface", "CosFace", p), scale_(p.get_float("scale")), margin_(p.get_float("margin")) {}

 protected:
  HeadOutput logits(const torch::Tensor& embeddings, const torch::Tensor& labels) override {
    const torch::Tensor cos_theta = cosine(embeddings);
    const torch::Tensor final_target = target_column(cos_theta, labels) - margin_;
    return {with_target(cos_theta, labels, final_target) * scale_, cos_theta.detach() * scale_};
  }

 private:
  double scale_;
  double margin_;
};

// CurricularFace (Huang et al. 2020): ArcFace's margin on the own class, and every other
// class j that is a hard example (cos theta_j > cos(theta_y + m)) re-weighted to
// cos theta_j (t + cos theta_j). t follows the mean own-class cosine by an exponential
// moving average, t <- alpha * mean(cos theta_y) + (1 - alpha) t, updated on every call
// (training or not, as TFace does) before it is used; it is the buffer `t`, saved in
// checkpoints, and carries no gradient.
class CurricularFace final : public HeadBase {
 public:
  explicit CurricularFace(const Params& p)
      : HeadBase("curricularface", "CurricularFace", p),
        scale_(p.get_float("scale")),
        margin_(p.get_float("margin")),
        alpha_(p.get_float("alpha")) {
    t_ = head_module().register_buffer("t", torch::zeros({1}));
  }

 protected:
  HeadOutput logits(const torch::Tensor& embeddings, const torch::Tensor& labels) override {
    const torch::Tensor cos_theta = cosine(embeddings);
    const torch::Tensor target = target_column(cos_theta, labels);
    const torch::Tensor cos_theta_m = margin_.cos_theta_plus_m(target);
    const torch::Tensor hard = cos_theta > cos_theta_m;
    const torch::Tensor final_target = margin_.target_logit(target, cos_theta_m, /*easy_margin=*/false);
    {
      torch::NoGradGuard no_grad;
      t_.copy_(target.mean() * alpha_ + (1.0 - alpha_) * t_);
    }
    const torch::Tensor reweighted = torch::where(hard, cos_theta * (t_ + cos_theta), cos_theta);
    return {with_target(reweighted, labels, final_target) * scale_, cos_theta.detach() * scale_};
  }

 private:
  double scale_;
  AngularMargin margin_;
  double alpha_;
  torch::Tensor t_;
};

ParamSpec angular_margin_param(double default_margin) {
  return ParamSpec::Float("margin", default_margin, "m: additive angular margin on the own class, in radians")
      .range(0.0, kPi / 2);
}

}  // namespace

void register_tface_heads(FactoryList& registry) {
  registry.add(Kind::Head, "arcface", "1.0.0",
               "ArcFace additive angular margin head, s*cos(theta+m) on the own class (TFace localfc.ArcFace)",
               {in_features_param(), out_features_param(), scale_param(64.0), angular_margin_param(0.5),
                ParamSpec::Bool("easy_margin", false,
                                "apply the margin only where cos(theta) > 0 instead of TFace's cos(pi-m) fallback")},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<ArcFace>(p); });
  registry.add(Kind::Head, "cosface", "1.0.0",
               "CosFace additive cosine margin head, s*(cos(theta)-m) on the own class (TFace localfc.CosFace)",
               {in_features_param(), out_features_param(), scale_param(64.0),
                ParamSpec::Float("margin", 0.4, "m: subtracted from the own class's cosine").range(0.0, 1.0)},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<CosFace>(p); });
  registry.add(Kind::Head, "curricularface", "1.0.0",
               "CurricularFace head: angular margin plus adaptive re-weighting of hard negatives (TFace "
               "localfc.CurricularFace)",
               {in_features_param(), out_features_param(), scale_param(64.0), angular_margin_param(0.5),
                ParamSpec::Float("alpha", 0.1, "momentum of the running mean t of the own-class cosine")
                    .range(0.0, 1.0)},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<CurricularFace>(p); });
}

}  // namespace admis::heads
