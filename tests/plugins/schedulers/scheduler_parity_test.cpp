// Parity of the schedulers with the reference code's own numbers (../shared/parity):
//
// generative_shared.json, ddim_trajectory: IDiff-Face/ADMIS's T = 1000 linear schedule,
//   betas, alpha_bars, sigmas and alphas_prev [1000]; tolerance 1e-6 relative. The schedule
//   is read through the public interface: betas()/alpha_bars() directly, sigma_t as the
//   noise a `ddpm` step adds, alphas_prev as the alpha_bar a `ddim-admis` step moves to.
//   The sampled x0_ddim50/25 need the IDiff-Face UNet and are tested with it (denoisers);
//   the sampler's arithmetic is pinned here by a golden from an independent Python
//   re-implementation of sample_ddim (scheduler_golden_test.cpp).
//
// adm_shared.json, adm_ffhq_unet: guided-diffusion's 100-step respacing of the 1000-step
//   linear schedule with learned variance: timestep_map (exact), respaced_betas, and
//   p_mean_variance's mean, variance, log_variance, pred_xstart for the fixture's
//   model_output; tolerance max abs diff <= 1e-4 * max(1, max|value|) as stated there.

#include <gmock/gmock.h>

#include <iostream>

#include "schedulers_test_util.h"

namespace admis::test::schedulers {
namespace {

constexpr double kScheduleRelativeTolerance = 1e-6;  // generative_shared.json, ddim_trajectory

// EXPECT_TRUE that also prints the achieved difference, so the log shows the margin.
void expect_close(const ::testing::AssertionResult& result, const std::string& what) {
  EXPECT_TRUE(result) << what;
  if (result) std::cout << "[ parity   ] " << what << ": " << result.message() << std::endl;
}

TEST(DdimTrajectoryFixture, BetasAndAlphaBarsOfDdpmAndDdimAdmis) {
  for (const std::string name : {"ddpm", "ddim", "ddim-admis"}) {
    auto s = make_scheduler(name);
    EXPECT_EQ(s->num_train_timesteps(), 1000) << name;
    EXPECT_EQ(s->betas().scalar_type(), torch::kFloat32) << name;
    expect_close(relative_close(s->betas(), ddim_io("betas"), kScheduleRelativeTolerance), name + " betas");
    expect_close(relative_close(s->alpha_bars(), ddim_io("alpha_bars"), kScheduleRelativeTolerance),
                 name + " alpha_bars");
  }
}

// A ddpm step with eps = 0 from x = 0 with noise z = 1 returns exactly sigma_t, for every
// t > 1; at t <= 1 the reference adds no noise (prev_sample is the mean) and sigma_t is
// read from the step's log variance, log sigma_t^2.
TEST(DdimTrajectoryFixture, SigmasAreTheNoiseScaleOfDdpmSteps) {
  auto ddpm = make_scheduler("ddpm");
  ASSERT_EQ(ddpm->num_steps(), 1000);
  const auto zero = torch::zeros({1, 1, 1, 1}), one = torch::ones({1, 1, 1, 1});
  torch::Tensor from_noise = torch::empty({1000}), from_log_variance = torch::empty({1000});
  for (std::int64_t i = 0; i < ddpm->num_steps(); ++i) {
    const std::int64_t t = ddpm->model_timestep(i);
    ASSERT_EQ(t, 999 - i);
    ASSERT_EQ(ddpm->uses_noise(i), t > 1) << "t = " << t;
    const StepOutput out = ddpm->step(zero, i, zero, ddpm->uses_noise(i) ? one : torch::Tensor());
    from_noise[t] = (out.prev_sample - out.mean).item<float>();
    from_log_variance[t] = torch::exp(0.5 * out.log_variance).item<float>();
    if (t <= 1) {
      EXPECT_TRUE(out.prev_sample.equal(out.mean)) << "t = " << t << " must add no noise";
    }
  }
  const auto sigmas = ddim_io("sigmas");
  expect_close(relative_close(from_noise.slice(0, 2), sigmas.slice(0, 2), kScheduleRelativeTolerance),
               "sigmas[2:] (ddpm noise scale)");
  expect_close(relative_close(from_log_variance, sigmas, kScheduleRelativeTolerance), "sigmas (ddpm log variance)");
}

// With x_t = sqrt(alpha_bar_t) and eps = 0 the predicted x0 is 1 and the step lands on
// sqrt(alpha_bar_prev): squaring prev_sample reads the alpha_bar the step moves to.
torch::Tensor previous_alphas(const Scheduler& s) {
  torch::Tensor a_prev = torch::empty({s.num_steps()});
  const auto alpha_bars = s.alpha_bars();
  for (std::int64_t i = 0; i < s.num_steps(); ++i) {
    const auto x_t = alpha_bars[s.model_timestep(i)].sqrt().view({1, 1, 1, 1});
    const auto prev = s.step(torch::zeros_like(x_t), i, x_t, torch::Tensor()).prev_sample;
    a_prev[i] = prev.square().item<float>();
  }
  return a_prev;
}

// With skip = 1 (1000 steps) step t moves to alphas_prev[t - 1] for t >= 1 and to 1 at
// t = 0, which covers alphas_prev[0..998]; alphas_prev[999] (alpha_bar_998) is never
// used by the sampler, it is checked against alpha_bars() by its definition.
TEST(DdimTrajectoryFixture, AlphasPrevIsTheAlphaBarDdimAdmisStepsTo) {
  auto s = make_scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{1000})}});
  ASSERT_EQ(s->num_steps(), 1000);
  const auto alphas_prev = ddim_io("alphas_prev");
  const auto a_prev = previous_alphas(*s);
  torch::Tensor expected = torch::empty({1000});
  for (std::int64_t i = 0; i < 1000; ++i) {
    const std::int64_t t = s->model_timestep(i);
    expected[i] = t >= 1 ? alphas_prev[t - 1].item<float>() : 1.0f;
  }
  expect_close(relative_close(a_prev, expected, kScheduleRelativeTolerance),
               "alphas_prev[0:999] (ddim-admis, 1000 steps)");
  expect_close(relative_close(s->alpha_bars()[998], alphas_prev[999], kScheduleRelativeTolerance),
               "alphas_prev[999] = alpha_bar_998");
  EXPECT_EQ(alphas_prev[0].item<float>(), 1.0f);
}

