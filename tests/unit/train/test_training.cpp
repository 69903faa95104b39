// Recognition training end to end on the toy problem: learning, bit-exact resume, the
// logged scalars, checkpoints, and the errors a user meets first.
#include <boost/filesystem.hpp>

#include <fstream>
#include <sstream>

#include "admis/host/event_writer.h"
#include "admis/host/manifest.h"
#include "admis/host/train_recognition.h"
#include "support/support.h"
#include "toy.h"

using namespace admis;
using namespace admis::host;
namespace fs = boost::filesystem;

namespace {

std::shared_ptr<Head> make_head(const std::string& name, std::int64_t in, std::int64_t out) {
  return test::create<Head>(Kind::Head, name, {{"in_features", in}, {"out_features", out}});
}

TrainOptions toy_options() {
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 16;
  o.lr = 0.1;
  o.stages = {1};
  o.workers = 2;
  o.seed = 11;
  o.log_every = 5;
  return o;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  for (std::string f; std::getline(ss, f, ',');) out.push_back(f);
  return out;
}

// Top-1 of the trained model on every toy sample, without augmentation, in eval mode.
double eval_accuracy(Backbone& backbone, Head& head, const DatasetReader& reader) {
  backbone.module().eval();
  head.module().eval();
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  std::vector<torch::Tensor> images;
  std::vector<std::int64_t> labels;
  for (std::int64_t i = 0; i < reader.size(); ++i) {
    std::int64_t label = 0;
    images.push_back(load_sample(reader, i, {}, gen, 112, &label));
    labels.push_back(label);
  }
  auto y = torch::tensor(labels);
  auto out = head.forward(backbone.forward(torch::stack(images)), y);
  return out.original_logits.argmax(1).eq(y).to(torch::kFloat64).mean().item<double>();
}

}  // namespace

// 6 classes (chance 1/6): 240 images, batch 16, 20 epochs = 300 steps with SGD + ArcFace
// (s 64, m 0.5) and flips. Measured: training top-1 over the last window ~1.0 and eval
// accuracy 1.0; the bounds leave room for platform differences but not for chance.
TEST(TrainRecognition, LearnsTheToyProblemWellAboveChance) {
  torch::manual_seed(0);
  test::TinyBackbone backbone(32);
  auto head = make_head("arcface", 32, 6);
  test::ToyReader reader(6, 40);
  test::ToyFlip flip;
  TrainOptions o = toy_options();
  o.epochs = 20;
  o.stages = {14, 18};
  o.warmup_steps = 30;
  o.log_every = 15;
  std::ostringstream progress;
  o.progress = &progress;
  const std::string dir = test::temp_dir("train_learn");
  // The untrained model is at chance (measured 0.17 = 1/6), so what follows is learnt.
  const double untrained = eval_accuracy(backbone, *head, reader);
  EXPECT_LT(untrained, 0.4);
  const TrainSummary s = train_recognition(backbone, *head, reader, {&flip}, o, dir);
  EXPECT_EQ(s.steps, 300);
  const double acc = eval_accuracy(backbone, *head, reader);
  std::cout << "toy training: " << s.images_per_second << " img/s, data-wait " << 100 * s.data_wait_fraction
            << "%, untrained top1 " << untrained << ", last-window top1 " << s.last_top1 << ", eval top1 " << acc << ", last loss " << s.last_loss
            << std::endl;
  EXPECT_GT(s.last_top1, 0.8);
  EXPECT_GT(acc, 0.8);
  EXPECT_THAT(progress.str(), ::testing::ContainsRegex(
                                  "epoch 20/20 step 15/15 loss [0-9.]+ top1 [0-9.]+% lr 0.001 [0-9.]+ img/s "
                                  "data-wait [0-9.]+% ETA 0:00:00"));
}

