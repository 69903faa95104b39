// idiff-unet behaviour: parameter and input refusals naming what is wrong, the
// conditioning variants' state (the reference's keys per condition_type), the empty
// context (fixed zero or learned), class contexts, train-mode component dropout drawn from
// torch's default generator versus deterministic eval mode, and the kind's conformance suite.

#include <gmock/gmock.h>

#include <sstream>

#include "admis/host/conformance.h"
#include "denoisers_test_util.h"

namespace admis::test::denoisers {
namespace {

using ::testing::HasSubstr;

struct Inputs {
  torch::Tensor x, t, context;
};

Inputs inputs(std::int64_t n, std::int64_t context_size = 16, std::uint64_t seed = 7) {
  torch::manual_seed(seed);
  return {torch::randn({n, 3, 8, 8}), torch::randint(0, 1000, {n}, torch::kInt64), torch::randn({n, context_size})};
}

bool has_key(Denoiser& unet, const std::string& key) {
  return host::module_state_dict(unet.module()).count(key) > 0;
}

// ---------------------------------------------------------------------------------------
// Parameters

TEST(IdiffUNetParams, ConditionTypeOutsideTheChoicesIsRefused) {
  EXPECT_THAT(error_of([] { make_unet(small_params("CrossAttention")); }),
              HasSubstr("parameter 'condition_type' = 'CrossAttention' is not one of: AddPlusGN, AdaGN, DiffAE, CA"));
}

TEST(IdiffUNetParams, IsAttentionMustHaveOneFlagPerResolution) {
  EXPECT_THAT(error_of([] {
                make_unet(small_params("CA", {{"is_attention", Value(std::vector<bool>{false, true, true})}}));
              }),
              HasSubstr("idiff-unet: parameter 'is_attention' has 3 entries but channel_multipliers has 2"));
}

TEST(IdiffUNetParams, WidthsMustSuitTheGroupNorms) {
  EXPECT_THAT(error_of([] { make_unet(small_params("AdaGN", {{"initial_channels", Value(48)}})); }),
              HasSubstr("parameter 'initial_channels' = 48 must be a multiple of 32"));
  EXPECT_THAT(error_of([] { make_unet(small_params("CA", {{"context_channels", Value(40)}})); }),
              HasSubstr("parameter 'context_channels' = 40 must be a multiple of 32 with condition_type 'CA'"));
  // Other conditionings have no context GroupNorm.
  EXPECT_NO_THROW(make_unet(small_params("AdaGN", {{"context_channels", Value(40)}})));
  EXPECT_THAT(error_of([] { make_unet(small_params("CA", {{"attention_head_channels", Value(128)}})); }),
              HasSubstr("parameter 'attention_head_channels' = 128 exceeds the 64 channels of an attention block"));
  EXPECT_THAT(error_of([] {
                make_unet(small_params("AdaGN", {{"channel_multipliers", Value(std::vector<std::int64_t>{})},
                                                 {"is_attention", Value(std::vector<bool>{})}}));
              }),
              HasSubstr("parameter 'channel_multipliers' is empty"));
}

TEST(IdiffUNetParams, RangesAreDeclared) {
  EXPECT_THAT(error_of([] { make_unet(small_params("CA", {{"context_dropout_probability", Value(1.0)}})); }),
              HasSubstr("context_dropout_probability"));
  EXPECT_THAT(error_of([] { make_unet(small_params("CA", {{"n_context_classes", Value(-1)}})); }),
              HasSubstr("n_context_classes"));
}

TEST(IdiffUNetParams, ParametersAreNamedAsTheReferenceConstructor) {
  std::vector<std::string> names;
  const host::RegisteredPlugin& plugin = registry().get(Kind::Denoiser, "idiff-unet");
  EXPECT_EQ(plugin.library->name, "admis_denoisers");
  for (const auto& p : plugin.factory->params) {
    names.push_back(p.name);
    EXPECT_FALSE(p.doc.empty()) << p.name;
    EXPECT_FALSE(p.required()) << p.name;
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre(
                         "input_channels", "initial_channels", "channel_multipliers", "is_attention", "attention_heads",
                         "attention_head_channels", "n_blocks_per_resolution", "condition_type",
                         "context_input_channels", "context_channels", "is_context_conditional", "n_context_classes",
                         "learn_empty_context", "context_dropout_probability"));
}

// ---------------------------------------------------------------------------------------
// Inputs

TEST(IdiffUNetInputs, BadShapesAreRefusedNamingTheTensor) {
  auto unet = make_unet(small_params("CA"));
  const Inputs in = inputs(2);
  EXPECT_THAT(error_of([&] { unet->forward(torch::zeros({2, 4, 8, 8}), in.t, in.context); }),
              HasSubstr("denoiser/idiff-unet: x_t must have shape [N, 3, H, W] (input_channels = 3), got [2, 4, 8, 8]"));
  EXPECT_THAT(error_of([&] { unet->forward(torch::zeros({2, 3, 9, 8}), in.t, in.context); }),
              HasSubstr("x_t's height and width must be multiples of 2"));
  EXPECT_THAT(error_of([&] { unet->forward(in.x, torch::zeros({3}, torch::kInt64), in.context); }),
              HasSubstr("timesteps must have shape [2]"));
  EXPECT_THAT(error_of([&] { unet->forward(in.x, in.t, torch::zeros({2, 512})); }),
              HasSubstr("context must have shape [2, 16] (context_input_channels = 16), got [2, 512]"));
  EXPECT_THAT(error_of([&] { unet->forward(in.x, in.t, in.context, torch::ones({3}, torch::kBool)); }),
              HasSubstr("dropout_mask must be a [2] bool tensor"));
}

// ---------------------------------------------------------------------------------------
// Conditioning variants: which modules exist, as in the reference's ResidualBlock.

TEST(IdiffUNetConditioning, EachConditionTypeHasTheReferenceModules) {
  auto ca = make_unet(small_params("CA"));
  EXPECT_TRUE(has_key(*ca, "down.2.attn.cross_attention.to_k.weight"));
  EXPECT_TRUE(has_key(*ca, "middle.attn.c_proj_in.weight"));
  EXPECT_FALSE(has_key(*ca, "down.0.res.context_emb.1.weight"));
  EXPECT_TRUE(has_key(*ca, "down.0.res.norm2.norm.weight"));
  EXPECT_FALSE(has_key(*ca, "down.0.attn.x_norm.weight"));  // no attention at the first resolution

  for (const std::string type : {"AdaGN", "DiffAE"}) {
    auto unet = make_unet(small_params(type));
    EXPECT_TRUE(has_key(*unet, "down.0.res.context_emb.1.weight")) << type;
    EXPECT_TRUE(has_key(*unet, "down.0.res.scale_emb.weight")) << type;
    EXPECT_TRUE(has_key(*unet, "middle.attn.attention.to_q.weight")) << type;
  }
  auto add = make_unet(small_params("AddPlusGN"));
  EXPECT_TRUE(has_key(*add, "down.0.res.context_emb.1.weight"));
  EXPECT_TRUE(has_key(*add, "down.0.res.norm2.weight"));
  EXPECT_FALSE(has_key(*add, "down.0.res.scale_emb.weight"));

  // Unconditional: no context anywhere, self-attention even for 'CA'.
  auto uncond = make_unet(small_params("CA", {{"is_context_conditional", Value(false)}}));
  EXPECT_EQ(uncond->context_size(), 0);
  for (const auto& [key, tensor] : host::module_state_dict(uncond->module()))
    EXPECT_EQ(key.find("context"), std::string::npos) << key;
  EXPECT_TRUE(has_key(*uncond, "middle.attn.attention.to_q.weight"));
}

TEST(IdiffUNetConditioning, EveryConditionTypeUsesTheContextAndTheMask) {
  for (const std::string type : {"CA", "AdaGN", "AddPlusGN", "DiffAE"}) {
    auto unet = make_unet(small_params(type));
    randomize(*unet, 3);
    unet->module().eval();
    const Inputs in = inputs(3);
    torch::NoGradGuard no_grad;
    const torch::Tensor with = unet->forward(in.x, in.t, in.context);
    const torch::Tensor without = unet->forward(in.x, in.t);
    const torch::Tensor other = unet->forward(in.x, in.t, in.context.flip(0));
    EXPECT_GT(max_abs_diff(with, without), 1e-3) << type;
    EXPECT_GT(max_abs_diff(with, other), 1e-3) << type;
    // Masked rows are the empty-context rows; the others keep their context.
    const torch::Tensor mask = torch::tensor({true, false, true});
    const torch::Tensor masked = unet->forward(in.x, in.t, in.context, mask);
    EXPECT_TRUE(torch::allclose(masked[0], without[0], 1e-5, 1e-5)) << type;
    EXPECT_TRUE(torch::allclose(masked[2], without[2], 1e-5, 1e-5)) << type;
    EXPECT_TRUE(torch::allclose(masked[1], with[1], 1e-5, 1e-5)) << type;
    // The batch does not mix rows (GroupNorm is per sample).
    EXPECT_TRUE(torch::allclose(unet->forward(in.x.slice(0, 1, 2), in.t.slice(0, 1, 2), in.context.slice(0, 1, 2)),
                                with.slice(0, 1, 2), 1e-5, 1e-5))
        << type;
  }
}

TEST(IdiffUNetConditioning, LearnedEmptyContextIsAParameterUsedForDroppedRows) {
  auto fixed = make_unet(small_params("AdaGN"));
  EXPECT_FALSE(has_key(*fixed, "empty_context_embedding"));  // a plain zero attribute in the reference
  auto learned = make_unet(small_params("AdaGN", {{"learn_empty_context", Value(true)}}));
  ASSERT_NE(learned->module().named_parameters().find("empty_context_embedding"), nullptr);
  EXPECT_EQ(learned->module().named_parameters()["empty_context_embedding"].sizes(), torch::IntArrayRef({32}));
  randomize(*learned, 5);
  learned->module().eval();
  const Inputs in = inputs(2);
  // Dropped rows depend on the learned embedding, and it receives their gradient.
  const torch::Tensor all = torch::ones({2}, torch::kBool);
  const torch::Tensor out = learned->forward(in.x, in.t, in.context, all);
  EXPECT_TRUE(torch::allclose(out, learned->forward(in.x, in.t), 1e-5, 1e-5));
  out.square().sum().backward();
  const torch::Tensor grad = learned->module().named_parameters()["empty_context_embedding"].grad();
  ASSERT_TRUE(grad.defined());
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
}

TEST(IdiffUNetConditioning, ClassContextsAreEmbedded) {
  auto unet = make_unet(small_params("AdaGN", {{"n_context_classes", Value(10)}}));
  EXPECT_EQ(unet->context_size(), 1);
  EXPECT_EQ(host::module_state_dict(unet->module()).at("context_emb.weight").sizes(), torch::IntArrayRef({10, 32}));
  randomize(*unet, 9);
  unet->module().eval();
  const Inputs in = inputs(2);
  torch::NoGradGuard no_grad;
  const auto a = unet->forward(in.x, in.t, torch::tensor({1, 2}, torch::kInt64));
  const auto b = unet->forward(in.x, in.t, torch::tensor({{1.0f}, {2.0f}}));  // [N,1] float indices
  const auto c = unet->forward(in.x, in.t, torch::tensor({3, 2}, torch::kInt64));
  EXPECT_TRUE(torch::allclose(a, b));
  EXPECT_GT(max_abs_diff(a[0], c[0]), 1e-4);
  EXPECT_THAT(error_of([&] { unet->forward(in.x, in.t, torch::tensor({1, 10}, torch::kInt64)); }),
              HasSubstr("context class indices must be integers in [0, 10) (n_context_classes)"));
}

// ---------------------------------------------------------------------------------------
// Train and eval mode

TEST(IdiffUNetModes, TrainModeDropsContextComponentsFromTheDefaultGenerator) {
  auto unet = make_unet(small_params("AdaGN", {{"context_dropout_probability", Value(0.5)}}));
  randomize(*unet, 11);
  const Inputs in = inputs(2);
  torch::NoGradGuard no_grad;
  unet->module().eval();
  const torch::Tensor eval = unet->forward(in.x, in.t, in.context);
  EXPECT_TRUE(torch::equal(eval, unet->forward(in.x, in.t, in.context)));
  unet->module().train();
  torch::manual_seed(1);
  const torch::Tensor train_a = unet->forward(in.x, in.t, in.context);
  torch::manual_seed(1);
  const torch::Tensor train_a_again = unet->forward(in.x, in.t, in.context);
  torch::manual_seed(2);
  const torch::Tensor train_b = unet->forward(in.x, in.t, in.context);
  EXPECT_TRUE(torch::equal(train_a, train_a_again));
  EXPECT_GT(max_abs_diff(train_a, train_b), 1e-4);
  EXPECT_GT(max_abs_diff(train_a, eval), 1e-4);
  // Without a context (every row empty) the reference applies no dropout.
  unet->module().eval();
  const torch::Tensor no_context_eval = unet->forward(in.x, in.t);
  unet->module().train();
  EXPECT_TRUE(torch::allclose(unet->forward(in.x, in.t), no_context_eval, 1e-6, 1e-6));
}

TEST(IdiffUNetModes, WithoutContextDropoutTrainEqualsEval) {
  auto unet = make_unet(small_params("CA", {{"context_dropout_probability", Value(0.0)}}));
  randomize(*unet, 13);
  const Inputs in = inputs(2);
  torch::NoGradGuard no_grad;
  unet->module().eval();
  const torch::Tensor eval = unet->forward(in.x, in.t, in.context);
  unet->module().train();
  EXPECT_TRUE(torch::allclose(unet->forward(in.x, in.t, in.context), eval, 1e-6, 1e-6));
}

TEST(IdiffUNetModes, AFreshNetworkPredictsZeroLikeTheReference) {
  // final is zero-initialised (zero_module), so an untrained model's eps is exactly 0.
  auto unet = make_unet(small_params("CA"));
  const Inputs in = inputs(2);
  torch::NoGradGuard no_grad;
  EXPECT_EQ(unet->forward(in.x, in.t, in.context).abs().max().item<float>(), 0.0f);
}

// ---------------------------------------------------------------------------------------

TEST(IdiffUNetConformance, TheDenoiserLibraryPassesItsKindsSuite) {
  const host::RegisteredPlugin& plugin = registry().get(Kind::Denoiser, "idiff-unet");
  const auto report = host::check_plugins(registry(), plugin.library->path, runtime());
  std::ostringstream text;
  host::print_report(report, text);
  std::cout << text.str();
  EXPECT_FALSE(report.failed()) << text.str();
  EXPECT_THAT(text.str(), HasSubstr("denoiser contract"));
}

}  // namespace
}  // namespace admis::test::denoisers
