// ElasticFace's iresnet (backbone/iresnet): parity with the reference iresnet18, the
// checkpoint's key set, the iresnet100 layout of the released model, SE, dropout and the
// frozen scale of the embedding BatchNorm.

#include <gmock/gmock.h>

#include "backbones_test_util.h"

namespace admis::test::backbones {
namespace {

using ::testing::HasSubstr;

TEST(IResNet, ReproducesTheReferenceIresnet18InEvalMode) {
  auto net = make_backbone("iresnet", {{"depth", Value(18)}});
  load_fixture_weights(*net, "elasticface_iresnet18.pt");
  const StateDict io = fixture_io("elasticface_iresnet18_io.safetensors");
  const torch::Tensor expected = io.at("output");
  torch::NoGradGuard no_grad;
  const torch::Tensor actual = net->forward(io.at("input"));
  ASSERT_EQ(actual.sizes(), expected.sizes());
  std::cout << "iresnet18 max |diff| = " << (actual - expected).abs().max().item<double>() << " (tolerance "
            << parity_tolerance(expected) << ")" << std::endl;
  EXPECT_TRUE(all_close(actual, expected, parity_tolerance(expected)));
}

TEST(IResNet, StateDictIsTheReferenceStateDict) {
  auto net = make_backbone("iresnet", {{"depth", Value(18)}});
  const StateDict reference = host::read_weights(parity_file("elasticface_iresnet18.pt"));
  EXPECT_EQ(state_keys(*net), keys_of(reference));
  for (const auto& [key, tensor] : host::module_state_dict(net->module()))
    EXPECT_EQ(tensor.sizes(), reference.at(key).sizes()) << key;
}

TEST(IResNet, Depth100IsTheReleasedElasticFaceLayout) {
  auto net = make_backbone("iresnet", {{"depth", Value(100)}});  // as 295672backbone.pth
  const std::set<std::string> keys = state_keys(*net);
  const int blocks[4] = {3, 13, 30, 3};
  for (int stage = 0; stage < 4; ++stage) {
    const std::string layer = "layer" + std::to_string(stage + 1) + ".";
    EXPECT_TRUE(keys.count(layer + std::to_string(blocks[stage] - 1) + ".bn3.running_mean")) << layer;
    EXPECT_FALSE(keys.count(layer + std::to_string(blocks[stage]) + ".bn1.weight")) << layer;
    EXPECT_TRUE(keys.count(layer + "0.downsample.0.weight")) << layer;
    EXPECT_FALSE(keys.count(layer + "1.downsample.0.weight")) << layer;
  }
  EXPECT_EQ(shape_of(*net, "fc.weight"), (std::vector<std::int64_t>{512, 512 * 7 * 7}));
  EXPECT_EQ(net->embedding_size(), 512);
  EXPECT_EQ(net->input_size(), 112);
  std::int64_t values = 0;
  for (const auto& p : net->module().parameters()) values += p.numel();
  EXPECT_EQ(values, 65156160);  // iresnet100's parameter count (torch: sum(p.numel() for p in parameters()))
}

TEST(IResNet, EmbeddingBatchNormScaleIsFixedAtOne) {
  auto net = make_backbone("iresnet", {{"depth", Value(18)}});
  const torch::Tensor scale = *net->module().named_parameters().find("features.weight");
  EXPECT_FALSE(scale.requires_grad());
  EXPECT_TRUE(torch::equal(scale, torch::ones({512})));
  EXPECT_TRUE(net->module().named_parameters().find("features.bias")->requires_grad());
}

TEST(IResNet, UseSeAddsTheGateAfterBn3) {
  auto net = make_backbone("iresnet", {{"depth", Value(18)}, {"use_se", Value(true)}});
  EXPECT_EQ(shape_of(*net, "layer1.0.se_block.fc1.weight"), (std::vector<std::int64_t>{4, 64, 1, 1}));
  EXPECT_EQ(shape_of(*net, "layer4.1.se_block.fc2.weight"), (std::vector<std::int64_t>{512, 32, 1, 1}));
  auto plain = make_backbone("iresnet", {{"depth", Value(18)}});
  EXPECT_EQ(state_keys(*net).size(), state_keys(*plain).size() + 16);
}

TEST(IResNet, NumFeaturesAndDropoutAreHonoured) {
  torch::manual_seed(5);
  auto net = make_backbone("iresnet", {{"depth", Value(18)}, {"num_features", Value(128)}, {"dropout", Value(0.5)}});
  EXPECT_EQ(net->embedding_size(), 128);
  EXPECT_EQ(shape_of(*net, "fc.weight"), (std::vector<std::int64_t>{128, 512 * 7 * 7}));
  const torch::Tensor images = random_images(2, 112);
  torch::NoGradGuard no_grad;
  net->module().eval();
  const torch::Tensor a = net->forward(images);
  EXPECT_EQ(a.sizes(), torch::IntArrayRef({2, 128}));
  EXPECT_TRUE(torch::equal(a, net->forward(images)));  // eval: no dropout
  net->module().train();
  EXPECT_FALSE(torch::equal(net->forward(images), net->forward(images)));  // a fresh mask per call
}

TEST(IResNet, ParametersAndInputsAreValidated) {
  EXPECT_THAT(error_of([] {
                make_backbone("iresnet", {{"depth", Value(152)}});
              }),
              HasSubstr("parameter 'depth' = '152' is not one of: 18, 34, 50, 100, 200"));
  EXPECT_THAT(error_of([] { make_backbone("iresnet", {{"dropout", Value(1.0)}}); }), HasSubstr("'dropout'"));
  auto net = make_backbone("iresnet", {{"depth", Value(18)}});
  EXPECT_EQ(error_of([&] {
              net->forward(torch::zeros({2, 3, 224, 224}));
            }),
            "backbone/iresnet: images must have shape [N, 3, 112, 112] (input_size = 112), got [2, 3, 224, 224]");
}

}  // namespace
}  // namespace admis::test::backbones