TEST(TrainRecognition, ResumeContinuesBitForBit) {
  test::ToyReader reader(6, 20);
  test::ToyFlip flip;
  at::set_num_threads(2);
  test::runtime();  // made (and seeding the global generator) before the models below
  TrainOptions o = toy_options();
  o.warmup_steps = 4;  // warm-up, then a stage decay at epoch 1: the schedule must resume too

  const std::string straight = test::temp_dir("train_straight");
  torch::manual_seed(1);
  test::TinyBackbone b1(32);
  auto h1 = make_head("arcface", 32, 6);
  train_recognition(b1, *h1, reader, {&flip}, o, straight);

  const std::string resumed = test::temp_dir("train_resumed");
  {
    torch::manual_seed(1);
    test::TinyBackbone b(32);
    auto h = make_head("arcface", 32, 6);
    TrainOptions first = o;
    first.epochs = 1;
    train_recognition(b, *h, reader, {&flip}, first, resumed);
  }
  // A fresh process would build the modules with other weights: start from others.
  torch::manual_seed(99);
  test::TinyBackbone b2(32);
  auto h2 = make_head("arcface", 32, 6);
  std::ostringstream progress;
  o.progress = &progress;
  const TrainSummary s = train_recognition(b2, *h2, reader, {&flip}, o, resumed);
  EXPECT_EQ(s.start_epoch, 1);
  EXPECT_THAT(progress.str(), ::testing::HasSubstr("resuming from"));

  for (const auto& [name, t] : module_state_dict(b1.module()))
    EXPECT_TRUE(torch::equal(t, module_state_dict(b2.module()).at(name))) << name;
  EXPECT_TRUE(torch::equal(h1->module().named_parameters()["kernel"], h2->module().named_parameters()["kernel"]));
  // The saved training state (momentum buffers, RNG) agrees too.
  const auto sa = read_safetensors((fs::path(straight) / "checkpoints/epoch-2/training_state.safetensors").string());
  const auto sb = read_safetensors((fs::path(resumed) / "checkpoints/epoch-2/training_state.safetensors").string());
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [name, t] : sa) EXPECT_TRUE(torch::equal(t, sb.at(name))) << name;
  // metrics.csv keeps the first run's rows and continues with the same steps and losses.
  const auto la = read_lines((fs::path(straight) / "metrics.csv").string());
  const auto lb = read_lines((fs::path(resumed) / "metrics.csv").string());
  ASSERT_EQ(la.size(), lb.size());
  for (std::size_t i = 1; i < la.size(); ++i) {
    const auto fa = split(la[i]), fb = split(lb[i]);
    for (int col : {0, 1, 2, 3, 4, 5}) EXPECT_EQ(fa[col], fb[col]) << "row " << i << " column " << col;
  }
}

