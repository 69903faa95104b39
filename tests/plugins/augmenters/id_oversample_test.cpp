// Identity augmenter `id-oversample`: ADMIS id_augment.py's layout (0.png..49.png plus
// the context face as 50.png..54.png), numbering after the highest sample, the error for
// an identity without a context face, and the augmenter conformance suite.

#include <sstream>

#include "admis/host/conformance.h"
#include "support/support.h"

namespace admis::test::augmenters {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<Augmenter> make_oversample(const std::map<std::string, Value>& params = {}) {
  return create<Augmenter>(Kind::Augmenter, "id-oversample", params);
}

IdentitySamples identity_with(const std::vector<std::string>& names, bool with_context = true) {
  IdentitySamples id;
  id.label_name = "17";
  auto g = at::detail::createCPUGenerator(4);
  for (const auto& n : names) {
    Sample s;
    s.image = at::randint(0, 256, {112, 112, 3}, g, torch::kUInt8);
    s.label = 17;
    s.label_name = "17";
    s.name = n;
    id.samples.push_back(s);
  }
  if (with_context) id.context_face = at::randint(0, 256, {112, 112, 3}, g, torch::kUInt8);
  return id;
}

TEST(IdOversample, AddsTheContextFaceFiveTimesAs50To54AfterFiftySamples) {
  std::vector<std::string> names;
  for (int i = 0; i < 50; ++i) names.push_back(std::to_string(i) + ".png");
  IdentitySamples id = identity_with(names);
  const std::vector<Sample> before = id.samples;
  auto a = make_oversample();
  EXPECT_EQ(a->scope(), AugmenterScope::Identity);
  a->augment_identity(id);
  ASSERT_EQ(id.samples.size(), 55u);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(id.samples[i].name, before[i].name);
    EXPECT_TRUE(torch::equal(id.samples[i].image, before[i].image)) << i;
  }
  for (int k = 0; k < 5; ++k) {
    const Sample& s = id.samples[50 + k];
    EXPECT_EQ(s.name, std::to_string(50 + k) + ".png");
    EXPECT_TRUE(torch::equal(s.image, id.context_face)) << s.name;
    EXPECT_EQ(s.label, 17);
    EXPECT_EQ(s.label_name, "17");
    EXPECT_TRUE(s.encoded.empty());
  }
}

TEST(IdOversample, NumbersAfterTheHighestSampleInItsExtension) {
  IdentitySamples id = identity_with({"3.jpg", "12.jpg", "notes.jpg", "7.jpg"});
  make_oversample({{"copies", 2}})->augment_identity(id);
  ASSERT_EQ(id.samples.size(), 6u);
  EXPECT_EQ(id.samples[4].name, "13.jpg");
  EXPECT_EQ(id.samples[5].name, "14.jpg");

  IdentitySamples none = identity_with({});
  make_oversample({{"copies", 3}})->augment_identity(none);
  ASSERT_EQ(none.samples.size(), 3u);
  EXPECT_EQ(none.samples[0].name, "0.png");
  EXPECT_EQ(none.samples[2].name, "2.png");
  EXPECT_EQ(none.samples[0].label_name, "17");
}

TEST(IdOversample, RefusesAnIdentityWithoutAContextFace) {
  IdentitySamples id = identity_with({"0.png", "1.png"}, /*with_context=*/false);
  auto a = make_oversample();
  const std::string msg = error_of([&] { a->augment_identity(id); });
  EXPECT_THAT(msg, HasSubstr("augmenter/id-oversample"));
  EXPECT_THAT(msg, HasSubstr("identity '17' has no context face"));
  EXPECT_EQ(id.samples.size(), 2u);

  id.context_face = torch::zeros({112, 112}, torch::kUInt8);
  EXPECT_THAT(error_of([&] { a->augment_identity(id); }), HasSubstr("expected an image [H,W,3] uint8 RGB"));

  auto g = at::detail::createCPUGenerator(0);
  EXPECT_THAT(error_of([&] { a->augment_image(torch::zeros({4, 4, 3}, torch::kUInt8), g); }),
              HasSubstr("an identity augmenter"));
  EXPECT_THAT(error_of([&] { make_oversample({{"copies", 0}}); }), HasSubstr("copies"));
}

TEST(IdOversample, PassesTheAugmenterConformanceSuite) {
  const host::LoadedLibrary* library = nullptr;
  for (const auto& lib : registry().libraries())
    if (lib->name == "admis_augmenters") library = lib.get();
  ASSERT_NE(library, nullptr);
  const auto report = host::check_plugins(registry(), library->path, runtime());
  std::ostringstream text;
  host::print_report(report, text);
  EXPECT_FALSE(report.failed()) << text.str();
  bool contract = false;
  for (const auto& r : report.results)
    if (r.plugin == "augmenter/id-oversample" && r.check == "augmenter contract") contract = r.passed;
  EXPECT_TRUE(contract) << text.str();
}

}  // namespace
}  // namespace admis::test::augmenters
