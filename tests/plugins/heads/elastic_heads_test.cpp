// ElasticFace-Arc and ElasticFace-Cos. Their margins are random, so there is no reference
// output to match; instead: with std = 0 they are the fixed-margin formulas (checked
// against the TFace fixture where the two coincide), the draws are reproducible under
// torch::manual_seed and follow N(m, std^2), and the + variant orders them by cosine.

#include <gmock/gmock.h>

#include <algorithm>
#include <cmath>

#include "heads_test_util.h"

namespace admis::test::heads {
namespace {

constexpr double kParityTolerance = 1e-3;  // recognition_shared.json, tface_heads

ParamMap elastic_params(double scale, double margin, double std, bool plus) {
  return {{"in_features", Value(std::int64_t{64})}, {"out_features", Value(std::int64_t{10})},
          {"scale", Value(scale)},                  {"margin", Value(margin)},
          {"std", Value(std)},                      {"plus", Value(plus)}};
}

std::shared_ptr<Head> fixture_head(const std::string& name, const ParamMap& params) {
  auto head = make_head(name, params);
  host::load_state_dict(head->module(), host::read_safetensors(parity_file("tface_heads_kernel.safetensors")),
                        LoadOptions{}, "tface_heads_kernel");
  return head;
}

TEST(ElasticFace, StateDictKeyIsTheReferenceKernel) {
  for (const std::string name : {"elastic-arcface", "elastic-cosface"}) {
    auto head = make_head(name, elastic_params(64, 0.5, 0.05, false));
    EXPECT_THAT(state_keys(*head), ::testing::ElementsAre("kernel")) << name;
    EXPECT_EQ(kernel_of(*head).sizes(), torch::IntArrayRef({64, 10})) << name;
  }
}

// In the fixture every own-class angle is below pi - m, where TFace's ArcFace is exactly
// cos(theta + m): ElasticFace-Arc with std = 0 must give the same logits.
TEST(ElasticArcFace, WithZeroStdIsArcFace) {
  auto head = fixture_head("elastic-arcface", elastic_params(64, 0.5, 0.0, false));
  const HeadOutput out = head->forward(tface_io("embeddings"), tface_io("labels"));
  EXPECT_TRUE(all_close(out.logits, tface_io("arcface.logits_call1"), kParityTolerance));
  EXPECT_TRUE(all_close(out.original_logits, tface_io("arcface.original_logits"), kParityTolerance));
}

TEST(ElasticCosFace, WithZeroStdIsCosFace) {
  auto head = fixture_head("elastic-cosface", elastic_params(64, 0.4, 0.0, false));
  const HeadOutput out = head->forward(tface_io("embeddings"), tface_io("labels"));
  EXPECT_TRUE(all_close(out.logits, tface_io("cosface.logits_call1"), kParityTolerance));
  EXPECT_TRUE(all_close(out.original_logits, tface_io("cosface.original_logits"), kParityTolerance));
}

// ElasticFace takes cos(theta + m) as it is even where theta + m passes pi (no TFace
// fallback), and leaves every other class's cosine untouched.
TEST(ElasticArcFace, AddsTheMarginToTheAngleEverywhere) {
  const double m = 0.5, s = 64.0;
  const std::vector<double> angles = {0.0, 0.7, 1.9, 2.8, 3.1};
  torch::Tensor embeddings = torch::zeros({5, 3});
  for (int i = 0; i < 5; ++i) {
    embeddings[i][0] = 2.0 * std::cos(angles[i]);
    embeddings[i][1] = 2.0 * std::sin(angles[i]);
  }
  ParamMap p = elastic_params(s, m, 0.0, false);
  auto head = head_with_kernel("elastic-arcface", p, torch::eye(3));
  const HeadOutput out = head->forward(embeddings, torch::zeros({5}, torch::kLong));
  for (int i = 0; i < 5; ++i)
    EXPECT_NEAR(out.logits[i][0].item<double>(), s * std::cos(angles[i] + m), 2e-3) << "theta = " << angles[i];
  EXPECT_TRUE(all_close(out.logits.slice(1, 1), out.original_logits.slice(1, 1), 1e-4));
}

// The margin each row received, recovered from the own-class logit.
torch::Tensor drawn_margins(const std::string& name, const HeadOutput& out, const torch::Tensor& labels, double s) {
  const torch::Tensor cos_theta = out.original_logits.gather(1, labels.view({-1, 1})).view(-1).to(torch::kDouble) / s;
  const torch::Tensor shifted = out.logits.gather(1, labels.view({-1, 1})).view(-1).to(torch::kDouble) / s;
  if (name == "elastic-cosface") return cos_theta - shifted;
  return torch::acos(shifted.clamp(-1, 1)) - torch::acos(cos_theta);
}

class ElasticDraws : public ::testing::TestWithParam<std::string> {};

TEST_P(ElasticDraws, AreReproducibleUnderManualSeedAndFreshEachCall) {
  auto head = fixture_head(GetParam(), elastic_params(64, 0.4, 0.05, false));
  torch::manual_seed(11);
  const HeadOutput first = head->forward(tface_io("embeddings"), tface_io("labels"));
  const HeadOutput next = head->forward(tface_io("embeddings"), tface_io("labels"));
  torch::manual_seed(11);
  const HeadOutput again = head->forward(tface_io("embeddings"), tface_io("labels"));
  EXPECT_TRUE(again.logits.equal(first.logits));
  EXPECT_FALSE(next.logits.equal(first.logits));
  EXPECT_TRUE(next.original_logits.equal(first.original_logits));
}

TEST_P(ElasticDraws, FollowTheNormalDistribution) {
  // 4096 draws from N(0.4, 0.05^2): the sample mean is within 4 standard errors (0.003),
  // the sample std within 10%.
  const std::int64_t n = 4096;
  torch::manual_seed(5);
  const torch::Tensor embeddings = torch::randn({n, 64});
  const torch::Tensor labels = torch::randint(0, 10, {n}, torch::kLong);
  auto head = fixture_head(GetParam(), elastic_params(64, 0.4, 0.05, false));
  const torch::Tensor m = drawn_margins(GetParam(), head->forward(embeddings, labels), labels, 64);
  EXPECT_NEAR(m.mean().item<double>(), 0.4, 4 * 0.05 / std::sqrt(double(n)));
  EXPECT_NEAR(m.std().item<double>(), 0.05, 0.005);
}

// ElasticFace+: the same draws (the sort consumes no randomness), assigned so that a
// sample closer to its class centre never gets a larger margin than one farther away.
TEST_P(ElasticDraws, PlusGivesTheSmallestMarginsToTheClosestSamples) {
  const std::int64_t n = 256;
  torch::manual_seed(3);
  const torch::Tensor embeddings = torch::randn({n, 64});
  const torch::Tensor labels = torch::randint(0, 10, {n}, torch::kLong);

  auto plain = fixture_head(GetParam(), elastic_params(64, 0.4, 0.1, false));
  auto plus = fixture_head(GetParam(), elastic_params(64, 0.4, 0.1, true));
  torch::manual_seed(21);
  const HeadOutput plain_out = plain->forward(embeddings, labels);
  torch::manual_seed(21);
  const HeadOutput plus_out = plus->forward(embeddings, labels);

  const torch::Tensor plain_m = drawn_margins(GetParam(), plain_out, labels, 64);
  const torch::Tensor plus_m = drawn_margins(GetParam(), plus_out, labels, 64);
  EXPECT_TRUE(all_close(std::get<0>(plus_m.sort()), std::get<0>(plain_m.sort()), 1e-3));
  EXPECT_FALSE(all_close(plus_m, plain_m, 1e-3)) << "the + variant did not reorder the margins";

  const torch::Tensor cos_theta = plus_out.original_logits.gather(1, labels.view({-1, 1})).view(-1);
  const torch::Tensor by_closeness = std::get<1>(cos_theta.sort(0, /*descending=*/true));
  const torch::Tensor margins_in_that_order = plus_m.index_select(0, by_closeness);
  const torch::Tensor steps = margins_in_that_order.slice(0, 1) - margins_in_that_order.slice(0, 0, n - 1);
  EXPECT_GE(steps.min().item<double>(), -1e-3) << "margins do not grow as samples get farther from their centre";
}

INSTANTIATE_TEST_SUITE_P(Heads, ElasticDraws, ::testing::Values("elastic-arcface", "elastic-cosface"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace admis::test::heads
