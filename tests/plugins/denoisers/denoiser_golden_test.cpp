// Golden regression of idiff-unet, one file per condition_type: seeded weights (every
// parameter overwritten, since the reference zero-initialises the output paths), seeded
// inputs, and eps in eval mode (context, masked rows, no context) and in train mode (the
// component dropout drawn from a seeded default generator). 'AdaGN' also records the
// unconditional model and 'AddPlusGN' a learned empty context.
//
// Golden files: tests/golden/denoisers_idiff_unet_<condition_type>.safetensors. To
// re-record them after an intended change:
//   ADMIS_RECORD_GOLDEN=1 build/bin/test_denoisers --gtest_filter='*DenoiserGolden*'
// and review the diff of the regenerated files.

#include <boost/algorithm/string/case_conv.hpp>
#include <boost/filesystem.hpp>
#include <cstdlib>

#include "denoisers_test_util.h"

namespace admis::test::denoisers {
namespace {

constexpr std::uint64_t kSeed = 2024;

bool recording() {
  const char* v = std::getenv("ADMIS_RECORD_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

// Configurations recorded per condition type, keyed by a tag.
std::vector<std::pair<std::string, ParamMap>> golden_cases(const std::string& type) {
  std::vector<std::pair<std::string, ParamMap>> cases = {{"conditional", small_params(type)}};
  if (type == "AdaGN")
    cases.push_back({"unconditional", small_params(type, {{"is_context_conditional", Value(false)}})});
  if (type == "AddPlusGN")
    cases.push_back({"learned_empty", small_params(type, {{"learn_empty_context", Value(true)}})});
  return cases;
}

StateDict run_case(const std::string& tag, const ParamMap& params) {
  runtime();  // constructing the runtime seeds the generator; do that before seeding here
  auto unet = make_unet(params);
  randomize(*unet, kSeed);
  torch::manual_seed(kSeed + 1);
  const torch::Tensor x = torch::randn({3, 3, 8, 8});
  const torch::Tensor t = torch::tensor({0, 500, 999}, torch::kInt64);
  const torch::Tensor context = torch::randn({3, 16});
  const torch::Tensor mask = torch::tensor({false, true, false});
  StateDict out;
  torch::NoGradGuard no_grad;
  unet->module().eval();
  out[tag + ".eps"] = unet->forward(x, t, context);
  out[tag + ".eps_masked"] = unet->forward(x, t, context, mask);
  out[tag + ".eps_no_context"] = unet->forward(x, t);
  unet->module().train();
  torch::manual_seed(kSeed + 2);
  out[tag + ".eps_train"] = unet->forward(x, t, context, mask);
  return out;
}

class DenoiserGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(DenoiserGolden, IdiffUNetReproducesTheRecordedEps) {
  const std::string type = GetParam();
  const std::string path = golden_dir() + "/denoisers_idiff_unet_" + boost::algorithm::to_lower_copy(type) +
                           ".safetensors";
  const auto cases = golden_cases(type);
  if (recording()) {
    StateDict golden;
    for (const auto& [tag, params] : cases) golden.merge(run_case(tag, params));
    host::write_safetensors(golden, path,
                            {{"denoiser", "idiff-unet"},
                             {"condition_type", type},
                             {"recorded_with", "ADMIS_RECORD_GOLDEN=1 test_denoisers"}});
    std::cout << "recorded " << path << std::endl;
  }
  if (!boost::filesystem::exists(path)) {
    FAIL() << "golden file " << path << " is missing; record it with ADMIS_RECORD_GOLDEN=1 test_denoisers "
           << "--gtest_filter='*DenoiserGolden*'";
  }
  const StateDict golden = host::read_safetensors(path);
  for (const auto& [tag, params] : cases) {
    for (const auto& [key, actual] : run_case(tag, params)) {
      ASSERT_TRUE(golden.count(key)) << path << " has no '" << key << "'";
      const torch::Tensor& expected = golden.at(key);
      ASSERT_GT(expected.abs().max().item<double>(), 1e-3) << key << " is trivially zero";
      // The same computation, possibly with another thread count or BLAS build.
      EXPECT_TRUE(all_close(actual, expected, tolerance(expected, 1e-4))) << key;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ConditionTypes, DenoiserGolden, ::testing::Values("CA", "AdaGN", "AddPlusGN", "DiffAE"));

}  // namespace
}  // namespace admis::test::denoisers
