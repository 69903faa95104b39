// The generative side's building blocks and loops: EMA schedule, Adam, cosine warm
// restarts, the DDPM schedule buffers against the reference checkpoint, the reverse loop
// with guidance, generator training (loss falls, bit-exact resume, the reference's
// checkpoint files load in PyTorch) and identity sampling (deterministic, shardable,
// resumable).
#include <boost/filesystem.hpp>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "admis/host/generation.h"
#include "admis/host/train_generator.h"
#include "admis/host/weights.h"
#include "support/support.h"
#include "unit/generate/generate_test_util.h"
#include "unit/train/toy.h"

using namespace admis;
using namespace admis::host;
namespace fs = boost::filesystem;

namespace {

std::shared_ptr<Scheduler> scheduler(const std::string& name, std::map<std::string, Value> params = {}) {
  return test::create<Scheduler>(Kind::Scheduler, name, params);
}

std::string file_bytes(const std::string& path) { return test::read_text(path); }

// Every file under `dir`, relative path -> bytes (hidden temporary folders excluded).
std::map<std::string, std::string> tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (fs::recursive_directory_iterator it(dir), end; it != end; ++it)
    if (fs::is_regular_file(it->path())) out[fs::relative(it->path(), dir).string()] = file_bytes(it->path().string());
  return out;
}

GeneratorTrainOptions tiny_options(std::int64_t steps) {
  GeneratorTrainOptions o;
  o.steps = steps;
  o.batch_size = 8;
  o.image_size = 16;
  o.lr = 2e-3;
  o.t_0 = 50;
  o.save_every = 10;
  o.preview_count = 2;
  o.workers = 2;
  o.log_every = 10;
  o.seed = 3;
  return o;
}

// A fresh tiny denoiser (same initial weights every call) trained for `steps` on the toy set
// in `dir`, without previews; `adjust` edits the options first.
GeneratorTrainSummary train_tiny(const std::string& dir, std::int64_t steps, bool flip = false,
                                 const std::function<void(GeneratorTrainOptions&)>& adjust = {}) {
  const torch::Tensor contexts = test::TableContexts(48, 8).read(0, 48).embeddings;
  torch::manual_seed(0);
  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::ToyReader reader(6, 8);
  test::ToyFlip toy_flip;
  auto ddpm = scheduler("ddpm");
  auto o = tiny_options(steps);
  o.preview_count = 0;
  if (adjust) adjust(o);
  std::vector<Augmenter*> augmenters;
  if (flip) augmenters.push_back(&toy_flip);
  return train_generator(model, codec, *ddpm, reader, augmenters, contexts, nullptr, o, dir);
}

// Every tensor of <a>/<file> equals the one of <b>/<file>, bit for bit.
void expect_same_tensors(const std::string& a, const std::string& b, const std::string& file) {
  const StateDict x = read_safetensors(a + "/" + file), y = read_safetensors(b + "/" + file);
  ASSERT_EQ(x.size(), y.size()) << file;
  for (const auto& [k, v] : x) EXPECT_TRUE(torch::equal(v, y.at(k))) << file << ": " << k;
}

}  // namespace

TEST(Ema, DecayFollowsTheWarmupSchedule) {
  test::TinyDenoiser model;
  ExponentialMovingAverage ema(model.module(), EmaOptions{});
  EXPECT_EQ(ema.decay(0), 0.0);
  EXPECT_EQ(ema.decay(1), 0.0);
  EXPECT_DOUBLE_EQ(ema.decay(2), 1 - std::pow(2.0, -0.75));
  EXPECT_DOUBLE_EQ(ema.decay(1001), 1 - std::pow(1001.0, -0.75));
  EXPECT_DOUBLE_EQ(ema.decay(100000000), 0.9999);
}

TEST(Ema, AveragesParametersWithTheDecayOfItsStep) {
  test::TinyDenoiser model;
  ExponentialMovingAverage ema(model.module(), EmaOptions{});
  const torch::Tensor before = ema.averaged().at("conv1.weight").clone();
  {
    torch::NoGradGuard g;
    for (auto& p : model.module().parameters()) p.add_(1.0);
  }
  ema.step(model.module());  // decay(0) = 0: a copy
  EXPECT_TRUE(torch::allclose(ema.averaged().at("conv1.weight"), before + 1));
  ema.step(model.module());
  ema.step(model.module());  // decay(2)
  {
    torch::NoGradGuard g;
    for (auto& p : model.module().parameters()) p.add_(1.0);
  }
  ema.step(model.module());  // decay(3) = 1 - 3^-0.75
  const double d = 1 - std::pow(3.0, -0.75);
  EXPECT_TRUE(torch::allclose(ema.averaged().at("conv1.weight"), d * (before + 1) + (1 - d) * (before + 2), 1e-6, 1e-6));
  EXPECT_EQ(ema.optimization_step(), 4);
}

