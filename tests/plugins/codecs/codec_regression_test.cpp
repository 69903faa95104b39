// Golden regression of the codecs, their schemas, and the codec conformance suite.
//
// vq-f4: a small configuration that exercises every layer kind (attention inside a level,
// a width change, quant_conv from z_channels 4 to embed_dim 3), seeded weights (the
// plugin's own initialisation, then seeded GroupNorm affine values and a codebook spread
// over the latents' range so that the lookup picks many different codes), seeded images;
// recorded: latent, decoded (nearest code first) and decoded_unquantized.
// pixel: seeded images through encode and decode.
//
// Golden files: tests/golden/codecs_<name>.safetensors ('-' written '_'). To re-record
// them after an intended change:
//   ADMIS_RECORD_GOLDEN=1 build/bin/test_codecs --gtest_filter='*CodecGolden*'
// and review the diff of the regenerated files.

#include <boost/filesystem.hpp>

#include <cstdlib>
#include <sstream>

#include "admis/host/conformance.h"
#include "codecs_test_util.h"

namespace admis::test::codecs {
namespace {

constexpr std::uint64_t kSeed = 2024;

bool recording() {
  const char* v = std::getenv("ADMIS_RECORD_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

ParamMap golden_vq_params(bool force_not_quantize) {
  return {{"ch", Value(32)},
          {"ch_mult", Value(std::vector<std::int64_t>{1, 2})},
          {"num_res_blocks", Value(1)},
          {"resolution", Value(32)},
          {"attn_resolutions", Value(std::vector<std::int64_t>{16})},
          {"z_channels", Value(4)},
          {"embed_dim", Value(3)},
          {"n_embed", Value(64)},
          {"force_not_quantize", Value(force_not_quantize)}};
}

// The seeded vq-f4 the golden was recorded with.
std::shared_ptr<Codec> seeded_vq_f4(bool force_not_quantize) {
  runtime();  // its construction seeds the generator; get that done before seeding here
  torch::manual_seed(kSeed);
  auto codec = make_codec("vq-f4", golden_vq_params(force_not_quantize));
  torch::NoGradGuard no_grad;
  for (const auto& m : codec->module().modules(/*include_self=*/false)) {
    if (auto* gn = m->as<torch::nn::GroupNorm>()) {
      gn->weight.uniform_(0.8, 1.2);
      gn->bias.uniform_(-0.1, 0.1);
    }
  }
  host::module_state_dict(codec->module()).at("quantize.embedding.weight").uniform_(-0.5, 0.5);
  codec->module().eval();
  return codec;
}

StateDict run_vq_f4() {
  auto codec = seeded_vq_f4(false);
  auto unquantized = seeded_vq_f4(true);
  torch::manual_seed(kSeed + 1);
  const torch::Tensor images = random_images(2, 32);
  torch::NoGradGuard no_grad;
  StateDict out;
  out["latent"] = codec->encode(images);
  out["decoded"] = codec->decode(out["latent"]);
  out["decoded_unquantized"] = unquantized->decode(out["latent"]);
  return out;
}

StateDict run_pixel() {
  auto codec = make_codec("pixel");
  torch::manual_seed(kSeed);
  const torch::Tensor images = random_images(2, 16);
  StateDict out;
  out["latent"] = codec->encode(images).clone();
  out["decoded"] = codec->decode(out["latent"]).clone();
  return out;
}

class CodecGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(CodecGolden, ReproducesTheRecordedOutputs) {
  const std::string name = GetParam();
  std::string file = name;
  std::replace(file.begin(), file.end(), '-', '_');
  const std::string path = golden_dir() + "/codecs_" + file + ".safetensors";
  auto run = [&] { return name == "vq-f4" ? run_vq_f4() : run_pixel(); };
  if (recording()) {
    host::write_safetensors(run(), path, {{"codec", name}, {"recorded_with", "ADMIS_RECORD_GOLDEN=1 test_codecs"}});
    std::cout << "recorded " << path << std::endl;
  }
  if (!boost::filesystem::exists(path)) {
    FAIL() << "golden file " << path << " is missing; record it with ADMIS_RECORD_GOLDEN=1 test_codecs "
           << "--gtest_filter='*CodecGolden*'";
  }
  const StateDict golden = host::read_safetensors(path);
  const StateDict actual = run();
  ASSERT_EQ(golden.size(), actual.size()) << path;
  for (const auto& [key, value] : actual) {
    ASSERT_TRUE(golden.count(key)) << path << " has no '" << key << "'";
    const torch::Tensor& expected = golden.at(key);
    // The same computation, possibly with another thread count or BLAS build.
    const double tolerance = 1e-4 * std::max(1.0, expected.abs().max().item<double>());
    std::cout << name << " " << key << ": max |diff| = " << max_abs_diff(value, expected) << std::endl;
    EXPECT_TRUE(all_close(value, expected, tolerance)) << key;
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, CodecGolden, ::testing::Values("vq-f4", "pixel"));

// The golden vq-f4 really quantises: the codebook is spread so that the lookup changes the
// decoding,.
TEST(CodecGoldenSetup, TheGoldenCodebookMakesTheLookupMatter) {
  const StateDict out = run_vq_f4();
  EXPECT_GT(max_abs_diff(out.at("decoded"), out.at("decoded_unquantized")), 1e-2);
}

// ---------------------------------------------------------------------------------------
// Schemas: one library, two codecs, every parameter documented with a default.

TEST(CodecSchemas, BothComeFromTheAdmisCodecsLibraryWithDocumentedDefaults) {
  for (const std::string name : {"vq-f4", "pixel"}) {
    const host::RegisteredPlugin& plugin = registry().get(Kind::Codec, name);
    EXPECT_EQ(plugin.library->name, "admis_codecs") << name;
    EXPECT_FALSE(plugin.factory->summary.empty()) << name;
    for (const auto& p : plugin.factory->params) {
      EXPECT_FALSE(p.doc.empty()) << name << "." << p.name;
      EXPECT_FALSE(p.required()) << name << "." << p.name << " should have a default";
    }
  }
}

TEST(CodecSchemas, VqF4ParametersAreTheFirstStageConfigs) {
  std::vector<std::string> names;
  for (const auto& p : registry().get(Kind::Codec, "vq-f4").factory->params) names.push_back(p.name);
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("double_z", "z_channels", "resolution", "in_channels", "out_ch",
                                                     "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
                                                     "embed_dim", "n_embed", "force_not_quantize", "encoder_weights",
                                                     "decoder_weights"));
  EXPECT_TRUE(registry().get(Kind::Codec, "pixel").factory->params.empty());
}

// ---------------------------------------------------------------------------------------
// Conformance: the codec contract (and the generic checks) for both codecs.

TEST(CodecConformance, BothCodecsPass) {
  const host::RegisteredPlugin& plugin = registry().get(Kind::Codec, "vq-f4");
  const host::ConformanceReport report = host::check_plugins(registry(), plugin.library->path, runtime());
  std::ostringstream text;
  host::print_report(report, text);
  std::cout << text.str();
  EXPECT_FALSE(report.failed()) << text.str();
  for (const std::string id : {"codec/vq-f4", "codec/pixel"}) {
    bool contract_passed = false;
    for (const auto& r : report.results) contract_passed |= r.plugin == id && r.check == "codec contract" && r.passed;
    EXPECT_TRUE(contract_passed) << id << " did not pass the codec contract\n" << text.str();
  }
}

}  // namespace
}  // namespace admis::test::codecs
