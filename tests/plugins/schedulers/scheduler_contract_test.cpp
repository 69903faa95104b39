// Contract and behaviour of the four schedulers: the declared schemas, parameter and
// argument errors (their messages name the plugin and the parameter), and the properties
// each sampler is defined by (visited timesteps, which steps use noise, the textbook vs
// ADMIS previous alpha, DDIM's eta = 1 limit, respacing, the learned variance range).

#include <gmock/gmock.h>

#include <functional>

#include "schedulers_test_util.h"

namespace admis::test::schedulers {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kSchedulers = {"ddpm", "ddim", "ddim-admis", "respaced-ddpm"};

using admis::test::error_of;

std::string creation_error(const std::string& name, const ParamMap& params) {
  return error_of([&] { make_scheduler(name, params); });
}

// --- schemas ------------------------------------------------------------------------------

TEST(SchedulerSchema, EveryParameterHasADefaultAndADoc) {
  const std::map<std::string, std::vector<std::string>> expected = {
      {"ddpm", {"num_train_timesteps", "schedule", "schedule_k", "schedule_beta_min", "schedule_beta_max"}},
      {"ddim",
       {"num_train_timesteps", "schedule", "schedule_k", "schedule_beta_min", "schedule_beta_max",
        "num_inference_steps", "eta", "clip_x0", "timestep_spacing"}},
      {"ddim-admis",
       {"num_train_timesteps", "schedule", "schedule_k", "schedule_beta_min", "schedule_beta_max",
        "num_inference_steps", "eta", "clip_x0"}},
      {"respaced-ddpm",
       {"num_train_timesteps", "schedule", "timestep_respacing", "learn_sigma", "fixed_variance", "clip_denoised",
        "rescale_timesteps"}},
  };
  for (const auto& [name, params] : expected) {
    const auto& factory = *registry().get(Kind::Scheduler, name).factory;
    std::vector<std::string> declared;
    for (const ParamSpec& p : factory.params) {
      declared.push_back(p.name);
      EXPECT_FALSE(p.required()) << name << "." << p.name << " has no default";
      EXPECT_FALSE(p.doc.empty()) << name << "." << p.name << " has no doc";
      if (p.type == ParamType::Int || p.type == ParamType::Float) {
        EXPECT_TRUE(p.min.has_value()) << name << "." << p.name << " has no range";
      }
    }
    EXPECT_THAT(declared, ::testing::UnorderedElementsAreArray(params)) << name;
    EXPECT_FALSE(factory.summary.empty()) << name;
  }
}

TEST(SchedulerSchema, DefaultsAreTheReferenceSettings) {
  auto ddim_admis = make_scheduler("ddim-admis");
  EXPECT_EQ(ddim_admis->num_steps(), 50);  // ADMIS samples with 50 DDIM steps, eta 0
  EXPECT_FALSE(ddim_admis->uses_noise(0));
  EXPECT_EQ(make_scheduler("ddpm")->num_steps(), 1000);
  auto respaced = make_scheduler("respaced-ddpm");  // guided-diffusion's diffusion_defaults()
  EXPECT_EQ(respaced->num_steps(), 1000);
  EXPECT_FALSE(respaced->expects_learned_variance());
  for (const auto& name : kSchedulers) EXPECT_EQ(make_scheduler(name)->kind(), Kind::Scheduler);
}

// --- parameter errors ---------------------------------------------------------------------

TEST(SchedulerParameters, UnknownScheduleNamesThePluginAndParameter) {
  for (const auto& name : kSchedulers) {
    const std::string message = creation_error(name, {{"schedule", Value("quadratic")}});
    EXPECT_THAT(message, HasSubstr("scheduler/" + name)) << message;
    EXPECT_THAT(message, HasSubstr("'schedule'")) << message;
    EXPECT_THAT(message, HasSubstr("quadratic")) << message;
  }
  // guided-diffusion has no warped cosine.
  EXPECT_THAT(creation_error("respaced-ddpm", {{"schedule", Value("cosine_warped")}}), HasSubstr("'schedule'"));
}

TEST(SchedulerParameters, RespacingThatDoesNotDivide) {
  const std::string message = creation_error("respaced-ddpm", {{"timestep_respacing", Value("300,300,300,300")}});
  EXPECT_THAT(message, HasSubstr("scheduler/respaced-ddpm"));
  EXPECT_THAT(message, HasSubstr("'timestep_respacing'"));
  EXPECT_THAT(message, HasSubstr("cannot divide section of 250 steps into 300"));

  const std::string ddim = creation_error("respaced-ddpm", {{"timestep_respacing", Value("ddim999")}});
  EXPECT_THAT(ddim, HasSubstr("scheduler/respaced-ddpm"));
  EXPECT_THAT(ddim, HasSubstr("'timestep_respacing'"));
  EXPECT_THAT(ddim, HasSubstr("cannot create exactly 999 steps with an integer stride"));

  const std::string too_many = creation_error("respaced-ddpm", {{"timestep_respacing", Value("2000")}});
  EXPECT_THAT(too_many, HasSubstr("cannot divide section of 1000 steps into 2000"));
}

TEST(SchedulerParameters, MalformedRespacing) {
  for (const std::string bad : {"abc", "10,,20", "10,", "ddim", "ddimx", "0", "-5", "1"}) {
    const std::string message = creation_error("respaced-ddpm", {{"timestep_respacing", Value(bad)}});
    EXPECT_THAT(message, HasSubstr("scheduler/respaced-ddpm")) << bad;
    EXPECT_THAT(message, HasSubstr("'timestep_respacing'")) << bad << ": " << message;
  }
}

TEST(SchedulerParameters, MoreInferenceStepsThanTrainingSteps) {
  for (const std::string name : {"ddim", "ddim-admis"}) {
    const std::string message = creation_error(
        name, {{"num_train_timesteps", Value(std::int64_t{100})}, {"num_inference_steps", Value(std::int64_t{101})}});
    EXPECT_THAT(message, HasSubstr("scheduler/" + name));
    EXPECT_THAT(message, HasSubstr("'num_inference_steps' = 101 exceeds num_train_timesteps = 100"));
  }
}

TEST(SchedulerParameters, SchedulesThatReachBetaOne) {
  // Linear betas end at (1000 / T) * 0.02: 1 at T = 20.
  for (const auto& name : kSchedulers) {
    const std::string message = creation_error(name, {{"num_train_timesteps", Value(std::int64_t{20})}});
    EXPECT_THAT(message, HasSubstr("scheduler/" + name));
    EXPECT_THAT(message, HasSubstr("'schedule' = 'linear' with num_train_timesteps = 20"));
  }
  EXPECT_NO_THROW(make_scheduler("ddpm", {{"num_train_timesteps", Value(std::int64_t{21})}}));
  const std::string zero_max =
      creation_error("ddpm", {{"schedule", Value("cosine")}, {"schedule_beta_max", Value(0.0)}});
  EXPECT_THAT(zero_max, HasSubstr("every beta must lie in (0, 1)"));
}

TEST(SchedulerParameters, WarpedCosineBoundsInOrder) {
  const std::string message = creation_error(
      "ddim",
      {{"schedule", Value("cosine_warped")}, {"schedule_beta_min", Value(0.2)}, {"schedule_beta_max", Value(0.1)}});
  EXPECT_THAT(message, HasSubstr("scheduler/ddim"));
  EXPECT_THAT(message, HasSubstr("'schedule_beta_min' = 0.2"));
  EXPECT_THAT(message, HasSubstr("'schedule_beta_max' = 0.1"));
}

TEST(SchedulerParameters, RescaledTimestepsMustStayIntegers) {
  const std::string message = creation_error(
      "respaced-ddpm", {{"num_train_timesteps", Value(std::int64_t{3000})}, {"rescale_timesteps", Value(true)}});
  EXPECT_THAT(message, HasSubstr("scheduler/respaced-ddpm"));
  EXPECT_THAT(message, HasSubstr("'rescale_timesteps'"));
  EXPECT_THAT(message, HasSubstr("3000 does not divide 1000"));
}

TEST(SchedulerParameters, RangesAreEnforcedByTheSchema) {
  for (const std::string name : {"ddim", "ddim-admis"}) {
    const std::string message = creation_error(name, {{"eta", Value(1.5)}});
    EXPECT_THAT(message, HasSubstr("scheduler/" + name));
    EXPECT_THAT(message, HasSubstr("'eta'"));
    EXPECT_THAT(creation_error(name, {{"num_inference_steps", Value(std::int64_t{0})}}),
                HasSubstr("'num_inference_steps'"));
  }
  EXPECT_THAT(creation_error("ddim", {{"timestep_spacing", Value("linspace")}}), HasSubstr("'timestep_spacing'"));
  EXPECT_THAT(creation_error("respaced-ddpm", {{"fixed_variance", Value("learned")}}), HasSubstr("'fixed_variance'"));
}

// --- argument errors ----------------------------------------------------------------------

TEST(SchedulerArguments, StepOutOfRange) {
  for (const auto& name : kSchedulers) {
    auto s = make_scheduler(name);
    const auto x = torch::zeros({1, 3, 2, 2});
    for (std::int64_t bad : {std::int64_t{-1}, s->num_steps()}) {
      const std::string message = error_of([&] { s->step(x, bad, x, x); });
      EXPECT_THAT(message, HasSubstr("scheduler/" + name));
      EXPECT_THAT(message, HasSubstr("step " + std::to_string(bad) + " is out of range")) << message;
      EXPECT_THAT(error_of([&] { s->model_timestep(bad); }), HasSubstr("out of range"));
    }
  }
}

TEST(SchedulerArguments, ModelOutputShape) {
  const auto x = torch::zeros({2, 3, 4, 4});
  for (const auto& name : kSchedulers) {
    auto s = make_scheduler(name);
    const std::string message = error_of([&] { s->step(torch::zeros({2, 6, 4, 4}), 1, x, x); });
    EXPECT_THAT(message, HasSubstr("scheduler/" + name));
    EXPECT_THAT(message, HasSubstr("model_output has shape [2, 6, 4, 4], expected [2, 3, 4, 4]"));
  }
  auto learned = make_scheduler("respaced-ddpm", {{"learn_sigma", Value(true)}});
  EXPECT_TRUE(learned->expects_learned_variance());
  const std::string message = error_of([&] { learned->step(x, 1, x, x); });
  EXPECT_THAT(message, HasSubstr("expected [2, 6, 4, 4]"));
  EXPECT_THAT(message, HasSubstr("learn_sigma"));
}

TEST(SchedulerArguments, MissingNoise) {
  const auto x = torch::zeros({2, 3, 4, 4});
  for (const auto& [name, params] : std::vector<std::pair<std::string, ParamMap>>{{"ddpm", {}},
                                                                                  {"ddim", {{"eta", Value(1.0)}}},
                                                                                  {"ddim-admis", {{"eta", Value(0.5)}}},
                                                                                  {"respaced-ddpm", {}}}) {
    auto s = make_scheduler(name, params);
    ASSERT_TRUE(s->uses_noise(0)) << name;
    const std::string message = error_of([&] { s->step(x, 0, x, torch::Tensor()); });
    EXPECT_THAT(message, HasSubstr("scheduler/" + name));
    EXPECT_THAT(message, HasSubstr("step 0 adds noise and needs a noise tensor of x_t's shape [2, 3, 4, 4]"));
    EXPECT_THAT(error_of([&] { s->step(x, 0, x, torch::zeros({2, 3})); }), HasSubstr("got [2, 3]"));
  }
}

TEST(SchedulerArguments, AddNoiseTimesteps) {
  for (const auto& name : kSchedulers) {
    auto s = make_scheduler(name);
    const auto x = torch::zeros({2, 3, 4, 4});
    const std::string range = error_of([&] {
      s->add_noise(x, x, torch::tensor({std::int64_t{0}, std::int64_t{1000}}));
    });
    EXPECT_THAT(range, HasSubstr("scheduler/" + name));
    EXPECT_THAT(range, HasSubstr("timesteps must lie in [0, 1000), got values from 0 to 1000"));
    EXPECT_THAT(error_of([&] { s->add_noise(x, x, torch::tensor({0.5f, 1.0f})); }), HasSubstr("integer tensor [2]"));
    EXPECT_THAT(error_of([&] {
                  s->add_noise(x, torch::zeros({2, 3}), torch::tensor({0, 1}));
                }),
                HasSubstr("eps has shape [2, 3]"));
  }
}

// --- training: q(x_t | x_0) --------------------------------------------------------------

TEST(SchedulerAddNoise, IsTheForwardProcess) {
  const auto x0 = pattern({3, 2, 4, 4}, 0.3, 0.2), eps = pattern({3, 2, 4, 4}, 0.7, 0.4);
  const auto t = torch::tensor({std::int64_t{0}, std::int64_t{417}, std::int64_t{999}});
  for (const auto& name : kSchedulers) {
    auto s = make_scheduler(name);
    const auto a = s->alpha_bars().index_select(0, t).to(torch::kFloat64).view({3, 1, 1, 1});
    const auto expected = a.sqrt() * x0.to(torch::kFloat64) + (1 - a).sqrt() * eps.to(torch::kFloat64);
    const auto x_t = s->add_noise(x0, eps, t);
    EXPECT_EQ(x_t.scalar_type(), torch::kFloat32) << name;
    EXPECT_TRUE(all_close(x_t, expected, 1e-6)) << name;
  }
}

// --- ddpm ---------------------------------------------------------------------------------

// From x_t = q(x_t | x0, eps) with the true eps, a step predicts x0 and moves to the
// posterior mean of q(x_{t-1} | x_t, x0).
TEST(Ddpm, StepIsThePosteriorMeanGivenTheTrueEps) {
  auto s = make_scheduler("ddpm");
  const auto x0 = pattern({1, 3, 4, 4}, 0.4, 0.0, 0.9), eps = pattern({1, 3, 4, 4}, 0.9, 1.0);
  for (std::int64_t t : {std::int64_t{1}, std::int64_t{500}, std::int64_t{999}}) {
    const std::int64_t i = 999 - t;
    ASSERT_EQ(s->model_timestep(i), t);
    const auto x_t = s->add_noise(x0, eps, torch::tensor({t}));
    const StepOutput out = s->step(eps, i, x_t, torch::zeros_like(x_t));
    EXPECT_TRUE(all_close(out.pred_x0, x0, 2e-3)) << "t = " << t;  // 1/sqrt(alpha_bar) amplifies rounding
    const double beta = s->betas()[t].item<double>(), a = s->alpha_bars()[t].item<double>();
    const double a_prev = s->alpha_bars()[t - 1].item<double>();
    const auto mean = (std::sqrt(a_prev) * beta / (1 - a)) * x0.to(torch::kFloat64) +
                      (std::sqrt(1 - beta) * (1 - a_prev) / (1 - a)) * x_t.to(torch::kFloat64);
    EXPECT_TRUE(all_close(out.mean, mean, 1e-4)) << "t = " << t;
    EXPECT_TRUE(all_close(torch::exp(out.log_variance), torch::full_like(x_t, beta), 1e-6 * beta)) << "t = " << t;
  }
}

TEST(Ddpm, StepLeavesItsInputsAlone) {
  auto s = make_scheduler("ddpm");
  const auto x = pattern({2, 3, 4, 4}, 0.3, 0.0), eps = pattern({2, 3, 4, 4}, 0.5, 0.0),
             z = pattern({2, 3, 4, 4}, 0.7, 0.0);
  const auto x_copy = x.clone(), eps_copy = eps.clone(), z_copy = z.clone();
  const auto first = s->step(eps, 10, x, z).prev_sample;
  EXPECT_TRUE(x.equal(x_copy));
  EXPECT_TRUE(eps.equal(eps_copy));
  EXPECT_TRUE(z.equal(z_copy));
  EXPECT_TRUE(s->step(eps, 10, x, z).prev_sample.equal(first));
}

// --- ddim (textbook) vs ddim-admis --------------------------------------------------------

// The alpha_bar each step moves to, read as in the parity test: x_t = sqrt(alpha_bar_t),
// eps = 0, prev_sample = sqrt(alpha_bar_prev).
std::vector<double> previous_alphas(const Scheduler& s) {
  std::vector<double> out;
  for (std::int64_t i = 0; i < s.num_steps(); ++i) {
    const auto x_t = s.alpha_bars()[s.model_timestep(i)].sqrt().view({1, 1, 1, 1});
    out.push_back(s.step(torch::zeros_like(x_t), i, x_t, torch::Tensor()).prev_sample.square().item<double>());
  }
  return out;
}

TEST(Ddim, LeadingSpacingStepsToTheNextVisitedTimestep) {
  auto s = make_scheduler("ddim");
  ASSERT_EQ(s->num_steps(), 50);
  const auto a_prev = previous_alphas(*s);
  const auto alpha_bars = s->alpha_bars();
  for (std::int64_t i = 0; i < 50; ++i) {
    const std::int64_t t = s->model_timestep(i);
    EXPECT_EQ(t, 980 - 20 * i);
    const double expected = t >= 20 ? alpha_bars[t - 20].item<double>() : 1.0;
    EXPECT_NEAR(a_prev[static_cast<std::size_t>(i)], expected, 1e-6 * expected) << "t = " << t;
  }
}

TEST(Ddim, TextbookAndAdmisDifferOnlyInThePreviousAlpha) {
  auto textbook = make_scheduler("ddim"), admis = make_scheduler("ddim-admis");
  ASSERT_EQ(textbook->num_steps(), admis->num_steps());
  const auto a_textbook = previous_alphas(*textbook), a_admis = previous_alphas(*admis);
  const auto alpha_bars = textbook->alpha_bars();
  for (std::int64_t i = 0; i < 50; ++i) {
    const std::int64_t t = textbook->model_timestep(i);
    ASSERT_EQ(admis->model_timestep(i), t);
    // ADMIS: alphas_prev[t - 20] = alpha_bar_{t-21}, and 1 for the steps at t = 20 and 0.
    const double admis_expected = t - 21 >= 0 ? alpha_bars[t - 21].item<double>() : 1.0;
    EXPECT_NEAR(a_admis[static_cast<std::size_t>(i)], admis_expected, 1e-6 * admis_expected) << "t = " << t;
    if (t == 20) {  // textbook: alpha_bar_0
      EXPECT_LT(a_textbook[static_cast<std::size_t>(i)], 0.99995);
    }
  }
  // That lookup alone changes the samples.
  const auto x_T = pattern({1, 3, 4, 4}, 0.37, 0.0);
  const auto eps = [](const torch::Tensor& x, std::int64_t) { return 0.1 * x; };
  EXPECT_GT((sample(*textbook, x_T, eps) - sample(*admis, x_T, eps)).abs().max().item<double>(), 1e-3);
}

TEST(Ddim, TrailingSpacingStartsAtTheLastTrainingTimestep) {
  auto s = make_scheduler("ddim",
                          {{"num_inference_steps", Value(std::int64_t{30})}, {"timestep_spacing", Value("trailing")}});
  ASSERT_EQ(s->num_steps(), 30);
  EXPECT_EQ(s->model_timestep(0), 999);
  EXPECT_EQ(s->model_timestep(1), 966);  // round(29 * 1000 / 30) - 1
  EXPECT_EQ(s->model_timestep(29), 32);  // round(1000 / 30) - 1
  for (std::int64_t i = 1; i < 30; ++i) EXPECT_LT(s->model_timestep(i), s->model_timestep(i - 1));
}

// eta = 1 with every timestep visited gives DDPM's posterior variance
// beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.
TEST(Ddim, EtaOneIsThePosteriorVariance) {
  auto s = make_scheduler("ddim", {{"num_inference_steps", Value(std::int64_t{1000})}, {"eta", Value(1.0)}});
  const auto x = torch::zeros({1, 1, 1, 1});
  for (std::int64_t t : {std::int64_t{1}, std::int64_t{10}, std::int64_t{500}, std::int64_t{999}}) {
    const std::int64_t i = 999 - t;
    ASSERT_TRUE(s->uses_noise(i));
    const double a = s->alpha_bars()[t].item<double>(), a_prev = s->alpha_bars()[t - 1].item<double>();
    const double expected = (1 - a_prev) / (1 - a) * (1 - a / a_prev);
    const double variance = torch::exp(s->step(x, i, x, x).log_variance).item<double>();
    EXPECT_NEAR(variance, expected, 2e-6 * expected) << "t = " << t;
  }
  EXPECT_FALSE(s->uses_noise(999)) << "the last step goes to alpha_bar = 1 with sigma = 0";
}

TEST(Ddim, EtaZeroIsDeterministicAndClipKeepsX0InRange) {
  auto s = make_scheduler("ddim", {{"clip_x0", Value(true)}});
  for (std::int64_t i = 0; i < s->num_steps(); ++i) EXPECT_FALSE(s->uses_noise(i));
  const auto x = pattern({2, 3, 4, 4}, 0.3, 0.0, 3.0), eps = pattern({2, 3, 4, 4}, 0.8, 0.5, 2.0);
  const StepOutput out = s->step(eps, 40, x, torch::Tensor());
  EXPECT_LE(out.pred_x0.abs().max().item<float>(), 1.0f);
  EXPECT_GT(out.pred_x0.abs().max().item<float>(), 0.99f);
  // Unclipped, the same step predicts well outside [-1, 1].
  EXPECT_GT(make_scheduler("ddim")->step(eps, 40, x, torch::Tensor()).pred_x0.abs().max().item<float>(), 1.5f);
}

TEST(DdimAdmis, StepCountAndNoiseFollowTheReferenceLoop) {
  // skip = 1000 // 30 = 33; range(0, 1000, 33) has 31 entries.
  auto s = make_scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{30})}, {"eta", Value(0.2)}});
  ASSERT_EQ(s->num_steps(), 31);
  EXPECT_EQ(s->model_timestep(0), 990);
  EXPECT_EQ(s->model_timestep(30), 0);
  // With eta > 0 the reference draws noise at every step, even where sigma is 0.
  for (std::int64_t i = 0; i < 31; ++i) EXPECT_TRUE(s->uses_noise(i));
  const auto x = pattern({1, 3, 2, 2}, 0.3, 0.0), eps = pattern({1, 3, 2, 2}, 0.5, 0.0);
  const auto z = torch::ones({1, 3, 2, 2});
  const StepOutput last = s->step(eps, 30, x, z);
  EXPECT_TRUE(last.prev_sample.equal(last.mean)) << "sigma is 0 at the last step";
  const StepOutput first = s->step(eps, 0, x, z);
  EXPECT_GT((first.prev_sample - first.mean).abs().min().item<float>(), 0.0f);
}