TEST(Adam, MatchesTorchOptimAdam) {
  torch::manual_seed(0);
  const torch::Tensor w0 = torch::randn({5, 4});
  torch::Tensor a = w0.clone().requires_grad_(true), b = w0.clone().requires_grad_(true);
  Adam ours({{"w", a}});
  torch::optim::Adam reference({b}, torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 6; ++step) {
    const torch::Tensor target = torch::full({5, 4}, static_cast<double>(step));
    ours.zero_grad();
    (a - target).pow(2).sum().backward();
    ours.step(1e-2);
    reference.zero_grad();
    (b - target).pow(2).sum().backward();
    reference.step();
  }
  EXPECT_TRUE(test::all_close(a.detach(), b.detach(), 1e-6));
  const StateDict state = ours.state();
  EXPECT_EQ(state.at("step.w").item<std::int64_t>(), 6);
}

TEST(CosineWarmRestarts, RestartsAtT0ThenTwiceAsLong) {
  const CosineWarmRestarts lr{1e-4, 10000, 2, 0};
  EXPECT_DOUBLE_EQ(lr.at(0), 1e-4);
  EXPECT_NEAR(lr.at(5000), 0.5e-4, 1e-15);
  EXPECT_DOUBLE_EQ(lr.at(10000), 1e-4);            // restart
  EXPECT_NEAR(lr.at(20000), 0.5e-4, 1e-15);         // halfway through a 20000-step cycle
  EXPECT_DOUBLE_EQ(lr.at(30000), 1e-4);            // next restart
  std::int64_t t_cur = 0, t_i = 0;
  lr.position(35000, t_cur, t_i);
  EXPECT_EQ(t_cur, 5000);
  EXPECT_EQ(t_i, 40000);
}

TEST(DdpmScheduleBuffers, EqualTheReferenceCheckpointsBuffers) {
  const StateDict reference = read_weights(test::parity_file("idiff_unet_ca.ckpt"));
  const StateDict ours = ddpm_schedule_buffers(scheduler("ddpm")->betas());
  ASSERT_EQ(ours.size(), 8u);
  for (const auto& [key, value] : ours) {
    ASSERT_TRUE(reference.count(key)) << key;
    EXPECT_TRUE(test::all_close(value, reference.at(key).to(torch::kFloat32), 1e-6 * reference.at(key).abs().max().item<double>()))
        << key;
  }
}

TEST(SampleReverse, GuidanceCombinesConditionalAndUnconditionalEps) {
  torch::manual_seed(1);
  test::TinyDenoiser model;
  auto ddim = scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{4})}});
  const torch::Tensor x_T = torch::randn({2, 3, 8, 8});
  const torch::Tensor context = torch::randn({2, 8});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const torch::Tensor plain = sample_reverse(model, *ddim, x_T, context, 1.0, gen);
  const torch::Tensor again = sample_reverse(model, *ddim, x_T, context, 1.0, gen);
  EXPECT_TRUE(torch::equal(plain, again));
  EXPECT_TRUE(model.module().is_training()) << "sample_reverse must restore the training mode";

  // w = 2 by hand: eps = -eps_uncond + 2 eps_cond at every step.
  model.module().eval();
  torch::Tensor x = x_T;
  {
    torch::NoGradGuard g;
    for (std::int64_t i = 0; i < ddim->num_steps(); ++i) {
      const torch::Tensor t = torch::full({2}, ddim->model_timestep(i), torch::kInt64);
      const torch::Tensor eps = 2 * model.forward(x, t, context, {}) - model.forward(x, t, {}, {});
      x = ddim->step(eps, i, x, {}).prev_sample;
    }
  }
  model.module().train();
  const torch::Tensor guided = sample_reverse(model, *ddim, x_T, context, 2.0, gen);
  // One batched forward of [cond; uncond] against two separate ones: float32 rounding differs
  // with the batch's kernel choice and threading, and four DDIM steps carry it along, so the
  // tolerance is relative (1e-5 of the samples' scale).
  const double scale = std::max(1.0, x.abs().max().item<double>());
  EXPECT_TRUE(test::all_close(guided, x, 1e-5 * scale)) << "sample scale " << scale;
  EXPECT_FALSE(test::all_close(guided, plain, 1e-3));
}

