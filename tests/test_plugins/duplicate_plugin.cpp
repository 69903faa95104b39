// Compiled into two libraries that both register augmenter/mirror-duplicate.
#include <admis/sdk.h>

namespace {
class Mirror : public admis::Augmenter {
 public:
  admis::AugmenterScope scope() const override { return admis::AugmenterScope::Image; }
  torch::Tensor augment_image(const torch::Tensor& image, at::Generator&) override { return image.flip({1}); }
  void augment_identity(admis::IdentitySamples&) override {
    throw admis::Error("augmenter/mirror-duplicate", "works on single images only");
  }
};
}  // namespace

ADMIS_PLUGIN("duplicate-test", "1.0.0") {
  registry.add(admis::Kind::Augmenter, "mirror-duplicate", "1.0.0", "mirrors an image (test fixture)", {},
               [](const admis::Params&, admis::Host&) -> std::unique_ptr<admis::Plugin> { return std::make_unique<Mirror>(); });
}
