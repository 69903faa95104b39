// TFace's ArcFace, CosFace and CurricularFace against the reference fixture, plus the
// branches the fixture does not reach (ArcFace's fallback past pi - m, easy_margin) and the
// softmax head.

#include <gmock/gmock.h>

#include <cmath>

#include "heads_test_util.h"

namespace admis::test::heads {
namespace {

using ::testing::ElementsAre;

constexpr double kParityTolerance = 1e-3;  // recognition_shared.json, tface_heads
constexpr double kPi = 3.14159265358979323846;

const StateDict& kernel_file() {
  static const StateDict k = host::read_safetensors(parity_file("tface_heads_kernel.safetensors"));
  return k;
}

const torch::Tensor& io(const std::string& key) { return tface_io(key); }

ParamMap fixture_params(const ParamMap& extra) {
  ParamMap p{{"in_features", Value(std::int64_t{64})}, {"out_features", Value(std::int64_t{10})}};
  for (const auto& [k, v] : extra) p[k] = v;
  return p;
}

// Loads the fixture's kernel through the weights path, strictly: the TFace checkpoint's
// keys are the module's keys. CurricularFace's checkpoint also holds its buffer `t`, zero
// in a freshly constructed reference head (the state the fixture was computed from).
void load_tface_checkpoint(Head& head, bool with_t) {
  StateDict checkpoint = kernel_file();
  ASSERT_EQ(checkpoint.size(), 1u) << "tface_heads_kernel.safetensors should hold `kernel` alone";
  if (with_t) checkpoint["t"] = torch::zeros({1});
  const LoadReport report = host::load_state_dict(head.module(), checkpoint, LoadOptions{}, "tface_heads_kernel");
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.loaded, checkpoint.size());
  EXPECT_TRUE(kernel_of(head).equal(io("kernel")));
}

struct ParityCase {
  std::string head;
  ParamMap params;
};

void PrintTo(const ParityCase& c, std::ostream* os) { *os << c.head; }

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

class TFaceParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(TFaceParity, TwoSuccessiveCallsMatchTheReference) {
  const ParityCase& c = GetParam();
  auto head = make_head(c.head, fixture_params(c.params));
  load_tface_checkpoint(*head, c.head == "curricularface");