// The ADMIS configuration: 50 steps, skip 20; step t moves to alphas_prev[t - 20], i.e.
// alpha_bar_{t-21}, and the last two steps (t = 20 and t = 0) to 1.
TEST(DdimTrajectoryFixture, DdimAdmisFiftyStepsUseTheReferenceLookup) {
  auto s = make_scheduler("ddim-admis");
  ASSERT_EQ(s->num_steps(), 50);
  const auto alphas_prev = ddim_io("alphas_prev");
  torch::Tensor expected = torch::empty({50});
  for (std::int64_t i = 0; i < 50; ++i) {
    const std::int64_t t = s->model_timestep(i);
    EXPECT_EQ(t, 980 - 20 * i);
    expected[i] = t - 20 >= 0 ? alphas_prev[t - 20].item<float>() : 1.0f;
  }
  expect_close(relative_close(previous_alphas(*s), expected, kScheduleRelativeTolerance),
               "alphas_prev lookup (ddim-admis, 50 steps)");
}

// --- guided-diffusion ADM: respaced-ddpm -------------------------------------------------

std::shared_ptr<Scheduler> adm_scheduler() {
  return make_scheduler("respaced-ddpm", {{"num_train_timesteps", Value(std::int64_t{1000})},
                                          {"schedule", Value("linear")},
                                          {"timestep_respacing", Value("100")},
                                          {"learn_sigma", Value(true)},
                                          {"clip_denoised", Value(true)}});
}

TEST(AdmFixture, TimestepMapIsExact) {
  auto s = adm_scheduler();
  const auto map = adm_io("timestep_map");
  ASSERT_EQ(s->num_steps(), map.size(0));
  for (std::int64_t k = 0; k < map.size(0); ++k)
    EXPECT_EQ(s->model_timestep(s->num_steps() - 1 - k), map[k].item<std::int64_t>()) << "respaced index " << k;
}

// With v = +1 the learned-range variance is beta'_k itself, for every respaced index.
// Tolerance: relative 2e-6, the float32 rounding of log beta'_k (|log| < 10) and its exp.
TEST(AdmFixture, RespacedBetasAreTheUpperEndOfTheLearnedRange) {
  auto s = adm_scheduler();
  const auto expected = adm_io("respaced_betas");
  const std::int64_t S = s->num_steps();
  const auto x = torch::zeros({1, 1, 1, 1});
  const auto model_output = torch::cat({torch::zeros({1, 1, 1, 1}), torch::ones({1, 1, 1, 1})}, 1);
  torch::Tensor betas = torch::empty({S}, torch::kFloat64);
  for (std::int64_t k = 0; k < S; ++k) {
    const std::int64_t i = S - 1 - k;
    const auto out = s->step(model_output, i, x, s->uses_noise(i) ? torch::zeros_like(x) : torch::Tensor());
    betas[k] = torch::exp(out.log_variance).item<double>();
  }
  expect_close(relative_close(betas, expected, 2e-6), "respaced_betas");
}

struct AdmRow {
  torch::Tensor x, model_output, mean, variance, log_variance, pred_xstart;
  std::int64_t respaced_index, t;
};