TEST(TrainRecognition, WritesCheckpointsWeightsMetricsAndEvents) {
  torch::manual_seed(2);
  test::TinyBackbone backbone(32);
  auto head = make_head("cosface", 32, 6);
  test::ToyReader reader(6, 20);  // 120 samples, 8 steps per epoch
  TrainOptions o = toy_options();
  o.epochs = 3;
  o.stages = {1, 2};
  o.warmup_steps = 4;
  o.save_every = 2;
  o.log_every = 1;
  const std::string dir = test::temp_dir("train_outputs");
  const TrainSummary s = train_recognition(backbone, *head, reader, {}, o, dir);
  EXPECT_EQ(s.steps, 24);

  // Checkpoints at epoch 2 (save_every) and 3 (the end), nothing temporary left.
  EXPECT_TRUE(fs::is_directory(fs::path(dir) / "checkpoints/epoch-2"));
  EXPECT_TRUE(fs::is_directory(fs::path(dir) / "checkpoints/epoch-3"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "checkpoints/epoch-1"));
  EXPECT_EQ(latest_checkpoint(dir), (fs::path(dir) / "checkpoints/epoch-3").string());
  for (const auto& e : fs::directory_iterator(fs::path(dir) / "checkpoints"))
    EXPECT_THAT(e.path().filename().string(), ::testing::StartsWith("epoch-"));

  // Final weights with the modules' own key names, loadable strictly.
  const auto bb = read_safetensors((fs::path(dir) / "backbone.safetensors").string());
  EXPECT_EQ(bb.count("conv1.weight"), 1u);
  EXPECT_EQ(bb.count("features.running_mean"), 1u);
  EXPECT_TRUE(torch::equal(bb.at("fc.weight"), backbone.module().named_parameters()["fc.weight"]));
  const auto hd = read_safetensors((fs::path(dir) / "head.safetensors").string());
  EXPECT_EQ(hd.size(), 1u);
  EXPECT_EQ(hd.at("kernel").sizes(), torch::IntArrayRef({32, 6}));
  std::map<std::string, std::string> meta;
  const auto state = read_safetensors((fs::path(dir) / "checkpoints/epoch-3/training_state.safetensors").string(), &meta);
  EXPECT_EQ(meta.at("epoch"), "3");
  EXPECT_EQ(meta.at("global_step"), "24");
  EXPECT_EQ(state.count("momentum_buffer.head.kernel"), 1u);
  EXPECT_EQ(state.count("momentum_buffer.backbone.bn1.weight"), 1u);
  EXPECT_EQ(state.count("rng_state"), 1u);

  // metrics.csv: one row per step here; the lr column follows warm-up then the stages.
  const auto lines = read_lines((fs::path(dir) / "metrics.csv").string());
  ASSERT_EQ(lines.size(), 25u);
  EXPECT_EQ(lines[0], "epoch,step,global_step,loss,top1,lr,images_per_s,data_wait,eta_s");
  auto lr_at_row = [&](int global_step) { return std::stod(split(lines[global_step])[5]); };
  EXPECT_DOUBLE_EQ(lr_at_row(1), 0.0);    // global step 0 of the warm-up
  EXPECT_DOUBLE_EQ(lr_at_row(3), 0.05);   // step 2 of 4
  EXPECT_DOUBLE_EQ(lr_at_row(5), 0.1);    // step 4: warm-up done
  EXPECT_DOUBLE_EQ(lr_at_row(8), 0.1);    // last step of epoch 0
  EXPECT_NEAR(lr_at_row(9), 0.01, 1e-12); // epoch 1
  EXPECT_NEAR(lr_at_row(24), 0.001, 1e-12);
  EXPECT_EQ(split(lines[9])[0], "2");
  EXPECT_EQ(split(lines[9])[1], "1");

  // The event file holds the same scalars.
  const auto events = read_event_file(s.events_file);
  ASSERT_EQ(events.size(), 1u + 24u * 5u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  std::vector<std::string> tags;
  for (std::size_t i = 1; i <= 5; ++i) tags.push_back(events[i].values.at(0).first);
  EXPECT_THAT(tags, ::testing::ElementsAre("train/loss", "train/top1", "train/lr", "train/images_per_s",
                                           "train/data_wait"));
  for (std::size_t row = 1; row <= 24; ++row) {
    const auto& loss_event = events[1 + (row - 1) * 5];
    const auto& lr_event = events[1 + (row - 1) * 5 + 2];
    EXPECT_EQ(loss_event.step, static_cast<std::int64_t>(row));
    EXPECT_NEAR(loss_event.values[0].second, std::stod(split(lines[row])[3]), 1e-5);
    EXPECT_FLOAT_EQ(lr_event.values[0].second, static_cast<float>(lr_at_row(static_cast<int>(row))));
  }
}

TEST(TrainRecognition, ClassCountMismatchNamesBothNumbers) {
  test::TinyBackbone backbone(32);
  auto head = make_head("arcface", 32, 5);
  test::ToyReader reader(6, 4);
  const std::string message = test::error_of(
      [&] { train_recognition(backbone, *head, reader, {}, toy_options(), test::temp_dir("train_mismatch")); });
  EXPECT_THAT(message, ::testing::HasSubstr("out_features 5"));
  EXPECT_THAT(message, ::testing::HasSubstr("6 classes"));
}

TEST(TrainRecognition, EmbeddingSizeMismatchIsAnError) {
  test::TinyBackbone backbone(32);
  auto head = make_head("arcface", 64, 6);
  test::ToyReader reader(6, 4);
  const std::string message = test::error_of(
      [&] { train_recognition(backbone, *head, reader, {}, toy_options(), test::temp_dir("train_emb")); });
  EXPECT_THAT(message, ::testing::HasSubstr("in_features 64"));
  EXPECT_THAT(message, ::testing::HasSubstr("32-dimensional"));
}

TEST(TrainRecognition, EmptyDatasetIsAnError) {
  test::TinyBackbone backbone(32);
  auto head = make_head("arcface", 32, 6);
  test::EmptyReader reader;
  const std::string message = test::error_of(
      [&] { train_recognition(backbone, *head, reader, {}, toy_options(), test::temp_dir("train_empty")); });
  EXPECT_THAT(message, ::testing::HasSubstr("the dataset is empty"));
}

TEST(TrainRecognition, ResumeRefusesACheckpointOfAnotherBatchSize) {
  test::ToyReader reader(6, 4);
  const std::string dir = test::temp_dir("train_refuse");
  {
    test::TinyBackbone b(32);
    auto h = make_head("arcface", 32, 6);
    TrainOptions o = toy_options();
    o.epochs = 1;
    train_recognition(b, *h, reader, {}, o, dir);
  }
  test::TinyBackbone b(32);
  auto h = make_head("arcface", 32, 6);
  TrainOptions o = toy_options();
  o.batch_size = 8;
  const std::string message = test::error_of([&] { train_recognition(b, *h, reader, {}, o, dir); });
  EXPECT_THAT(message, ::testing::HasSubstr("training_state.safetensors"));
  EXPECT_THAT(message, ::testing::HasSubstr("batch_size 16, this run has 8"));
  // resume: false starts over instead.
  o.resume = false;
  EXPECT_EQ(train_recognition(b, *h, reader, {}, o, dir).start_epoch, 0);
}

TEST(TrainRecognitionStage, IsListedWithItsKeys) {
  const StageType& t = find_stage_type("train_recognition", "test");
  std::vector<std::string> keys;
  for (const auto& k : t.keys) keys.push_back(k.name);
  for (const char* k : {"backbone", "head", "data", "data_path", "augmenters", "epochs", "batch_size", "lr", "stages",
                        "momentum", "weight_decay", "warmup_epochs", "warmup_steps", "save_every", "workers", "resume"})
    EXPECT_THAT(keys, ::testing::Contains(k));
}