TEST(DdimAdmis, ClipX0ClipsX0AndRederivesEpsFromIt) {
  auto plain = make_scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{20})}});
  auto clipped = make_scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{20})},
                                               {"clip_x0", Value(true)}});
  // Step 0 visits t = 950 and moves to alphas_prev[900] = alpha_bar[899] (the reference's
  // lookup); there a small eps error puts x0 far outside [-1, 1].
  ASSERT_EQ(plain->model_timestep(0), 950);
  const auto x = pattern({2, 3, 4, 4}, 0.9, 0.0, 3.0), eps = pattern({2, 3, 4, 4}, 0.8, 0.5, 2.0);
  const StepOutput a = plain->step(eps, 0, x, torch::Tensor()), b = clipped->step(eps, 0, x, torch::Tensor());
  EXPECT_GT(a.pred_x0.abs().max().item<float>(), 5.0f);
  EXPECT_TRUE(b.pred_x0.equal(a.pred_x0.clamp(-1, 1)));
  const double a_t = plain->alpha_bars()[950].item<double>(), a_prev = plain->alpha_bars()[899].item<double>();
  const auto eps_from_x0 = (x - b.pred_x0 * std::sqrt(a_t)) / std::sqrt(1 - a_t);
  const auto expected = b.pred_x0 * std::sqrt(a_prev) + eps_from_x0 * std::sqrt(1 - a_prev);
  EXPECT_LT((b.prev_sample - expected).abs().max().item<double>(), 1e-4);
  EXPECT_GT((b.prev_sample - a.prev_sample).abs().max().item<double>(), 0.1);
  // Where x0 already lies in [-1, 1] the clip changes nothing.
  const auto x_small = pattern({1, 3, 2, 2}, 0.05, 0.0), eps_small = pattern({1, 3, 2, 2}, 0.05, 0.1);
  const StepOutput c = clipped->step(eps_small, 19, x_small, torch::Tensor());
  ASSERT_LE(c.pred_x0.abs().max().item<float>(), 1.0f);
  EXPECT_TRUE(c.prev_sample.equal(plain->step(eps_small, 19, x_small, torch::Tensor()).prev_sample));
}