AdmRow adm_row(std::int64_t r) {
  AdmRow row;
  for (auto [field, key] : std::vector<std::pair<torch::Tensor*, const char*>>{{&row.x, "x"},
                                                                               {&row.model_output, "model_output"},
                                                                               {&row.mean, "mean"},
                                                                               {&row.variance, "variance"},
                                                                               {&row.log_variance, "log_variance"},
                                                                               {&row.pred_xstart, "pred_xstart"}})
    *field = adm_io(key).narrow(0, r, 1);
  row.respaced_index = adm_io("respaced_index")[r].item<std::int64_t>();
  row.t = adm_io("t")[r].item<std::int64_t>();
  return row;
}

StepOutput adm_step(const Scheduler& s, const AdmRow& row, const torch::Tensor& model_output) {
  const std::int64_t i = s.num_steps() - 1 - row.respaced_index;
  const auto noise = s.uses_noise(i) ? torch::zeros_like(row.x) : torch::Tensor();
  const StepOutput out = s.step(model_output, i, row.x, noise);
  EXPECT_TRUE(out.prev_sample.equal(out.mean)) << "zero noise must leave the mean";
  return out;
}

void expect_matches(const StepOutput& out, const AdmRow& row, bool with_mean, const std::string& label) {
  const std::string of = " (" + label + ", respaced index " + std::to_string(row.respaced_index) + ")";
  expect_close(all_close(out.log_variance, row.log_variance, fixture_tolerance(row.log_variance)), "log_variance" + of);
  expect_close(all_close(torch::exp(out.log_variance), row.variance, fixture_tolerance(row.variance)), "variance" + of);
  if (!with_mean) return;
  expect_close(all_close(out.mean, row.mean, fixture_tolerance(row.mean)), "mean" + of);
  expect_close(all_close(out.pred_x0, row.pred_xstart, fixture_tolerance(row.pred_xstart)), "pred_xstart" + of);
}

// Rows whose model_output was produced at the timestep the sampler gives the model
// (t == timestep_map[respaced_index]) are reproduced from the fixture alone.
//
// The fixture's other row does not satisfy this: row 0 has t = 990 but respaced index 99,
// whose model timestep is timestep_map[99] = 999. Its model_output is the UNet at 990,
// while its mean and pred_xstart do not follow from that output (the eps they imply
// differs from it by up to 0.1): they are evidently p_mean_variance calling the UNet at
// 999 through SpacedDiffusion's wrapper. Its variance barely depends on v at index 99
// (beta' and the posterior variance nearly coincide there) and is checked; its mean and
// pred_xstart are checked in the next test.
TEST(AdmFixture, PMeanVarianceFromTheFixtureModelOutput) {
  auto s = adm_scheduler();
  int consistent = 0;
  for (std::int64_t r = 0; r < adm_io("x").size(0); ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    const AdmRow row = adm_row(r);
    const bool same_timestep = s->model_timestep(s->num_steps() - 1 - row.respaced_index) == row.t;
    consistent += same_timestep;
    expect_matches(adm_step(*s, row, row.model_output), row, same_timestep,
                   "fixture model_output, row " + std::to_string(r));
  }
  ASSERT_GE(consistent, 1) << "no fixture row has t == timestep_map[respaced_index]; nothing checks the mean";
}

// For a row whose eps the fixture lacks, the eps p_mean_variance used is recovered from its
// pred_xstart where that is unclipped (eps = (sqrt(1/a) x - x0) / sqrt(1/a - 1)), and
// chosen to overshoot the clip where it is clipped. The step must then give the fixture's
// pred_xstart and mean: this checks the clip and posterior coefficients at index 99.
TEST(AdmFixture, PosteriorMeanAtTheLastRespacedIndex) {
  auto s = adm_scheduler();
  for (std::int64_t r = 0; r < adm_io("x").size(0); ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    const AdmRow row = adm_row(r);
    const std::int64_t k = row.respaced_index;
    const double a = s->alpha_bars()[s->model_timestep(s->num_steps() - 1 - k)].item<double>();
    const auto x0 = row.pred_xstart.to(torch::kFloat64);
    const auto target = torch::where(x0.abs() < 1, x0, 2 * x0);
    const auto eps =
        ((std::sqrt(1 / a) * row.x.to(torch::kFloat64) - target) / std::sqrt(1 / a - 1)).to(torch::kFloat32);
    const auto C = row.x.size(1);
    const auto model_output = torch::cat({eps, row.model_output.narrow(1, C, C)}, 1);
    expect_matches(adm_step(*s, row, model_output), row, true,
                   "eps recovered from pred_xstart, row " + std::to_string(r));
  }
}

}  // namespace
}  // namespace admis::test::schedulers