TEST(TrainGenerator, LossFallsAndWritesTheReferenceLayout) {
  const std::string dir = test::temp_dir("train_generator");
  torch::manual_seed(0);
  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::ToyReader reader(6, 8);
  test::ToyFlip flip;
  auto ddpm = scheduler("ddpm");
  auto ddim = scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{5})}});
  const torch::Tensor contexts = test::TableContexts(48, 8).read(0, 48).embeddings;
  auto o = tiny_options(150);
  o.checkpoint_steps = {50};
  std::ostringstream log;
  o.progress = &log;
  const auto summary = train_generator(model, codec, *ddpm, reader, {&flip}, contexts, ddim.get(), o, dir);
  std::cout << "tiny generator loss " << summary.first_loss << " -> " << summary.last_loss << std::endl;
  EXPECT_LT(summary.last_loss, 0.8 * summary.first_loss);
  EXPECT_THAT(log.str(), ::testing::HasSubstr("[train_generator] step 150/150 loss"));
  for (const char* f : {"denoiser.safetensors", "denoiser_raw.safetensors", "metrics.csv", "samples/sample_000150.png",
                        "checkpoints/ema_averaged_model_50.ckpt", "checkpoints/model_50.ckpt",
                        "checkpoints/ema_averaged_model_150.ckpt", "checkpoints/optimization.ckpt",
                        "checkpoints/step-150/ema.safetensors"})
    EXPECT_TRUE(fs::exists(fs::path(dir) / f)) << f;

  // The released layout: 'eps_model.' + the module's keys plus the DDPM buffers; loads back
  // into the denoiser through the plugin-independent path (strip eps_model., ignore buffers).
  const StateDict ckpt = read_weights(dir + "/checkpoints/ema_averaged_model_150.ckpt");
  EXPECT_TRUE(ckpt.count("eps_model.conv1.weight"));
  EXPECT_TRUE(ckpt.count("one_minus_alphas_over_sqrt_one_minus_alpha_bars"));
  const StateDict ema = read_safetensors(dir + "/denoiser.safetensors");
  EXPECT_TRUE(torch::equal(ckpt.at("eps_model.conv1.weight"), ema.at("conv1.weight")));
}

TEST(TrainGenerator, ReferenceCheckpointsLoadAndResumeInPyTorch) {
  const std::string dir = test::temp_dir("train_generator_py");
  torch::manual_seed(0);
  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::ToyReader reader(6, 8);
  auto ddpm = scheduler("ddpm");
  const torch::Tensor contexts = test::TableContexts(48, 8).read(0, 48).embeddings;
  auto o = tiny_options(30);
  o.preview_count = 0;
  train_generator(model, codec, *ddpm, reader, {}, contexts, nullptr, o, dir);
  // PyTorch: the model file loads into a module-like dict, Adam and the scheduler resume
  // from optimization.ckpt and take one more step with the same lr as ours.
  const std::string script = dir + "/check.py";
  std::ofstream(script) << R"(import sys, torch
d = sys.argv[1]
model = torch.load(d + '/checkpoints/model_30.ckpt', map_location='cpu')
ema = torch.load(d + '/checkpoints/ema_averaged_model_30.ckpt', map_location='cpu')
assert list(model.keys()) == list(ema.keys()), 'key order differs'
names = [k for k in model if k.startswith('eps_model.')]
params = [torch.nn.Parameter(model[k].clone()) for k in names]
opt_ckpt = torch.load(d + '/checkpoints/optimization.ckpt', map_location='cpu')
assert opt_ckpt['global_step'] == 30
opt = torch.optim.Adam(params, lr=1e-4)
opt.load_state_dict(opt_ckpt['optimizer'])
sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50, T_mult=2)
sched.load_state_dict(opt_ckpt['lr_scheduler'])
for p in params: p.grad = torch.ones_like(p)
opt.step(); sched.step()
print('state', len(opt.state), 'lr %.17g' % sched.get_last_lr()[0], 'step', float(opt.state[params[0]]['step']))
)";
  const auto result = test::run_command("/usr/bin/python3 " + script + " " + dir);
  ASSERT_EQ(result.status, 0) << result.output;
  const CosineWarmRestarts lr{2e-3, 50, 2, 0};
  std::ostringstream expected;
  expected.precision(17);
  expected << "lr " << lr.at(31);
  std::cout << result.output;
  EXPECT_THAT(result.output, ::testing::HasSubstr("step 31.0"));
  const double py_lr = std::stod(result.output.substr(result.output.find("lr ") + 3));
  EXPECT_NEAR(py_lr, lr.at(31), 1e-12);
}

