// DCFace-style identity oversampling as ADMIS applies it (generative_model_training/
// id_augment.py): each identity folder also receives the context face it was generated
// from, copied `copies` times, numbered on from the identity's samples (0.png..49.png get
// 50.png..54.png).

#include <cctype>
#include <filesystem>

#include "augmenters.h"

namespace admis::augmenters {
namespace {

// "49.png" -> 49; -1 when the stem is not a non-negative integer.
std::int64_t number_of(const std::string& name) {
  const std::string stem = std::filesystem::path(name).stem().string();
  if (stem.empty() || stem.size() > 18) return -1;
  for (unsigned char c : stem)
    if (!std::isdigit(c)) return -1;
  return std::stoll(stem);
}

class IdOversample : public Augmenter {
 public:
  explicit IdOversample(const Params& p) : copies_(p.get_int("copies")) {}

  AugmenterScope scope() const override { return AugmenterScope::Identity; }

  torch::Tensor augment_image(const torch::Tensor&, at::Generator&) override {
    throw Error(kName, "an identity augmenter: use augment_identity, it has no image step");
  }

  void augment_identity(IdentitySamples& identity) override {
    if (!identity.context_face.defined())
      throw Error(kName, "identity '" + identity.label_name +
                             "' has no context face to oversample (give the sampling stage a context source "
                             "that returns faces, e.g. npy with `images`, or image-folder)");
    check_hwc_uint8(identity.context_face, kName);
    // Continue after the highest numbered sample, in the samples' own file extension.
    std::int64_t next = 0;
    std::string extension = ".png";
    std::int64_t label = -1;
    for (const Sample& s : identity.samples) {
      const std::int64_t n = number_of(s.name);
      if (n >= next) {
        next = n + 1;
        const std::string ext = std::filesystem::path(s.name).extension().string();
        if (!ext.empty()) extension = ext;
      }
      if (label < 0) label = s.label;
    }
    for (std::int64_t k = 0; k < copies_; ++k) {
      Sample copy;
      copy.image = identity.context_face;
      copy.label = label;
      copy.label_name = identity.label_name;
      copy.name = std::to_string(next + k) + extension;
      identity.samples.push_back(std::move(copy));
    }
  }

 private:
  static constexpr const char* kName = "augmenter/id-oversample";
  std::int64_t copies_;
};

}  // namespace

void register_id_oversample(FactoryList& registry) {
  registry.add(Kind::Augmenter, "id-oversample", "1.0.0",
               "DCFace/ADMIS oversampling: add the identity's context face `copies` times, numbered after its samples",
               {ParamSpec::Int("copies", 5, "copies of the context face added to each identity (ADMIS: 5)").at_least(1)},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<IdOversample>(p); });
}

}  // namespace admis::augmenters