  const HeadOutput first = head->forward(io("embeddings"), io("labels"));
  const HeadOutput second = head->forward(io("embeddings"), io("labels"));
  EXPECT_TRUE(all_close(first.logits, io(c.head + ".logits_call1"), kParityTolerance));
  EXPECT_TRUE(all_close(second.logits, io(c.head + ".logits_call2"), kParityTolerance));
  EXPECT_TRUE(all_close(first.original_logits, io(c.head + ".original_logits"), kParityTolerance));
  EXPECT_TRUE(all_close(second.original_logits, io(c.head + ".original_logits"), kParityTolerance));
  std::cout << c.head << ": max |logits - reference| call 1 " << max_abs_diff(first.logits, io(c.head + ".logits_call1"))
            << ", call 2 " << max_abs_diff(second.logits, io(c.head + ".logits_call2")) << ", original "
            << max_abs_diff(first.original_logits, io(c.head + ".original_logits")) << std::endl;
}

INSTANTIATE_TEST_SUITE_P(
    Heads, TFaceParity,
    ::testing::Values(ParityCase{"arcface", {{"scale", Value(64.0)}, {"margin", Value(0.5)}}},
                      ParityCase{"cosface", {{"scale", Value(64.0)}, {"margin", Value(0.4)}}},
                      ParityCase{"curricularface", {{"scale", Value(64.0)}, {"margin", Value(0.5)}, {"alpha", Value(0.1)}}}),
    [](const auto& info) { return info.param.head; });

TEST(CurricularFace, RunningMeanTMatchesTheReferenceAfterTwoCalls) {
  auto head = make_head("curricularface", fixture_params({{"margin", Value(0.5)}, {"alpha", Value(0.1)}}));
  load_tface_checkpoint(*head, true);
  const auto first = head->forward(io("embeddings"), io("labels"));
  // t <- alpha * mean(cos theta_y) + (1 - alpha) t, starting from 0.
  const torch::Tensor target = first.original_logits.gather(1, io("labels").view({-1, 1})) / 64.0;
  const torch::Tensor t = host::module_state_dict(head->module()).at("t");
  EXPECT_TRUE(all_close(t, (0.1 * target.mean()).view({1}), 1e-6));
  head->forward(io("embeddings"), io("labels"));
  EXPECT_TRUE(all_close(host::module_state_dict(head->module()).at("t"), io("curricularface.t_after_2_calls"), 1e-6));
}

TEST(CurricularFace, TIsUpdatedInEvalModeTooAsInTFace) {
  auto head = make_head("curricularface", fixture_params({}));
  load_tface_checkpoint(*head, true);
  head->module().eval();
  head->forward(io("embeddings"), io("labels"));
  head->forward(io("embeddings"), io("labels"));
  EXPECT_TRUE(all_close(host::module_state_dict(head->module()).at("t"), io("curricularface.t_after_2_calls"), 1e-6));
}

TEST(CurricularFace, KernelOnlyCheckpointLacksExactlyTheBufferT) {
  auto head = make_head("curricularface", fixture_params({}));
  LoadOptions lenient;
  lenient.strict = false;
  const LoadReport report = host::load_state_dict(head->module(), kernel_file(), lenient, "kernel only");
  EXPECT_THAT(report.missing, ElementsAre("t"));
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_TRUE(report.mismatched.empty());
}

TEST(TFaceHeads, StateDictKeysAreTheReferenceKeys) {
  EXPECT_THAT(state_keys(*make_head("arcface", fixture_params({}))), ElementsAre("kernel"));
  EXPECT_THAT(state_keys(*make_head("cosface", fixture_params({}))), ElementsAre("kernel"));
  EXPECT_THAT(state_keys(*make_head("curricularface", fixture_params({}))), ElementsAre("kernel", "t"));
  EXPECT_EQ(kernel_of(*make_head("arcface", fixture_params({}))).sizes(), torch::IntArrayRef({64, 10}));
}

TEST(TFaceHeads, KernelIsInitialisedLikeTFace) {
  // N(0, 0.01^2): over 512 x 1000 draws the sample std is 0.01 to well within 1%.
  auto head = make_head("arcface", {{"in_features", Value(512)}, {"out_features", Value(1000)}});
  const torch::Tensor k = kernel_of(*head);
  EXPECT_NEAR(k.std().item<double>(), 0.01, 1e-4);
  EXPECT_NEAR(k.mean().item<double>(), 0.0, 1e-4);
}

// Embeddings placed at chosen angles to unit class centres e_0, e_1, e_2, so that the own
// class's cosine is known exactly.
struct AngleBatch {
  torch::Tensor kernel = torch::eye(3);
  torch::Tensor embeddings;
  torch::Tensor labels;
  std::vector<double> target_angles;
};

AngleBatch angle_batch(const std::vector<double>& angles) {
  AngleBatch b;
  b.target_angles = angles;
  b.embeddings = torch::zeros({static_cast<std::int64_t>(angles.size()), 3});
  for (std::size_t i = 0; i < angles.size(); ++i) {
    // At angle a from e_0 in the (e_0, e_1) plane, scaled by 3 (normalisation must undo it).
    b.embeddings[i][0] = 3.0 * std::cos(angles[i]);
    b.embeddings[i][1] = 3.0 * std::sin(angles[i]);
  }
  b.labels = torch::zeros({static_cast<std::int64_t>(angles.size())}, torch::kLong);
  return b;
}

TEST(ArcFace, AddsTheMarginToTheAngleAndFallsBackPastPiMinusM) {
  const double m = 0.5, s = 64.0;
  // Angles below and beyond pi - m = 2.64: the latter take TFace's fallback.
  const AngleBatch b = angle_batch({0.0, 0.3, 1.2, 2.0, 2.6, 2.7, 3.0, kPi});
  auto head = head_with_kernel("arcface", {{"scale", Value(s)}, {"margin", Value(m)}}, b.kernel);
  const HeadOutput out = head->forward(b.embeddings, b.labels);
  for (std::size_t i = 0; i < b.target_angles.size(); ++i) {
    const double theta = b.target_angles[i];
    const double expected = theta < kPi - m ? std::cos(theta + m) : std::cos(theta) - std::sin(kPi - m) * m;
    EXPECT_NEAR(out.logits[i][0].item<double>(), s * expected, 1e-3) << "theta = " << theta;
    EXPECT_NEAR(out.original_logits[i][0].item<double>(), s * std::cos(theta), 1e-3) << "theta = " << theta;
  }
  // Only the own class carries the margin.
  EXPECT_TRUE(out.logits.slice(1, 1).equal(out.original_logits.slice(1, 1)));
}

TEST(ArcFace, EasyMarginLeavesObtuseAnglesAlone) {
  const double m = 0.5, s = 30.0;
  const AngleBatch b = angle_batch({0.2, 1.0, 1.7, 2.9});
  auto head = head_with_kernel("arcface", {{"scale", Value(s)}, {"margin", Value(m)}, {"easy_margin", Value(true)}},
                               b.kernel);
  const HeadOutput out = head->forward(b.embeddings, b.labels);
  for (std::size_t i = 0; i < b.target_angles.size(); ++i) {
    const double theta = b.target_angles[i];
    const double expected = std::cos(theta) > 0 ? std::cos(theta + m) : std::cos(theta);
    EXPECT_NEAR(out.logits[i][0].item<double>(), s * expected, 1e-3) << "theta = " << theta;
  }
}

TEST(CosFace, SubtractsTheMarginFromTheOwnClassOnly) {
  const AngleBatch b = angle_batch({0.0, 1.0, 2.5, kPi});
  auto head = head_with_kernel("cosface", {{"scale", Value(10.0)}, {"margin", Value(0.25)}}, b.kernel);
  const HeadOutput out = head->forward(b.embeddings, b.labels);
  for (std::size_t i = 0; i < b.target_angles.size(); ++i)
    EXPECT_NEAR(out.logits[i][0].item<double>(), 10.0 * (std::cos(b.target_angles[i]) - 0.25), 1e-4);
  EXPECT_TRUE(out.logits.slice(1, 1).equal(out.original_logits.slice(1, 1)));
}

TEST(CurricularFace, ReweightsOnlyHardNegatives) {
  // Own class at 1.2 rad, margin 0.5: cos(theta_y + m) = cos(1.7) = -0.129. The class at
  // e_1 (cos = sin 1.2 = 0.93) is a hard negative; e_2 (cos 0) is one too; make a third
  // class anti-parallel to the embedding (cos -1), which is easy.
  const double m = 0.5, alpha = 0.25, s = 1.0;
  torch::Tensor kernel = torch::zeros({3, 4});
  kernel[0][0] = 1;
  kernel[1][1] = 1;
  kernel[2][2] = 1;
  const AngleBatch b = angle_batch({1.2});
  kernel[0][3] = -std::cos(1.2);
  kernel[1][3] = -std::sin(1.2);
  auto head = head_with_kernel("curricularface", {{"scale", Value(s)}, {"margin", Value(m)}, {"alpha", Value(alpha)}},
                               kernel);
  const HeadOutput out = head->forward(b.embeddings, b.labels);
  const double t = alpha * std::cos(1.2);  // first call: t = alpha * mean target cosine
  const double c1 = std::sin(1.2), c2 = 0.0, c3 = -1.0;
  EXPECT_NEAR(out.logits[0][0].item<double>(), std::cos(1.2 + m), 1e-5);
  EXPECT_NEAR(out.logits[0][1].item<double>(), c1 * (t + c1), 1e-5);
  EXPECT_NEAR(out.logits[0][2].item<double>(), c2 * (t + c2), 1e-5);
  EXPECT_NEAR(out.logits[0][3].item<double>(), c3, 1e-5);
}

TEST(TFaceHeads, GradientsReachTheKernelAndNotThePlainLogits) {
  for (const std::string name : {"arcface", "cosface", "curricularface"}) {
    auto head = make_head(name, fixture_params({}));
    const torch::Tensor embeddings = io("embeddings").clone().requires_grad_(true);
    const HeadOutput out = head->forward(embeddings, io("labels"));
    EXPECT_FALSE(out.original_logits.requires_grad()) << name;
    torch::nn::functional::cross_entropy(out.logits, io("labels")).backward();
    const torch::Tensor grad = parameter(*head, "kernel").grad();
    ASSERT_TRUE(grad.defined()) << name;
    EXPECT_TRUE(grad.isfinite().all().item<bool>()) << name;
    EXPECT_GT(grad.abs().sum().item<double>(), 0.0) << name;
    EXPECT_TRUE(embeddings.grad().defined()) << name;
  }
}

TEST(Softmax, IsAPlainFullyConnectedClassifier) {
  auto head = make_head("softmax", fixture_params({}));
  EXPECT_THAT(state_keys(*head), ElementsAre("kernel"));
  host::load_state_dict(head->module(), kernel_file(), LoadOptions{}, "tface_heads_kernel");
  const HeadOutput out = head->forward(io("embeddings"), io("labels"));
  const torch::Tensor expected = io("embeddings").to(torch::kDouble).mm(io("kernel").to(torch::kDouble));
  EXPECT_TRUE(all_close(out.logits, expected.to(torch::kFloat), 1e-5));
  EXPECT_TRUE(out.original_logits.equal(out.logits));
}

TEST(Softmax, OptionalBiasIsAddedPerClass) {
  auto head = make_head("softmax", fixture_params({{"bias", Value(true)}}));
  EXPECT_THAT(state_keys(*head), ElementsAre("bias", "kernel"));
  const torch::Tensor bias = torch::arange(10, torch::kFloat);
  host::load_state_dict(head->module(), {{"kernel", io("kernel")}, {"bias", bias}}, LoadOptions{}, "with bias");
  const HeadOutput out = head->forward(io("embeddings"), io("labels"));
  EXPECT_TRUE(all_close(out.logits, io("embeddings").mm(io("kernel")) + bias, 1e-5));
}

}  // namespace
}  // namespace admis::test::heads