TEST(TrainGenerator, ResumeContinuesBitForBit) {
  auto run = [](const std::string& dir, std::int64_t steps) { train_tiny(dir, steps, /*flip=*/true); };
  const std::string straight = test::temp_dir("gen_straight"), resumed = test::temp_dir("gen_resumed");
  run(straight, 30);
  run(resumed, 20);  // stops at a checkpoint, as a killed run resumes from its last one
  run(resumed, 30);
  for (const char* f : {"denoiser.safetensors", "denoiser_raw.safetensors", "checkpoints/step-30/optimizer.safetensors"})
    expect_same_tensors(straight, resumed, f);
}

TEST(TrainGenerator, ContinuesAReferenceCheckpointBitForBit) {
  auto run = [](const std::string& dir, std::int64_t steps, const std::string& reference) {
    train_tiny(dir, steps, false, [&](GeneratorTrainOptions& o) { o.resume_from_reference = reference; });
  };
  const std::string straight = test::temp_dir("ref_straight"), first = test::temp_dir("ref_first"),
                    continued = test::temp_dir("ref_continued");
  run(straight, 40, "");
  run(first, 30, "");  // its checkpoints/ hold model_30.ckpt, ema_averaged_model_30.ckpt, optimization.ckpt
  fs::remove_all(fs::path(first) / "checkpoints" / "step-30");  // only the reference-layout files remain
  run(continued, 40, first + "/checkpoints");
  for (const char* f : {"denoiser.safetensors", "denoiser_raw.safetensors"}) expect_same_tensors(straight, continued, f);
  const std::string msg = test::error_of([&] { run(test::temp_dir("ref_missing"), 40, straight); });
  EXPECT_THAT(msg, ::testing::HasSubstr("no optimization.ckpt"));
}

