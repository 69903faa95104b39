// Golden regression files of the four schedulers, and the independent reference-loop
// golden of ddim-admis.
//
// tests/golden/scheduler-<name>.safetensors holds, for a few parameter sets of the plugin
// (prefix "<config>."): betas, alpha_bars, the visited timesteps and which steps use noise,
// add_noise at three timesteps, the StepOutput of five steps (first, second, middle, last
// two) on fixed generator-free inputs, and the result of the whole sampling loop with an
// analytic model. To re-record them after an intended change:
//   ADMIS_RECORD_GOLDEN=1 build/bin/test_schedulers --gtest_filter='*SchedulerGolden*'
// and review the diff. Without the variable a missing file fails the test.
//
// tests/golden/scheduler-ddim-admis-reference-loop.safetensors is not recorded by this test:
// it is the output of ddim_admis_reference_loop.py (in this folder), a Python
// re-implementation of ADMIS's sample_ddim, and is regenerated with
//   /usr/bin/python3 tests/plugins/schedulers/ddim_admis_reference_loop.py
//       tests/golden/scheduler-ddim-admis-reference-loop.safetensors
// (one command line).

#include <gmock/gmock.h>

#include <boost/filesystem.hpp>
#include <cstdlib>
#include <iostream>
#include <set>

#include "schedulers_test_util.h"