// --- respaced-ddpm ------------------------------------------------------------------------

std::vector<std::int64_t> visited(const Scheduler& s) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = s.num_steps() - 1; i >= 0; --i) out.push_back(s.model_timestep(i));
  return out;  // ascending, as guided-diffusion's timestep_map
}

TEST(RespacedDdpm, SpaceTimestepsAsGuidedDiffusion) {
  std::vector<std::int64_t> stride40;
  for (std::int64_t t = 0; t < 1000; t += 40) stride40.push_back(t);
  EXPECT_EQ(visited(*make_scheduler("respaced-ddpm", {{"timestep_respacing", Value("ddim25")}})), stride40);

  // 300 steps in thirds of 100: 2 steps (0, 99), 3 steps (100, 150, 199), 4 (200, 233, 266, 299).
  const auto sections = visited(*make_scheduler(
      "respaced-ddpm", {{"num_train_timesteps", Value(std::int64_t{300})}, {"timestep_respacing", Value("2,3,4")}}));
  EXPECT_EQ(sections, (std::vector<std::int64_t>{0, 99, 100, 150, 199, 200, 233, 266, 299}));

  // Python's round() rounds halves to even: 3 steps over sections of 6 (stride 2.5) keep
  // 0, round(2.5) = 2 (not 3) and 5.
  const auto halves = visited(*make_scheduler("respaced-ddpm", {{"num_train_timesteps", Value(std::int64_t{18})},
                                                                {"schedule", Value("cosine")},  // linear needs T > 20
                                                                {"timestep_respacing", Value("3,3,3")}}));
  EXPECT_EQ(halves, (std::vector<std::int64_t>{0, 2, 5, 6, 8, 11, 12, 14, 17}));

  EXPECT_EQ(make_scheduler("respaced-ddpm", {{"timestep_respacing", Value("")}})->num_steps(), 1000);
}

