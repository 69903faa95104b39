// vq-f4 (LDM VQ-f4 first stage as ADMIS uses it): parity with VQEncoderInterface /
// VQDecoderInterface on the fixture, loading the two released-format halves and one
// combined file, the released layout, and the errors a user can run into.

#include <gmock/gmock.h>

#include "codecs_test_util.h"

namespace admis::test::codecs {
namespace {

using ::testing::HasSubstr;

// Compares, prints the max abs diff reached and the tolerance.
void expect_parity(const std::string& what, const torch::Tensor& actual, const torch::Tensor& expected) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double diff = max_abs_diff(actual, expected), tolerance = parity_tolerance(expected);
  std::cout << "vq-f4 " << what << ": max |diff| = " << diff << " (tolerance " << tolerance << ")" << std::endl;
  EXPECT_TRUE(all_close(actual, expected, tolerance)) << what;
}

TEST(VqF4, EncodeIsVQEncoderInterface) {
  auto codec = make_codec("vq-f4", fixture_config_with_weights());
  codec->module().eval();
  const StateDict io = fixture_io();
  torch::NoGradGuard no_grad;
  expect_parity("latent", codec->encode(io.at("image")), io.at("latent"));
}

TEST(VqF4, DecodeQuantisesToTheNearestCodeFirstAsVQDecoderInterface) {
  auto codec = make_codec("vq-f4", fixture_config_with_weights());
  codec->module().eval();
  const StateDict io = fixture_io();
  torch::NoGradGuard no_grad;
  expect_parity("decoded", codec->decode(io.at("latent")), io.at("decoded"));
  // The lookup matters on this fixture: skipping it would fail the comparison above.
  EXPECT_GT(max_abs_diff(io.at("decoded"), io.at("decoded_unquantized")), parity_tolerance(io.at("decoded")));
}

TEST(VqF4, ForceNotQuantizeDecodesTheLatentsAsTheyAre) {
  ParamMap params = fixture_config_with_weights();
  params["force_not_quantize"] = Value(true);
  auto codec = make_codec("vq-f4", params);
  codec->module().eval();
  const StateDict io = fixture_io();
  torch::NoGradGuard no_grad;
  expect_parity("decoded_unquantized", codec->decode(io.at("latent")), io.at("decoded_unquantized"));
}

TEST(VqF4, ModuleHoldsBothHalvesUnderTheReleasedKeys) {
  auto codec = make_codec("vq-f4", fixture_config());
  const StateDict encoder = host::read_weights(parity_file("vq_f4_encoder_state_dict.pt"));
  const StateDict decoder = host::read_weights(parity_file("vq_f4_decoder_state_dict.pt"));
  std::set<std::string> expected;
  for (const auto* half : {&encoder, &decoder})
    for (const auto& [key, tensor] : *half) expected.insert(key);
  EXPECT_EQ(state_keys(codec->module()), expected);
  for (const auto& [key, tensor] : host::module_state_dict(codec->module())) {
    const StateDict& half = encoder.count(key) ? encoder : decoder;
    EXPECT_EQ(tensor.sizes(), half.at(key).sizes()) << key;
  }
}

TEST(VqF4, OneCombinedWeightsFileLoadsThroughTheGenericWeightsEntry) {
  // What `admis weights convert` makes of the two halves: one safetensors file.
  StateDict combined = host::read_weights(parity_file("vq_f4_encoder_state_dict.pt"));
  combined.merge(host::read_weights(parity_file("vq_f4_decoder_state_dict.pt")));
  const std::string path = temp_dir("vq-f4") + "/first_stage.safetensors";
  host::write_safetensors(combined, path);

  auto codec = std::dynamic_pointer_cast<Codec>(runtime().create(Kind::Codec, "vq-f4", fixture_config(), path));
  ASSERT_TRUE(codec);
  codec->module().eval();
  const StateDict io = fixture_io();
  torch::NoGradGuard no_grad;
  expect_parity("latent (combined file)", codec->encode(io.at("image")), io.at("latent"));
  expect_parity("decoded (combined file)", codec->decode(io.at("latent")), io.at("decoded"));
}

TEST(VqF4, DefaultsAreTheReleasedAdmisFirstStage) {
  // IDiff-Face models/autoencoder/first_stage_config.yaml: ch 128, ch_mult [1,2,4],
  // 2 res blocks, z_channels 3, no attention but the middle's, embed_dim 3, 8192 codes.
  auto codec = make_codec("vq-f4");
  EXPECT_EQ(codec->latent_channels(), 3);
  EXPECT_EQ(codec->downsampling_factor(), 4);
  const StateDict state = host::module_state_dict(codec->module());
  auto shape = [&](const std::string& key) { return state.at(key).sizes().vec(); };
  using Shape = std::vector<std::int64_t>;
  EXPECT_EQ(shape("encoder.conv_in.weight"), (Shape{128, 3, 3, 3}));
  EXPECT_EQ(shape("encoder.down.2.block.1.conv2.weight"), (Shape{512, 512, 3, 3}));
  EXPECT_EQ(shape("encoder.down.1.block.0.nin_shortcut.weight"), (Shape{256, 128, 1, 1}));
  EXPECT_EQ(shape("encoder.down.1.downsample.conv.weight"), (Shape{256, 256, 3, 3}));
  EXPECT_FALSE(state.count("encoder.down.2.downsample.conv.weight"));
  EXPECT_EQ(shape("encoder.mid.attn_1.proj_out.weight"), (Shape{512, 512, 1, 1}));
  EXPECT_EQ(shape("encoder.conv_out.weight"), (Shape{3, 512, 3, 3}));
  EXPECT_EQ(shape("quant_conv.weight"), (Shape{3, 3, 1, 1}));
  EXPECT_EQ(shape("quantize.embedding.weight"), (Shape{8192, 3}));
  EXPECT_EQ(shape("post_quant_conv.weight"), (Shape{3, 3, 1, 1}));
  EXPECT_EQ(shape("decoder.conv_in.weight"), (Shape{512, 3, 3, 3}));
  EXPECT_EQ(shape("decoder.up.0.block.2.conv2.weight"), (Shape{128, 128, 3, 3}));
  EXPECT_EQ(shape("decoder.up.2.upsample.conv.weight"), (Shape{512, 512, 3, 3}));
  EXPECT_FALSE(state.count("decoder.up.0.upsample.conv.weight"));
  EXPECT_FALSE(state.count("decoder.up.2.block.3.conv1.weight"));
  EXPECT_EQ(shape("decoder.conv_out.weight"), (Shape{3, 128, 3, 3}));
  for (const auto& [key, tensor] : state) EXPECT_EQ(key.find(".attn.0."), std::string::npos) << key;

  codec->module().eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor latent = codec->encode(random_images(1, 128));  // ADMIS: 128 px faces
  EXPECT_EQ(latent.sizes(), torch::IntArrayRef({1, 3, 32, 32}));
}

TEST(VqF4, AttentionResolutionsAddAttentionAfterEveryBlockOfThatLevel) {
  auto codec = make_codec("vq-f4", {{"ch", Value(32)}, {"resolution", Value(32)},
                                    {"attn_resolutions", Value(std::vector<std::int64_t>{16})}});
  const std::set<std::string> keys = state_keys(codec->module());
  // Encoder level 1 and decoder level 1 run at 16 px when the nominal resolution is 32.
  EXPECT_TRUE(keys.count("encoder.down.1.attn.1.q.weight"));
  EXPECT_FALSE(keys.count("encoder.down.0.attn.0.q.weight"));
  EXPECT_TRUE(keys.count("decoder.up.1.attn.2.proj_out.weight"));
  EXPECT_FALSE(keys.count("decoder.up.2.attn.0.q.weight"));
  codec->module().eval();
  torch::NoGradGuard no_grad;
  EXPECT_EQ(codec->decode(codec->encode(random_images(1, 32))).sizes(), torch::IntArrayRef({1, 3, 32, 32}));
}

// ---------------------------------------------------------------------------------------
// Errors

TEST(VqF4Errors, AMissingWeightsFileIsNamed) {
  ParamMap params = fixture_config();
  params["encoder_weights"] = Value("/nonexistent/first_stage_encoder_state_dict.pt");
  const std::string message = error_of([&] { make_codec("vq-f4", params); });
  EXPECT_THAT(message, HasSubstr("codec/vq-f4: encoder_weights = '/nonexistent/first_stage_encoder_state_dict.pt' "
                                 "cannot be read: "));
  EXPECT_THAT(message, HasSubstr("No such file"));
  std::cout << message << std::endl;
}

TEST(VqF4Errors, TheDecoderFileGivenAsEncoderWeightsIsRefusedWithTheMissingKeys) {
  ParamMap params = fixture_config();
  const std::string decoder_file = parity_file("vq_f4_decoder_state_dict.pt");
  params["encoder_weights"] = Value(decoder_file);
  const std::string message = error_of([&] { make_codec("vq-f4", params); });
  EXPECT_THAT(message, HasSubstr("codec/vq-f4: encoder_weights = '" + decoder_file +
                                 "' does not hold the expected weights (the released "
                                 "first_stage_encoder_state_dict.pt (keys encoder.*, quant_conv.*)); it has no "
                                 "encoder.*, quant_conv.* keys but decoder.*, post_quant_conv.*, quantize.*"));
  EXPECT_THAT(message, HasSubstr("missing keys"));
  EXPECT_THAT(message, HasSubstr("encoder.conv_in.weight"));
  EXPECT_THAT(message, HasSubstr("decoder.conv_in.weight"));  // listed as unexpected
}

TEST(VqF4Errors, TheEncoderFileGivenAsDecoderWeightsIsRefusedWithTheMissingKeys) {
  ParamMap params = fixture_config();
  const std::string encoder_file = parity_file("vq_f4_encoder_state_dict.pt");
  params["decoder_weights"] = Value(encoder_file);
  const std::string message = error_of([&] { make_codec("vq-f4", params); });
  EXPECT_THAT(message, HasSubstr("codec/vq-f4: decoder_weights = '" + encoder_file +
                                 "' does not hold the expected weights"));
  EXPECT_THAT(message, HasSubstr("it has no decoder.*, quantize.*, post_quant_conv.* keys but encoder.*, "
                                 "quant_conv.*"));
  EXPECT_THAT(message, HasSubstr("missing keys"));
  EXPECT_THAT(message, HasSubstr("decoder.conv_in.weight"));
}

TEST(VqF4Errors, ReleasedWeightsForAnotherWidthAreRefusedWithTheShapes) {
  ParamMap params = fixture_config_with_weights();
  params["ch"] = Value(64);
  const std::string message = error_of([&] { make_codec("vq-f4", params); });
  EXPECT_THAT(message, HasSubstr("encoder_weights"));
  EXPECT_THAT(message, HasSubstr("encoder.conv_in.weight: checkpoint [32, 3, 3, 3] vs module [64, 3, 3, 3]"));
}

TEST(VqF4Errors, WrongInputShapesAreRefused) {
  auto codec = make_codec("vq-f4", fixture_config());
  torch::NoGradGuard no_grad;
  EXPECT_EQ(error_of([&] { codec->encode(torch::zeros({2, 3, 30, 32})); }),
            "codec/vq-f4: images must have shape [N, 3, H, W] with H and W multiples of 4, got [2, 3, 30, 32]");
  EXPECT_EQ(error_of([&] { codec->encode(torch::zeros({3, 32, 32})); }),
            "codec/vq-f4: images must have shape [N, 3, H, W] with H and W multiples of 4, got [3, 32, 32]");
  EXPECT_EQ(error_of([&] { codec->decode(torch::zeros({2, 4, 8, 8})); }),
            "codec/vq-f4: latents must have shape [N, 3, H, W], got [2, 4, 8, 8]");
  EXPECT_EQ(error_of([&] { codec->decode(torch::zeros({2, 3, 8, 8}, torch::kInt64)); }),
            "codec/vq-f4: latents must be floating point, got Long");
}

TEST(VqF4Errors, ParametersTheFirstStageCannotTakeAreRefused) {
  EXPECT_THAT(error_of([] { make_codec("vq-f4", {{"double_z", Value(true)}}); }),
              HasSubstr("codec/vq-f4: double_z = true makes the encoder output 2 * z_channels"));
  EXPECT_EQ(error_of([] { make_codec("vq-f4", {{"ch", Value(48)}}); }),
            "codec/vq-f4: ch = 48 is not a multiple of 32, the GroupNorm group count (LDM's Normalize)");
  EXPECT_THAT(error_of([] { make_codec("vq-f4", {{"ch_mult", Value(std::vector<std::int64_t>{1, 0})}}); }),
              HasSubstr("ch_mult"));
  EXPECT_EQ(error_of([] { make_codec("vq-f4", {{"ch_mult", Value(std::vector<std::int64_t>{})}}); }),
            "codec/vq-f4: ch_mult must list at least one multiplier");
}

}  // namespace
}  // namespace admis::test::codecs
