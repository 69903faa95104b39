// Data-parallel generator training with real processes under `admis launch` (TCPStore on
// 127.0.0.1, Gloo): 2 ranks x half of each batch give the weights and EMA of 1 process
// with the whole batch, and a checkpoint written by 2 ranks resumes in 1 process exactly
// where an uninterrupted single-process run is. Processes rather than threads because the
// step's draws come from the process-wide generator, as in production.
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "admis/host/distributed.h"
#include "admis/host/generation.h"
#include "admis/host/train_generator.h"
#include "admis/host/weights.h"
#include "support/support.h"
#include "unit/generate/generate_test_util.h"
#include "dist_util.h"
#include "unit/train/toy.h"

using namespace admis;
using namespace admis::host;
namespace fs = boost::filesystem;

namespace {

// The test denoiser without its dropout layer: dropout draws per rank (as PyTorch's DDP
// does), so only a model without it can match one process exactly. GroupNorm, unlike
// batch norm, is per sample and keeps the equality.
struct PlainDenoiserNetImpl : torch::nn::Module {
  PlainDenoiserNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 16, 3).padding(1)));
    norm = register_module("norm", torch::nn::GroupNorm(4, 16));
    time = register_module("time", torch::nn::Linear(1, 16));
    context_proj = register_module("context_proj", torch::nn::Linear(8, 16));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 3, 3).padding(1)));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Linear time{nullptr}, context_proj{nullptr};
};
TORCH_MODULE(PlainDenoiserNet);

class PlainDenoiser : public Denoiser {
 public:
  torch::nn::Module& module() override { return *net_; }
  std::int64_t in_channels() const override { return 3; }
  std::int64_t out_channels() const override { return 3; }
  std::int64_t context_size() const override { return 8; }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                        const torch::Tensor& mask) override {
    torch::Tensor h = net_->conv1(x) + net_->time(t.to(torch::kFloat32).unsqueeze(1) / 1000).unsqueeze(2).unsqueeze(3);
    torch::Tensor c = net_->context_proj(context);
    if (mask.defined()) c = c * (~mask).to(c.dtype()).unsqueeze(1);
    return net_->conv2(torch::silu(net_->norm(h + c.unsqueeze(2).unsqueeze(3))));
  }

 private:
  PlainDenoiserNet net_;
};

// Trains the plain denoiser for `steps` into `dir` (resuming what is there), in the
// process group `dist` (null: world(), from the environment). Rank `seed_rank` seeds the
// initial weights differently, so the test sees rank 0's being broadcast.
void train(const std::string& dir, std::int64_t steps, std::shared_ptr<Distributed> dist, int seed_rank = 0) {
  test::runtime();
  const torch::Tensor contexts = test::TableContexts(30, 8).read(0, 30).embeddings;
  torch::manual_seed(11 + 5 * seed_rank);
  PlainDenoiser model;
  test::IdentityCodec codec;
  test::ToyReader reader(6, 5);  // 30 images: batches of 8, 8, 8, 6 (the short one splits 3/3)
  test::ToyFlip flip;
  auto ddpm = test::create<Scheduler>(Kind::Scheduler, "ddpm", {});
  GeneratorTrainOptions o;
  o.steps = steps;
  o.batch_size = 8;
  o.image_size = 16;
  o.lr = 2e-3;
  o.t_0 = 4;
  o.context_dropout = 0.3;
  o.save_every = 3;
  o.preview_count = 0;
  o.workers = 0;
  o.log_every = 2;
  o.seed = 5;
  o.grad_clip = 1.0;
  o.distributed = std::move(dist);
  o.progress = &std::cerr;
  train_generator(model, codec, *ddpm, reader, {&flip}, contexts, nullptr, o, dir);
}

void expect_close_files(const std::string& a, const std::string& b, const std::string& file, double tolerance) {
  const StateDict x = read_safetensors(a + "/" + file), y = read_safetensors(b + "/" + file);
  ASSERT_EQ(x.size(), y.size()) << file;
  for (const auto& [k, v] : x) EXPECT_TRUE(test::all_close(v, y.at(k), tolerance)) << file << ": " << k;
}

}  // namespace

// The worker the test below starts as separate processes (skipped unless started so).
TEST(DistributedWorker, TrainGenerator) {
  const char* dir = std::getenv("ADMIS_TEST_GENERATOR_DIR");
  if (!dir) GTEST_SKIP() << "started by the launch tests only";
  const DistEnv env = dist_env_from_environment();
  train(dir, std::atoi(std::getenv("ADMIS_TEST_STEPS")), nullptr, env.rank);
}

TEST(GeneratorDataParallel, TwoRanksMatchOneAndResumeInOne) {
  const std::string two = test::temp_dir("gen_dp_two");
  auto launch = [&](std::int64_t steps) {
    return test::run_command(fmt::format(
        "ADMIS_TEST_GENERATOR_DIR={} ADMIS_TEST_STEPS={} ADMIS_DIST_TIMEOUT=60 timeout 300 {} launch --nproc-per-node 2 "
        "--no-admis -- {} --gtest_filter=DistributedWorker.TrainGenerator",
        two, steps, test::admis_exe(), test::self_exe()));
  };
  // 5 steps: four full batches and the short one of the first epoch, and a checkpoint at 3.
  const auto r = launch(5);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("data-parallel over 2 ranks"));
  EXPECT_EQ(test::read_text(two + "/metrics.csv").find("step,epoch"), 0u);

  const std::string one = test::temp_dir("gen_dp_one");
  train(one, 5, std::make_shared<Distributed>());
  for (const char* file : {"denoiser_raw.safetensors", "denoiser.safetensors"})
    expect_close_files(one, two, file, 1e-5);
  // The logged losses are the whole batch's, as one process logs them.
  const std::string csv_one = test::read_text(one + "/metrics.csv"), csv_two = test::read_text(two + "/metrics.csv");
  auto losses = [](const std::string& csv) {
    std::vector<double> out;
    std::istringstream in(csv);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) out.push_back(std::stod(line.substr(line.find(',', line.find(',') + 1) + 1)));
    return out;
  };
  const auto l1 = losses(csv_one), l2 = losses(csv_two);
  ASSERT_EQ(l1.size(), l2.size());
  for (std::size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5) << "row " << i;

  // The 2-rank checkpoint of step 3 resumed by one process to step 5 ends where the
  // single process did.
  const std::string resumed = test::temp_dir("gen_dp_resumed");
  fs::create_directories(resumed + "/checkpoints");
  fs::copy_directory(two + "/checkpoints/step-3", resumed + "/checkpoints/step-3");
  for (const char* f : {"model.safetensors", "ema.safetensors", "optimizer.safetensors"})
    fs::copy_file(two + "/checkpoints/step-3/" + f, resumed + "/checkpoints/step-3/" + f);
  train(resumed, 5, std::make_shared<Distributed>());
  for (const char* file : {"denoiser_raw.safetensors", "denoiser.safetensors"})
    expect_close_files(one, resumed, file, 1e-5);
}
