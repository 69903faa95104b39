// A head that breaks its kind's contract on purpose (no doc line, wrong logits shape,
// accepts out-of-range labels), so the conformance suite can be seen to catch it.
#include <admis/sdk.h>

namespace {
struct Kernel : torch::nn::Module {
  Kernel() { kernel = register_parameter("kernel", torch::randn({8, 3})); }
  torch::Tensor kernel;
};
class TransposedHead : public admis::Head {
 public:
  std::int64_t in_features() const override { return 8; }
  std::int64_t out_features() const override { return 3; }
  torch::nn::Module& module() override { return *m_; }
  admis::HeadOutput forward(const torch::Tensor& e, const torch::Tensor&) override {
    auto logits = torch::mm(e, m_->kernel).t();  // [C, N]: the contract says [N, C]
    return {logits, logits};
  }

 private:
  std::shared_ptr<Kernel> m_ = std::make_shared<Kernel>();
};
}  // namespace

ADMIS_PLUGIN("nonconforming-test", "1.0.0") {
  registry.add(admis::Kind::Head, "transposed", "1.0.0", "returns [C, N] logits (test fixture)",
               {admis::ParamSpec::Float("scale", 64.0, "")},
               [](const admis::Params&, admis::Host&) -> std::unique_ptr<admis::Plugin> {
                 return std::make_unique<TransposedHead>();
               });
}
