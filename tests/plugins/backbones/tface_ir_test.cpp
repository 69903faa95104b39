// TFace IR / IR-SE (backbone/ir): parity with the reference IR-18, the checkpoint's key
// set, strict refusals, parameter and input validation, train/eval behaviour, and the
// `admis forward` command on the fixture.

#include <gmock/gmock.h>

#include "backbones_test_util.h"

namespace admis::test::backbones {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<Backbone> ir18_with_fixture_weights() {
  auto ir = make_backbone("ir", {{"num_layers", Value(18)}});
  load_fixture_weights(*ir, "tface_ir_18.pt");
  return ir;
}

TEST(TfaceIr, ReproducesTheReferenceIr18InEvalMode) {
  auto ir = ir18_with_fixture_weights();
  const StateDict io = fixture_io("tface_ir_18_io.safetensors");
  const torch::Tensor expected = io.at("output");
  torch::NoGradGuard no_grad;
  const torch::Tensor actual = ir->forward(io.at("input"));
  ASSERT_EQ(actual.sizes(), expected.sizes());
  std::cout << "IR-18 max |diff| = " << (actual - expected).abs().max().item<double>() << " (tolerance "
            << parity_tolerance(expected) << ")" << std::endl;
  EXPECT_TRUE(all_close(actual, expected, parity_tolerance(expected)));
}

TEST(TfaceIr, StateDictIsTheReferenceStateDict) {
  auto ir = make_backbone("ir", {{"num_layers", Value(18)}});
  const StateDict reference = host::read_weights(parity_file("tface_ir_18.pt"));
  EXPECT_EQ(state_keys(*ir), keys_of(reference));
  for (const auto& [key, tensor] : host::module_state_dict(ir->module()))
    EXPECT_EQ(tensor.sizes(), reference.at(key).sizes()) << key;
  // BatchNorm counters and running statistics are buffers, not learnable parameters.
  EXPECT_EQ(ir->module().named_parameters().find("input_layer.1.running_mean"), nullptr);
  EXPECT_NE(ir->module().named_buffers().find("input_layer.1.num_batches_tracked"), nullptr);
  EXPECT_EQ(ir->embedding_size(), 512);
  EXPECT_EQ(ir->input_size(), 112);
}

TEST(TfaceIr, Ir18WeightsInAnIr34AreRefusedListingTheMissingKeys) {
  auto ir34 = make_backbone("ir", {{"num_layers", Value(34)}});
  const std::string path = parity_file("tface_ir_18.pt");
  const StateDict before = host::module_state_dict(ir34->module());
  const torch::Tensor stem_before = before.at("input_layer.0.weight").clone();
  const std::string message =
      error_of([&] { host::load_state_dict(ir34->module(), host::read_weights(path), LoadOptions{}, path); });
  EXPECT_THAT(message, HasSubstr(path + ": weights do not match the module"));
  EXPECT_THAT(message, HasSubstr("missing keys (in the module, not in the checkpoint)"));
  // IR-34 has 16 units, IR-18 8: body.8 onwards is missing from the checkpoint.
  EXPECT_THAT(message, HasSubstr("body.10.res_layer.0.num_batches_tracked"));
  EXPECT_THAT(message, HasSubstr("shape mismatches"));
  // Nothing was copied.
  EXPECT_TRUE(torch::equal(host::module_state_dict(ir34->module()).at("input_layer.0.weight"), stem_before));
}

TEST(TfaceIr, NumLayersOutsideTheChoicesIsRefusedNamingThem) {
  EXPECT_THAT(error_of([] {
                make_backbone("ir", {{"num_layers", Value(19)}});
              }),
              HasSubstr("parameter 'num_layers' = '19' is not one of: 18, 34, 50, 100, 152, 200"));
  EXPECT_THAT(error_of([] {
                make_backbone("ir", {{"input_size", Value(128)}});
              }),
              HasSubstr("parameter 'input_size' = '128' is not one of: 112, 224"));
  EXPECT_THAT(error_of([] {
                make_backbone("ir", {{"mode", Value("irse")}});
              }),
              HasSubstr("parameter 'mode' = 'irse' is not one of: ir, ir_se"));
}

TEST(TfaceIr, ImagesOfAnotherSizeAreRefusedNamingInputSize) {
  auto ir = make_backbone("ir", {{"num_layers", Value(18)}});
  ir->module().eval();
  EXPECT_EQ(error_of([&] {
              ir->forward(torch::zeros({2, 3, 96, 96}));
            }),
            "backbone/ir: images must have shape [N, 3, 112, 112] (input_size = 112), got [2, 3, 96, 96]");
  EXPECT_EQ(error_of([&] {
              ir->forward(torch::zeros({3, 112, 112}));
            }),
            "backbone/ir: images must have shape [N, 3, 112, 112] (input_size = 112), got [3, 112, 112]");
  EXPECT_EQ(error_of([&] {
              ir->forward(torch::zeros({2, 1, 112, 112}));
            }),
            "backbone/ir: images must have shape [N, 3, 112, 112] (input_size = 112), got [2, 1, 112, 112]");
  EXPECT_EQ(error_of([&] {
              ir->forward(torch::zeros({2, 3, 112, 112}, torch::kByte));
            }),
            "backbone/ir: images must be floating point in [-1, 1], got Byte");
  EXPECT_EQ(error_of([&] {
              ir->forward(torch::zeros({0, 3, 112, 112}));
            }),
            "backbone/ir: images hold no rows (the batch is empty)");
  ir->module().train();
  EXPECT_THAT(error_of([&] {
                ir->forward(torch::zeros({1, 3, 112, 112}));
              }),
              HasSubstr("backbone/ir: a batch of 1 image cannot pass in train mode"));
}

TEST(TfaceIr, IrSeAddsASqueezeExcitationGateToEveryUnit) {
  auto ir_se = make_backbone("ir", {{"num_layers", Value(18)}, {"mode", Value("ir_se")}});
  const std::set<std::string> keys = state_keys(*ir_se);
  for (int unit = 0; unit < 8; ++unit) {
    EXPECT_TRUE(keys.count("body." + std::to_string(unit) + ".res_layer.se_block.fc1.weight")) << unit;
    EXPECT_TRUE(keys.count("body." + std::to_string(unit) + ".res_layer.se_block.fc2.weight")) << unit;
  }
  EXPECT_EQ(shape_of(*ir_se, "body.0.res_layer.se_block.fc1.weight"), (std::vector<std::int64_t>{4, 64, 1, 1}));
  EXPECT_EQ(shape_of(*ir_se, "body.7.res_layer.se_block.fc2.weight"), (std::vector<std::int64_t>{512, 32, 1, 1}));
  // The plain IR-18 keys are all there too: the gate is appended to res_layer.
  auto ir = make_backbone("ir", {{"num_layers", Value(18)}});
  for (const auto& key : state_keys(*ir)) EXPECT_TRUE(keys.count(key)) << key;
  EXPECT_EQ(keys.size(), state_keys(*ir).size() + 16);
}

TEST(TfaceIr, Input224FlattensA14By14Map) {
  auto ir = make_backbone("ir", {{"num_layers", Value(18)}, {"input_size", Value(224)}});
  EXPECT_EQ(ir->input_size(), 224);
  EXPECT_EQ(shape_of(*ir, "output_layer.3.weight"), (std::vector<std::int64_t>{512, 512 * 14 * 14}));
  ir->module().eval();
  torch::NoGradGuard no_grad;
  EXPECT_EQ(ir->forward(random_images(2, 224)).sizes(), torch::IntArrayRef({2, 512}));
  EXPECT_THAT(error_of([&] { ir->forward(random_images(2, 112)); }), HasSubstr("(input_size = 224)"));
}

TEST(TfaceIr, DeepVariantsUseBottleneckUnitsEndingWith2048Channels) {
  auto ir152 = make_backbone("ir", {{"num_layers", Value(152)}});
  const std::set<std::string> keys = state_keys(*ir152);
  EXPECT_TRUE(keys.count("body.49.res_layer.8.running_var"));  // 3 + 8 + 36 + 3 units
  EXPECT_FALSE(keys.count("body.50.res_layer.0.weight"));
  EXPECT_EQ(shape_of(*ir152, "body.0.res_layer.1.weight"), (std::vector<std::int64_t>{64, 64, 1, 1}));
  EXPECT_EQ(shape_of(*ir152, "body.0.shortcut_layer.0.weight"), (std::vector<std::int64_t>{256, 64, 1, 1}));
  EXPECT_EQ(shape_of(*ir152, "output_layer.0.weight"), (std::vector<std::int64_t>{2048}));
  EXPECT_EQ(shape_of(*ir152, "output_layer.3.weight"), (std::vector<std::int64_t>{512, 2048 * 7 * 7}));
  // Units of equal width keep the identity shortcut (a strided pick, no state).
  EXPECT_FALSE(keys.count("body.1.shortcut_layer.0.weight"));
}

TEST(TfaceIr, TrainModeUsesBatchStatisticsDropoutAndGradients) {
  auto ir = ir18_with_fixture_weights();
  const torch::Tensor images = fixture_io("tface_ir_18_io.safetensors").at("input");
  const torch::Tensor eval_out = [&] {
    torch::NoGradGuard no_grad;
    return ir->forward(images);
  }();

  ir->module().train();
  const torch::Tensor counter = *ir->module().named_buffers().find("output_layer.4.num_batches_tracked");
  const std::int64_t batches_before = counter.item<std::int64_t>();
  torch::manual_seed(3);
  const torch::Tensor train_out = ir->forward(images);
  EXPECT_EQ(counter.item<std::int64_t>(), batches_before + 1);
  // The embedding BatchNorm (no affine) normalises each feature over the batch.
  EXPECT_LT(train_out.mean(0).abs().max().item<double>(), 1e-4);
  EXPECT_FALSE(torch::allclose(train_out, eval_out, 1e-3, 1e-3));
  // Dropout(0.4) draws a new mask each call.
  torch::manual_seed(4);
  EXPECT_FALSE(torch::equal(ir->forward(images), train_out));

  train_out.pow(2).sum().backward();
  const torch::Tensor stem = *ir->module().named_parameters().find("input_layer.0.weight");
  ASSERT_TRUE(stem.grad().defined());
  EXPECT_GT(stem.grad().abs().sum().item<double>(), 0.0);
}

TEST(TfaceIr, AdmisForwardReproducesTheFixture) {
  const std::string io_path = parity_file("tface_ir_18_io.safetensors");
  const std::string out = temp_dir("ir-forward") + "/out.safetensors";
  const CommandResult r = run_command(admis_exe() + " --threads 2 forward backbone/ir --set num_layers=18 --weights " +
                                      parity_file("tface_ir_18.pt") + " --in " + io_path + " --out " + out);
  ASSERT_EQ(r.status, 0) << r.output;
  const torch::Tensor expected = fixture_io("tface_ir_18_io.safetensors").at("output");
  const StateDict result = host::read_safetensors(out);
  ASSERT_TRUE(result.count("output")) << r.output;
  EXPECT_TRUE(all_close(result.at("output"), expected, parity_tolerance(expected)));
}

}  // namespace
}  // namespace admis::test::backbones