namespace admis::test::schedulers {
namespace {

// The golden values come from this code on this kind of machine; the tolerance leaves
// room only for vectorisation differences between CPUs: 1e-5 * max(1, max|value|).
constexpr double kGoldenTolerance = 1e-5;

struct GoldenConfig {
  std::string name;
  ParamMap params;
};

const std::map<std::string, std::vector<GoldenConfig>>& golden_configs() {
  static const std::map<std::string, std::vector<GoldenConfig>> configs = {
      {"ddpm",
       {{"linear", {}},
        {"cosine", {{"schedule", Value("cosine")}}},
        {"cosine_warped",
         {{"num_train_timesteps", Value(std::int64_t{500})},
          {"schedule", Value("cosine_warped")},
          {"schedule_k", Value(2.0)},
          {"schedule_beta_min", Value(1e-4)},
          {"schedule_beta_max", Value(0.05)}}}}},
      {"ddim",
       {{"default", {}},
        {"eta_clip_trailing",
         {{"num_inference_steps", Value(std::int64_t{20})},
          {"eta", Value(0.5)},
          {"clip_x0", Value(true)},
          {"timestep_spacing", Value("trailing")}}}}},
      {"ddim-admis",
       {{"default", {}}, {"eta_30_steps", {{"num_inference_steps", Value(std::int64_t{30})}, {"eta", Value(0.3)}}}}},
      {"respaced-ddpm",
       {{"learned_100", {{"timestep_respacing", Value("100")}, {"learn_sigma", Value(true)}}},
        {"fixed_small_ddim25_cosine",
         {{"schedule", Value("cosine")},
          {"timestep_respacing", Value("ddim25")},
          {"fixed_variance", Value("fixed_small")},
          {"clip_denoised", Value(false)}}},
        {"fixed_large_sections",
         {{"num_train_timesteps", Value(std::int64_t{500})},
          {"timestep_respacing", Value("10,20,30")},
          {"rescale_timesteps", Value(true)}}}}},
  };
  return configs;
}

bool recording() {
  const char* v = std::getenv("ADMIS_RECORD_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

// Fixed inputs: x_t [2,3,4,4], eps, the variance value v in (-1, 1) and noise.
torch::Tensor golden_x() { return pattern({2, 3, 4, 4}, 0.37, 0.1, 1.5); }
torch::Tensor golden_model_output(const Scheduler& s, const torch::Tensor& eps, const torch::Tensor& x) {
  if (!s.expects_learned_variance()) return eps;
  return torch::cat({eps, 0.95 * torch::tanh(x)}, 1);
}
torch::Tensor golden_noise(std::int64_t step) { return pattern({2, 3, 4, 4}, 0.53, 1.0 + 0.1 * step); }

StateDict record_config(const Scheduler& s) {
  StateDict out;
  const std::int64_t n = s.num_steps();
  out["betas"] = s.betas();
  out["alpha_bars"] = s.alpha_bars();
  torch::Tensor timesteps = torch::empty({n}, torch::kLong), noisy = torch::empty({n}, torch::kLong);
  for (std::int64_t i = 0; i < n; ++i) {
    timesteps[i] = s.model_timestep(i);
    noisy[i] = static_cast<std::int64_t>(s.uses_noise(i));
  }
  out["timesteps"] = timesteps;
  out["uses_noise"] = noisy;

  const std::int64_t T = s.num_train_timesteps();
  out["add_noise"] = s.add_noise(pattern({3, 2, 4, 4}, 0.29, 0.0), pattern({3, 2, 4, 4}, 0.61, 0.5),
                                 torch::tensor({std::int64_t{0}, T / 2, T - 1}));

  const torch::Tensor x = golden_x();
  const torch::Tensor eps = pattern({2, 3, 4, 4}, 0.21, 0.7, 0.8);
  for (std::int64_t i : std::set<std::int64_t>{0, 1, n / 2, n - 2, n - 1}) {
    const StepOutput step =
        s.step(golden_model_output(s, eps, x), i, x, s.uses_noise(i) ? golden_noise(i) : torch::Tensor());
    const std::string prefix = "step" + std::to_string(i) + ".";
    out[prefix + "prev_sample"] = step.prev_sample.contiguous();
    if (step.pred_x0.defined()) out[prefix + "pred_x0"] = step.pred_x0.contiguous();
    if (step.mean.defined()) out[prefix + "mean"] = step.mean.contiguous();
    if (step.log_variance.defined()) out[prefix + "log_variance"] = step.log_variance.contiguous();
  }
  out["sample"] = sample(
      s, x, [&](const torch::Tensor& xt, std::int64_t t) { return golden_model_output(s, analytic_eps(xt, t), xt); },
      golden_noise);
  return out;
}

StateDict record_golden(const std::string& plugin) {
  StateDict golden;
  for (const auto& config : golden_configs().at(plugin)) {
    auto s = make_scheduler(plugin, config.params);
    for (auto& [key, tensor] : record_config(*s)) golden[config.name + "." + key] = tensor;
  }
  return golden;
}

std::string golden_path(const std::string& plugin) { return golden_dir() + "/scheduler-" + plugin + ".safetensors"; }

class SchedulerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SchedulerGolden, ReproducesTheRecordedSchedulesAndSteps) {
  const std::string plugin = GetParam();
  const std::string path = golden_path(plugin);
  const StateDict produced = record_golden(plugin);
  if (recording()) {
    host::write_safetensors(produced, path,
                            {{"scheduler", plugin}, {"recorded_with", "ADMIS_RECORD_GOLDEN=1 test_schedulers"}});
    std::cout << "recorded " << path << std::endl;
  }
  if (!boost::filesystem::exists(path))
    FAIL() << "golden file " << path << " is missing; record it with ADMIS_RECORD_GOLDEN=1 test_schedulers "
           << "--gtest_filter='*SchedulerGolden*'";
  const StateDict golden = host::read_safetensors(path);

  std::set<std::string> produced_keys, golden_keys;
  for (const auto& [k, v] : produced) produced_keys.insert(k);
  for (const auto& [k, v] : golden) golden_keys.insert(k);
  EXPECT_EQ(produced_keys, golden_keys) << "the golden was recorded with other outputs; re-record it";
  for (const auto& [key, expected] : golden) {
    auto it = produced.find(key);
    if (it == produced.end()) continue;
    const torch::Tensor& actual = it->second;
    if (expected.scalar_type() == torch::kLong) {
      EXPECT_TRUE(actual.equal(expected)) << key;
    } else {
      EXPECT_TRUE(all_close(actual, expected, kGoldenTolerance * std::max(1.0, expected.abs().max().item<double>())))
          << key;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Schedulers, SchedulerGolden, ::testing::Values("ddpm", "ddim", "ddim-admis", "respaced-ddpm"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (auto& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

// --- ddim-admis against the independent Python sample_ddim --------------------------------

// Every run of ddim_admis_reference_loop.py: x_T through the whole loop with
// eps(x, t) = 0.1 tanh(x) + t / 1000. The arithmetic is the reference's float32, so the
// results agree to rounding: 1e-5 * max(1, max|x0|) (the samples reach |x0| ~ 500).
TEST(DdimAdmisReferenceLoop, MatchesThePythonSampleDdim) {
  const std::string path = golden_dir() + "/scheduler-ddim-admis-reference-loop.safetensors";
  if (!boost::filesystem::exists(path))
    FAIL() << "golden file " << path << " is missing; generate it with /usr/bin/python3 "
           << "tests/plugins/schedulers/ddim_admis_reference_loop.py " << path;
  const StateDict golden = host::read_safetensors(path);
  struct Run {
    std::string name;
    std::int64_t steps;
    double eta;
  };
  for (const Run& run :
       {Run{"ddim50", 50, 0.0}, Run{"ddim25", 25, 0.0}, Run{"ddim30", 30, 0.0}, Run{"ddim25_eta0.5", 25, 0.5}}) {
    SCOPED_TRACE(run.name);
    auto s = make_scheduler("ddim-admis", {{"num_inference_steps", Value(run.steps)}, {"eta", Value(run.eta)}});
    const torch::Tensor& visited = golden.at(run.name + ".timesteps");
    ASSERT_EQ(s->num_steps(), visited.size(0));
    for (std::int64_t i = 0; i < s->num_steps(); ++i) EXPECT_EQ(s->model_timestep(i), visited[i].item<std::int64_t>());
    NoiseFunction noise;
    if (run.eta > 0) {
      const torch::Tensor drawn = golden.at(run.name + ".noise");
      ASSERT_EQ(drawn.size(0), s->num_steps()) << "the reference draws noise at every step when eta > 0";
      noise = [drawn](std::int64_t i) { return drawn[i]; };
    }
    const torch::Tensor x0 = sample(*s, golden.at("x_T"), analytic_eps, noise);
    const torch::Tensor& expected = golden.at(run.name + ".x0");
    const auto result = all_close(x0, expected, kGoldenTolerance * std::max(1.0, expected.abs().max().item<double>()));
    EXPECT_TRUE(result);
    if (result) std::cout << "[ golden   ] ddim-admis " << run.name << " vs Python: " << result.message() << std::endl;
  }
}

}  // namespace
}  // namespace admis::test::schedulers
