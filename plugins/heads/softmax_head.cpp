// The plain softmax classifier: logits = x W (+ b), no normalisation, scale or margin.
// TFace's localfc has no such head (its non-margin head, NormFace, lives in distfc), so
// this is a fully connected layer with the margin heads' kernel layout and initialisation
// ([in_features, out_features], N(0, 0.01^2)); a trained margin-head kernel loads into it.

#include "head_base.h"

namespace admis::heads {

namespace {

class SoftmaxHead final : public HeadBase {
 public:
  explicit SoftmaxHead(const Params& p) : HeadBase("softmax", "Softmax", p) {
    if (p.get_bool("bias")) bias_ = head_module().register_parameter("bias", torch::zeros({out_features()}));
  }

 protected:
  HeadOutput logits(const torch::Tensor& embeddings, const torch::Tensor& labels) override {
    torch::Tensor out = embeddings.mm(head_module().kernel);
    if (bias_.defined()) out = out + bias_;
    // There is no margin, so the training logits and the plain ones are the same values;
    // the plain ones carry no gradient, as the margin heads' do not.
    return {out, out.detach()};
  }

 private:
  torch::Tensor bias_;  // [out_features], zeros at start; undefined without `bias`
};

}  // namespace

void register_softmax_head(FactoryList& registry) {
  registry.add(Kind::Head, "softmax", "1.0.0", "Plain fully connected softmax classifier, logits = x W (+ b)",
               {in_features_param(), out_features_param(),
                ParamSpec::Bool("bias", false, "add a learnable per-class bias `bias` (zeros at start)")},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<SoftmaxHead>(p); });
}

}  // namespace admis::heads
