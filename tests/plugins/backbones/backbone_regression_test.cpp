// Golden regression of the three backbones: seeded weights (the plugin's own
// initialisation, then seeded BatchNorm statistics and affine values and PReLU slopes, so
// that every kind of state shapes the result), seeded images, and the embeddings in eval
// mode and in train mode (batch statistics, dropout), plus the running mean that the train
// step leaves behind.
//
// Golden files: tests/golden/backbone-<name>.safetensors. To re-record them after an
// intended change:
//   ADMIS_RECORD_GOLDEN=1 build/bin/test_backbones --gtest_filter='*BackboneGolden*'
// and review the diff of the regenerated files.

#include <boost/filesystem.hpp>
#include <cstdlib>

#include "admis/sdk/batch_norm.h"
#include "backbones_test_util.h"

namespace admis::test::backbones {
namespace {

constexpr std::uint64_t kSeed = 2024;

struct GoldenCase {
  std::string plugin;   // plugin name
  ParamMap params;      // small, non-default settings
  std::string tracked;  // a BatchNorm running mean the train step updates
};

// Each golden holds one or two configurations, keyed by a tag.
std::map<std::string, std::vector<std::pair<std::string, GoldenCase>>> golden_cases() {
  return {
      {"ir",
       {{"ir_se18", {"ir", {{"num_layers", Value(18)}, {"mode", Value("ir_se")}}, "output_layer.4.running_mean"}}}},
      {"iresnet",
       {{"se18",
         {"iresnet",
          {{"depth", Value(18)}, {"use_se", Value(true)}, {"num_features", Value(128)}, {"dropout", Value(0.2)}},
          "features.running_mean"}}}},
      {"mobilefacenet",
       {{"gdc", {"mobilefacenet", {{"embedding_size", Value(128)}}, "output_layer.bn.running_mean"}},
        {"gnap", {"mobilefacenet", {{"output_name", Value("GNAP")}}, "output_layer.bn2.running_mean"}}}},
  };
}

bool recording() {
  const char* v = std::getenv("ADMIS_RECORD_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

// The seeded backbone the golden was recorded with.
std::shared_ptr<Backbone> seeded_backbone(const GoldenCase& c) {
  runtime();  // its construction seeds the generator; get that done before seeding here
  torch::manual_seed(kSeed);
  auto backbone = make_backbone(c.plugin, c.params);
  torch::NoGradGuard no_grad;
  for (const auto& [key, tensor] : host::module_state_dict(backbone->module())) {
    const auto ends_with = [&key = key](const std::string& suffix) {
      return key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("running_mean")) tensor.uniform_(-0.1, 0.1);
    if (ends_with("running_var")) tensor.uniform_(0.5, 1.5);
  }
  for (const auto& m : backbone->module().modules(/*include_self=*/false)) {
    if (auto* bn = m->as<admis::BatchNorm2d>()) {
      if (bn->weight.defined()) bn->weight.uniform_(0.8, 1.2);
      if (bn->bias.defined()) bn->bias.uniform_(-0.1, 0.1);
    } else if (auto* prelu = m->as<torch::nn::PReLU>()) {
      prelu->weight.uniform_(0.1, 0.4);
    }
  }
  return backbone;
}

// Eval embeddings, train embeddings and the tracked running mean after the train step.
StateDict run_case(const std::string& tag, const GoldenCase& c) {
  auto backbone = seeded_backbone(c);
  const torch::Tensor images = random_images(3, backbone->input_size());
  StateDict out;
  {
    torch::NoGradGuard no_grad;
    backbone->module().eval();
    out[tag + ".eval"] = backbone->forward(images);
    backbone->module().train();
    out[tag + ".train"] = backbone->forward(images);
  }
  out[tag + ".running_mean_after_train"] = host::module_state_dict(backbone->module()).at(c.tracked).clone();
  return out;
}

class BackboneGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(BackboneGolden, ReproducesTheRecordedEmbeddings) {
  const std::string name = GetParam();
  const std::string path = golden_dir() + "/backbone-" + name + ".safetensors";
  const auto cases = golden_cases().at(name);
  if (recording()) {
    StateDict golden;
    for (const auto& [tag, c] : cases) golden.merge(run_case(tag, c));
    host::write_safetensors(golden, path,
                            {{"backbone", name}, {"recorded_with", "ADMIS_RECORD_GOLDEN=1 test_backbones"}});
    std::cout << "recorded " << path << std::endl;
  }
  if (!boost::filesystem::exists(path)) {
    FAIL() << "golden file " << path << " is missing; record it with ADMIS_RECORD_GOLDEN=1 test_backbones "
           << "--gtest_filter='*BackboneGolden*'";
  }
  const StateDict golden = host::read_safetensors(path);
  for (const auto& [tag, c] : cases) {
    for (const auto& [key, actual] : run_case(tag, c)) {
      ASSERT_TRUE(golden.count(key)) << path << " has no '" << key << "'";
      const torch::Tensor& expected = golden.at(key);
      // The same computation, possibly with another thread count or BLAS build.
      const double tolerance = 1e-4 * std::max(1.0, expected.abs().max().item<double>());
      EXPECT_TRUE(all_close(actual, expected, tolerance)) << key;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backbones, BackboneGolden, ::testing::Values("ir", "iresnet", "mobilefacenet"));

// ---------------------------------------------------------------------------------------
// Schemas: one library, three backbones, every parameter declared with a default and a doc.

TEST(BackboneSchemas, AllComeFromTheAdmisBackbonesLibraryWithDocumentedDefaults) {
  for (const std::string name : {"ir", "iresnet", "mobilefacenet"}) {
    const host::RegisteredPlugin& plugin = registry().get(Kind::Backbone, name);
    EXPECT_EQ(plugin.library->name, "admis_backbones") << name;
    EXPECT_FALSE(plugin.factory->summary.empty()) << name;
    for (const auto& p : plugin.factory->params) {
      EXPECT_FALSE(p.doc.empty()) << name << "." << p.name;
      EXPECT_FALSE(p.required()) << name << "." << p.name << " should have a default";
    }
  }
}

TEST(BackboneSchemas, ParametersAreNamedAsTheReferenceConstructors) {
  auto names = [](const std::string& backbone) {
    std::vector<std::string> out;
    for (const auto& p : registry().get(Kind::Backbone, backbone).factory->params) out.push_back(p.name);
    return out;
  };
  using ::testing::UnorderedElementsAre;
  EXPECT_THAT(names("ir"), UnorderedElementsAre("input_size", "num_layers", "mode"));
  EXPECT_THAT(names("iresnet"), UnorderedElementsAre("depth", "num_features", "dropout", "use_se"));
  EXPECT_THAT(names("mobilefacenet"), UnorderedElementsAre("input_size", "embedding_size", "output_name"));
}

}  // namespace
}  // namespace admis::test::backbones