TEST(LossScaler, UnscalesSkipsNonFiniteStepsAndGrows) {
  LossScaler scaler(1024.0, 3);
  torch::Tensor p = torch::zeros({2}, torch::requires_grad());
  p.mutable_grad() = torch::full({2}, 512.0);
  EXPECT_TRUE(scaler.unscale({p}));
  EXPECT_TRUE(torch::equal(p.grad(), torch::full({2}, 0.5)));
  scaler.update(true);
  scaler.update(true);
  EXPECT_EQ(scaler.scale(), 1024.0);
  scaler.update(true);  // growth_interval finite steps in a row
  EXPECT_EQ(scaler.scale(), 2048.0);
  p.mutable_grad() = torch::tensor({1.0f, std::numeric_limits<float>::infinity()});
  EXPECT_FALSE(scaler.unscale({p}));
  scaler.update(false);
  EXPECT_EQ(scaler.scale(), 1024.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

TEST(TrainGenerator, Bfloat16AutocastTrainsAndResumesExactly) {
  const torch::Tensor contexts = test::TableContexts(48, 8).read(0, 48).embeddings;
  auto run = [](const std::string& dir, std::int64_t steps) {
    return train_tiny(dir, steps, false, [](GeneratorTrainOptions& o) { o.precision = "bf16"; });
  };
  const std::string straight = test::temp_dir("bf16_straight"), resumed = test::temp_dir("bf16_resumed");
  const auto summary = run(straight, 60);
  std::cout << "bf16 loss " << summary.first_loss << " -> " << summary.last_loss << std::endl;
  EXPECT_TRUE(std::isfinite(summary.last_loss));
  EXPECT_LT(summary.last_loss, summary.first_loss);
  run(resumed, 30);
  run(resumed, 60);
  expect_same_tensors(straight, resumed, "denoiser_raw.safetensors");

  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::ToyReader reader(6, 8);
  auto ddpm = scheduler("ddpm");
  auto o = tiny_options(1);
  o.precision = "16";
  EXPECT_THAT(test::error_of([&] {
                train_generator(model, codec, *ddpm, reader, {}, contexts, nullptr, o, test::temp_dir("fp16_cpu"));
              }),
              ::testing::HasSubstr("precision 16 (float16 autocast with loss scaling) needs a CUDA device"));
}

TEST(TrainGenerator, RejectsContextsThatDoNotFit) {
  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::ToyReader reader(6, 8);
  auto ddpm = scheduler("ddpm");
  auto o = tiny_options(1);
  std::string msg = test::error_of([&] { train_generator(model, codec, *ddpm, reader, {}, {}, nullptr, o, test::temp_dir("g1")); });
  EXPECT_THAT(msg, ::testing::HasSubstr("context-conditional but no contexts"));
  msg = test::error_of(
      [&] { train_generator(model, codec, *ddpm, reader, {}, torch::zeros({47, 8}), nullptr, o, test::temp_dir("g2")); });
  EXPECT_THAT(msg, ::testing::HasSubstr("contexts have shape [47, 8], expected [48, 8]"));
}

namespace {

IdentitySamplingOptions sampling_options() {
  IdentitySamplingOptions o;
  o.identities = 5;
  o.images_per_identity = 3;
  o.batch_size = 2;
  o.generation_size = 12;
  o.output_size = 10;
  o.seed = 9;
  o.preview_identities = 2;
  return o;
}

}  // namespace

TEST(SampleIdentities, DeterministicShardableAndResumable) {
  torch::manual_seed(4);
  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::TableContexts contexts(7, 8);
  test::CopyContextFace copies(2);
  auto ddim = scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{5})}});

  const std::string full = test::temp_dir("sample_full") + "/images";
  const auto summary = sample_identities(model, codec, *ddim, contexts, {&copies}, sampling_options(), full);
  EXPECT_EQ(summary.generated, 5);
  const auto files = tree(full);
  EXPECT_EQ(files.size(), 5u * 5u);  // 3 samples + 2 context-face copies each
  EXPECT_TRUE(files.count("4/4.png"));
  EXPECT_TRUE(fs::exists(fs::path(full).parent_path() / "preview.png"));

  // The same seed gives the same images; shards 0/2 and 1/2 together give the full run.
  const std::string again = test::temp_dir("sample_again") + "/images";
  sample_identities(model, codec, *ddim, contexts, {&copies}, sampling_options(), again);
  EXPECT_EQ(tree(again), files);
  const std::string sharded = test::temp_dir("sample_sharded") + "/images";
  for (std::int64_t shard = 0; shard < 2; ++shard) {
    auto o = sampling_options();
    o.shard_index = shard;
    o.shard_count = 2;
    const auto s = sample_identities(model, codec, *ddim, contexts, {&copies}, o, sharded);
    EXPECT_EQ(s.identities, shard == 0 ? 3 : 2);
  }
  EXPECT_EQ(tree(sharded), files);

  // A different batch size does not change the images (DDIM with eta 0 uses only x_T).
  auto o = sampling_options();
  o.batch_size = 3;
  const std::string batched = test::temp_dir("sample_batched") + "/images";
  sample_identities(model, codec, *ddim, contexts, {&copies}, o, batched);
  EXPECT_EQ(tree(batched), files);

  // Resume: complete identities are skipped, a missing one (with a partial folder left by a
  // killed run) is redone identically.
  fs::remove_all(fs::path(full) / "2");
  fs::create_directories(fs::path(full) / ".2.tmp-99999");
  std::ofstream((fs::path(full) / ".2.tmp-99999" / "0.png").string()) << "partial";
  const auto resumed = sample_identities(model, codec, *ddim, contexts, {&copies}, sampling_options(), full);
  EXPECT_EQ(resumed.skipped, 4);
  EXPECT_EQ(resumed.generated, 1);
  EXPECT_EQ(tree(full), files);  // and the partial folder is gone
}

TEST(SampleIdentities, ErrorsNameTheProblem) {
  test::TinyDenoiser model;
  test::IdentityCodec codec;
  test::TableContexts contexts(3, 8);
  auto ddim = scheduler("ddim-admis", {{"num_inference_steps", Value(std::int64_t{2})}});
  auto o = sampling_options();
  std::string msg = test::error_of([&] { sample_identities(model, codec, *ddim, contexts, {}, o, test::temp_dir("s1")); });
  EXPECT_THAT(msg, ::testing::HasSubstr("5 identities from 0 requested, the context source has 3"));
  test::TableContexts wide(7, 16);
  msg = test::error_of([&] { sample_identities(model, codec, *ddim, wide, {}, o, test::temp_dir("s2")); });
  EXPECT_THAT(msg, ::testing::HasSubstr("16-dimensional embeddings, the denoiser expects 8"));
  EXPECT_THAT(test::error_of([&] { parse_shard("2/2", "sample"); }), ::testing::HasSubstr("give INDEX/COUNT"));
  EXPECT_EQ(parse_shard("1/4", "sample"), std::make_pair(std::int64_t{1}, std::int64_t{4}));
}