TEST(RespacedDdpm, RescaledTimesteps) {
  auto s = make_scheduler("respaced-ddpm", {{"num_train_timesteps", Value(std::int64_t{500})},
                                            {"timestep_respacing", Value("50")},
                                            {"rescale_timesteps", Value(true)}});
  auto plain = make_scheduler("respaced-ddpm",
                              {{"num_train_timesteps", Value(std::int64_t{500})}, {"timestep_respacing", Value("50")}});
  for (std::int64_t i = 0; i < s->num_steps(); ++i) EXPECT_EQ(s->model_timestep(i), 2 * plain->model_timestep(i));
  EXPECT_EQ(s->model_timestep(0), 998);
}

TEST(RespacedDdpm, OnlyTheLastStepIsNoiseFree) {
  auto s = make_scheduler("respaced-ddpm", {{"timestep_respacing", Value("10")}});
  for (std::int64_t i = 0; i < 9; ++i) EXPECT_TRUE(s->uses_noise(i));
  EXPECT_FALSE(s->uses_noise(9));
  EXPECT_EQ(s->model_timestep(9), 0);
}

// The learned range: v = -1 is the clipped posterior variance (fixed_small), v = +1 is
// beta' (fixed_large, except at index 0 where fixed_large takes the posterior's too).
TEST(RespacedDdpm, LearnedRangeSpansTheFixedVariances) {
  const ParamMap spacing = {{"timestep_respacing", Value("25")}};
  auto with = [&](ParamMap extra) {
    ParamMap p = spacing;
    for (auto& [k, v] : extra) p[k] = v;
    return make_scheduler("respaced-ddpm", p);
  };
  auto learned = with({{"learn_sigma", Value(true)}});
  auto small = with({{"fixed_variance", Value("fixed_small")}});
  auto large = with({{"fixed_variance", Value("fixed_large")}});
  const auto x = pattern({1, 3, 2, 2}, 0.4, 0.0), eps = pattern({1, 3, 2, 2}, 0.9, 0.0);
  const auto ones = torch::ones_like(x);
  for (std::int64_t i : {std::int64_t{0}, std::int64_t{12}, std::int64_t{23}, std::int64_t{24}}) {
    const auto z = i < 24 ? torch::zeros_like(x) : torch::Tensor();
    const auto lv_low = learned->step(torch::cat({eps, -ones}, 1), i, x, z).log_variance;
    const auto lv_high = learned->step(torch::cat({eps, ones}, 1), i, x, z).log_variance;
    const auto lv_mid = learned->step(torch::cat({eps, 0 * ones}, 1), i, x, z).log_variance;
    EXPECT_TRUE(all_close(lv_low, small->step(eps, i, x, z).log_variance, 1e-6)) << "step " << i;
    EXPECT_TRUE(all_close(lv_mid, 0.5 * (lv_low + lv_high), 1e-6)) << "step " << i;
    if (i < 24) {
      EXPECT_TRUE(all_close(lv_high, large->step(eps, i, x, z).log_variance, 1e-6)) << "step " << i;
    }
    // The mean does not depend on the variance model.
    EXPECT_TRUE(learned->step(torch::cat({eps, ones}, 1), i, x, z).mean.equal(small->step(eps, i, x, z).mean));
  }
  EXPECT_TRUE(all_close(small->step(eps, 24, x, {}).log_variance, large->step(eps, 24, x, {}).log_variance, 0.0));
}

