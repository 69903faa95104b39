// TFace MobileFaceNet (backbone/mobilefacenet): the reference's module layout and key
// names, GDC and GNAP outputs, eval determinism, and a strict round trip of its own state
// through safetensors. (No reference fixture exists; backbone-mobilefacenet.safetensors
// pins its outputs.)

#include <gmock/gmock.h>

#include "backbones_test_util.h"

namespace admis::test::backbones {
namespace {

using ::testing::HasSubstr;

TEST(MobileFaceNet, LayoutAndKeysFollowTheReference) {
  auto net = make_backbone("mobilefacenet", {{"embedding_size", Value(128)}});
  EXPECT_EQ(net->embedding_size(), 128);
  EXPECT_EQ(net->input_size(), 112);
  using Shape = std::vector<std::int64_t>;
  EXPECT_EQ(shape_of(*net, "conv1.conv.weight"), (Shape{64, 3, 3, 3}));
  EXPECT_EQ(shape_of(*net, "conv2_dw.conv.weight"), (Shape{64, 1, 3, 3}));
  EXPECT_EQ(shape_of(*net, "conv_23.conv.conv.weight"), (Shape{128, 64, 1, 1}));
  EXPECT_EQ(shape_of(*net, "conv_23.conv_dw.conv.weight"), (Shape{128, 1, 3, 3}));
  EXPECT_EQ(shape_of(*net, "conv_23.project.conv.weight"), (Shape{64, 128, 1, 1}));
  EXPECT_EQ(shape_of(*net, "conv_3.model.3.project.bn.running_var"), (Shape{64}));
  EXPECT_EQ(shape_of(*net, "conv_4.model.5.conv_dw.prelu.weight"), (Shape{256}));
  EXPECT_EQ(shape_of(*net, "conv_45.conv_dw.conv.weight"), (Shape{512, 1, 3, 3}));
  EXPECT_EQ(shape_of(*net, "conv_5.model.1.conv.conv.weight"), (Shape{256, 128, 1, 1}));
  EXPECT_EQ(shape_of(*net, "conv_6_sep.conv.weight"), (Shape{512, 128, 1, 1}));
  EXPECT_EQ(shape_of(*net, "output_layer.conv_6_dw.conv.weight"), (Shape{512, 1, 7, 7}));
  EXPECT_EQ(shape_of(*net, "output_layer.linear.weight"), (Shape{128, 512}));
  const std::set<std::string> keys = state_keys(*net);
  EXPECT_FALSE(keys.count("conv_3.model.4.conv.conv.weight"));  // 4 residual blocks
  EXPECT_FALSE(keys.count("output_layer.linear.bias"));
  EXPECT_FALSE(keys.count("output_layer.bn.weight"));  // BatchNorm1d(affine=False)
  EXPECT_TRUE(keys.count("output_layer.bn.num_batches_tracked"));
  EXPECT_EQ(keys.size(), 331u);  // TFace MobileFaceNet(embedding_size=128) state_dict()
  std::int64_t values = 0;
  for (const auto& p : net->module().parameters()) values += p.numel();
  EXPECT_EQ(values, 1002880);
}

TEST(MobileFaceNet, GnapPoolsTo512WithoutLearnableOutput) {
  auto net = make_backbone("mobilefacenet", {{"output_name", Value("GNAP")}});
  const std::set<std::string> keys = state_keys(*net);
  EXPECT_EQ(keys.size(), 327u);
  EXPECT_TRUE(keys.count("output_layer.bn1.running_mean"));
  EXPECT_TRUE(keys.count("output_layer.bn2.running_var"));
  EXPECT_FALSE(keys.count("output_layer.bn1.weight"));
  EXPECT_FALSE(keys.count("output_layer.linear.weight"));
  net->module().eval();
  torch::NoGradGuard no_grad;
  EXPECT_EQ(net->forward(random_images(2, 112)).sizes(), torch::IntArrayRef({2, 512}));
  EXPECT_EQ(error_of([] {
              make_backbone("mobilefacenet", {{"output_name", Value("GNAP")}, {"embedding_size", Value(128)}});
            }),
            "backbone/mobilefacenet: output_name 'GNAP' pools the 512 channels of conv_6_sep, so embedding_size must "
            "be 512, got 128");
}

TEST(MobileFaceNet, EvalModeIsDeterministicAndPerImage) {
  torch::manual_seed(11);
  auto net = make_backbone("mobilefacenet", {});
  net->module().eval();
  const torch::Tensor images = random_images(4, 112);
  torch::NoGradGuard no_grad;
  const torch::Tensor batch = net->forward(images);
  EXPECT_EQ(batch.sizes(), torch::IntArrayRef({4, 512}));
  EXPECT_TRUE(torch::equal(batch, net->forward(images)));
  // With GDC every image's embedding is its own: alone or in a batch, the same.
  EXPECT_TRUE(all_close(net->forward(images.slice(0, 2, 3)), batch.slice(0, 2, 3), 1e-4));
}

TEST(MobileFaceNet, TrainModeUpdatesRunningStatistics) {
  torch::manual_seed(12);
  auto net = make_backbone("mobilefacenet", {{"embedding_size", Value(64)}});
  net->module().train();
  const torch::Tensor running_mean = *net->module().named_buffers().find("output_layer.bn.running_mean");
  const torch::Tensor before = running_mean.clone();
  const torch::Tensor out = net->forward(random_images(4, 112));
  EXPECT_FALSE(torch::equal(running_mean, before));
  EXPECT_LT(out.mean(0).abs().max().item<double>(), 1e-4);  // batch-normalised features
  out.pow(2).sum().backward();
  EXPECT_TRUE(net->module().named_parameters().find("conv1.conv.weight")->grad().defined());
}

TEST(MobileFaceNet, OwnStateRoundTripsStrictlyThroughSafetensors) {
  torch::manual_seed(21);
  auto trained = make_backbone("mobilefacenet", {{"embedding_size", Value(128)}});
  trained->module().train();
  trained->forward(random_images(4, 112));  // move the running statistics off their start
  const std::string path = temp_dir("mobilefacenet") + "/state.safetensors";
  host::write_safetensors(host::module_state_dict(trained->module()), path);

  torch::manual_seed(22);
  auto loaded = make_backbone("mobilefacenet", {{"embedding_size", Value(128)}});
  const LoadReport report = host::load_state_dict(loaded->module(), host::read_weights(path), LoadOptions{}, path);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.loaded, state_keys(*trained).size());
  const StateDict a = host::module_state_dict(trained->module());
  const StateDict b = host::module_state_dict(loaded->module());
  for (const auto& [key, tensor] : a) EXPECT_TRUE(torch::equal(tensor, b.at(key))) << key;

