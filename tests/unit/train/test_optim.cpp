// TFace's optimisation pieces: the weight-decay split, SGD with momentum, the lr schedule.
#include <algorithm>

#include "admis/host/train_recognition.h"
#include "support/support.h"
#include "toy.h"

using namespace admis;
using namespace admis::host;
using ::testing::UnorderedElementsAre;

namespace {

std::shared_ptr<Head> arcface(std::int64_t in, std::int64_t out) {
  return test::create<Head>(Kind::Head, "arcface", {{"in_features", in}, {"out_features", out}});
}

}  // namespace

TEST(ParamGroups, BatchNormModulesAreExemptFromDecayLikeSeparateIrseBnParas) {
  test::TinyBackbone backbone(32);
  auto head = arcface(32, 6);
  auto groups = tface_param_groups(backbone.module(), head->module(), 5e-4);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].name, "decay");
  EXPECT_DOUBLE_EQ(groups[0].weight_decay, 5e-4);
  EXPECT_EQ(groups[1].name, "no_decay");
  EXPECT_DOUBLE_EQ(groups[1].weight_decay, 0.0);
  // Convolution and linear biases and PReLU slopes decay, as in TFace; every batch norm
  // (also the one named "features") does not; the head's kernel decays.
  EXPECT_THAT(groups[0].names,
              UnorderedElementsAre("backbone.conv1.weight", "backbone.prelu1.weight", "backbone.conv2.weight",
                                   "backbone.conv2.bias", "backbone.fc.weight", "backbone.fc.bias", "head.kernel"));
  EXPECT_THAT(groups[1].names,
              UnorderedElementsAre("backbone.bn1.weight", "backbone.bn1.bias", "backbone.bn2.weight", "backbone.bn2.bias",
                                   "backbone.features.weight", "backbone.features.bias"));
  EXPECT_EQ(groups[0].params.size(), groups[0].names.size());
  EXPECT_TRUE(groups[1].params[0].is_same(backbone.module().named_parameters()[groups[1].names[0].substr(9)]));
}

TEST(ParamGroups, BnInNameFollowsSeparateResnetBnParas) {
  test::TinyBackbone backbone(32);
  auto head = arcface(32, 6);
  auto groups = tface_param_groups(backbone.module(), head->module(), 5e-4, "bn-in-name");
  EXPECT_THAT(groups[1].names, UnorderedElementsAre("backbone.bn1.weight", "backbone.bn1.bias", "backbone.bn2.weight",
                                                    "backbone.bn2.bias"));
  EXPECT_EQ(std::count(groups[0].names.begin(), groups[0].names.end(), "backbone.features.weight"), 1);
  EXPECT_THAT(test::error_of([&] { tface_param_groups(backbone.module(), head->module(), 5e-4, "bn"); }),
              ::testing::HasSubstr("unknown decay_split 'bn'"));
}

TEST(SgdMomentum, MatchesLibTorchSgdWithTheSameGroups) {
  torch::manual_seed(3);
  auto a = torch::randn({4, 3}).requires_grad_();
  auto b = torch::randn({5}).requires_grad_();
  auto a2 = a.detach().clone().requires_grad_();
  auto b2 = b.detach().clone().requires_grad_();
  SgdMomentum ours({ParamGroup{"decay", 5e-4, {"a"}, {a}}, ParamGroup{"no_decay", 0, {"b"}, {b}}}, 0.9);
  std::vector<torch::optim::OptimizerParamGroup> torch_groups;
  torch_groups.emplace_back(std::vector<torch::Tensor>{a2},
                            std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(5e-4)));
  torch_groups.emplace_back(std::vector<torch::Tensor>{b2},
                            std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.1).momentum(0.9)));
  torch::optim::SGD reference(torch_groups, torch::optim::SGDOptions(0.1));
  for (int step = 0; step < 4; ++step) {
    auto x = torch::randn({3});
    ours.zero_grad();
    ((a.mv(x)).pow(2).sum() + (b * b.sum()).sum()).backward();
    ours.step(0.1);
    reference.zero_grad();
    ((a2.mv(x)).pow(2).sum() + (b2 * b2.sum()).sum()).backward();
    reference.step();
  }
  EXPECT_TRUE(test::all_close(a, a2, 1e-6));
  EXPECT_TRUE(test::all_close(b, b2, 1e-6));
  const StateDict state = ours.state();
  EXPECT_EQ(state.count("momentum_buffer.a"), 1u);
  EXPECT_EQ(state.count("momentum_buffer.b"), 1u);
}

TEST(LrSchedule, MultistepDecayAtTheStagesLikeTFace) {
  LrSchedule s{0.1, {22, 28, 32}, 0.1, 0};
  EXPECT_DOUBLE_EQ(s.at(0, 0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(21, 99999), 0.1);
  EXPECT_NEAR(s.at(22, 0), 0.01, 1e-15);
  EXPECT_NEAR(s.at(27, 0), 0.01, 1e-15);
  EXPECT_NEAR(s.at(28, 0), 0.001, 1e-16);
  EXPECT_NEAR(s.at(32, 0), 0.0001, 1e-17);
  EXPECT_NEAR(s.at(39, 0), 0.0001, 1e-17);
}

TEST(LrSchedule, LinearWarmUpFromZeroUpToAndIncludingWarmupSteps) {
  LrSchedule s{0.1, {2}, 0.1, 100};
  EXPECT_DOUBLE_EQ(s.at(0, 0), 0.0);  // TFace's first warm-up step has lr 0
  EXPECT_DOUBLE_EQ(s.at(0, 25), 0.025);
  EXPECT_DOUBLE_EQ(s.at(0, 100), 0.1);
  EXPECT_DOUBLE_EQ(s.at(0, 101), 0.1);
  // Warm-up overrides the stage decay while it lasts, as the hook order in TFace does.
  EXPECT_DOUBLE_EQ(s.at(3, 50), 0.05);
  EXPECT_NEAR(s.at(3, 101), 0.01, 1e-15);
}