// Without respacing and clipping, guided-diffusion's posterior mean from the predicted x0
// is Ho et al.'s 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps): the
// respaced-ddpm and ddpm plugins agree (up to float32 vs float64 schedule rounding).
TEST(RespacedDdpm, WithoutRespacingItIsTheDdpmStep) {
  auto guided = make_scheduler("respaced-ddpm", {{"clip_denoised", Value(false)}});
  auto ddpm = make_scheduler("ddpm");
  ASSERT_EQ(guided->num_steps(), ddpm->num_steps());
  const auto x = pattern({1, 3, 4, 4}, 0.3, 0.0), eps = pattern({1, 3, 4, 4}, 0.8, 0.2);
  for (std::int64_t i : {std::int64_t{0}, std::int64_t{500}, std::int64_t{990}}) {
    ASSERT_EQ(guided->model_timestep(i), ddpm->model_timestep(i));
    const auto z = torch::zeros_like(x);
    EXPECT_TRUE(all_close(guided->step(eps, i, x, z).mean, ddpm->step(eps, i, x, z).mean, 1e-4)) << "step " << i;
    EXPECT_TRUE(all_close(guided->step(eps, i, x, z).log_variance, ddpm->step(eps, i, x, z).log_variance, 1e-4))
        << "fixed_large is beta_t at step " << i;
  }
}

TEST(RespacedDdpm, NoiseIsScaledByTheStandardDeviation) {
  auto s = make_scheduler("respaced-ddpm", {{"timestep_respacing", Value("100")}, {"learn_sigma", Value(true)}});
  const auto x = pattern({1, 3, 2, 2}, 0.4, 0.0), eps = pattern({1, 3, 2, 2}, 0.9, 0.0),
             v = pattern({1, 3, 2, 2}, 0.6, 0.3, 0.9), z = pattern({1, 3, 2, 2}, 0.5, 1.0);
  const StepOutput out = s->step(torch::cat({eps, v}, 1), 50, x, z);
  EXPECT_TRUE(all_close(out.prev_sample, out.mean + torch::exp(0.5 * out.log_variance) * z, 1e-7));
}

}  // namespace
}  // namespace admis::test::schedulers