  trained->module().eval();
  loaded->module().eval();
  const torch::Tensor images = random_images(2, 112);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(trained->forward(images), loaded->forward(images)));

  // And another embedding size does not load.
  auto other = make_backbone("mobilefacenet", {{"embedding_size", Value(256)}});
  EXPECT_THAT(error_of([&] { host::load_state_dict(other->module(), host::read_weights(path), LoadOptions{}, path); }),
              HasSubstr("output_layer.linear.weight: checkpoint [128, 512] vs module [256, 512]"));
}

TEST(MobileFaceNet, ParametersAndInputsAreValidated) {
  EXPECT_THAT(error_of([] {
                make_backbone("mobilefacenet", {{"input_size", Value(224)}});
              }),
              HasSubstr("parameter 'input_size' = '224' is not one of: 112"));
  EXPECT_THAT(error_of([] {
                make_backbone("mobilefacenet", {{"output_name", Value("GAP")}});
              }),
              HasSubstr("parameter 'output_name' = 'GAP' is not one of: GDC, GNAP"));
  auto net = make_backbone("mobilefacenet", {});
  EXPECT_EQ(error_of([&] {
              net->forward(torch::zeros({2, 3, 224, 224}));
            }),
            "backbone/mobilefacenet: images must have shape [N, 3, 112, 112] (input_size = 112), got [2, 3, 224, 224]");
}

}  // namespace
}  // namespace admis::test::backbones
