// idiff-unet against the reference ConditionalUNet (../shared/parity, generative_shared.json):
//   idiff_unet_ca / idiff_unet_adagn / idiff_unet_uncond: eps, eps_masked (dropout_mask rows
//     get the empty-context embedding) and eps_no_context (context = None); tolerance max abs
//     diff <= 1e-4 * max(1, max|eps|).
//   ddim_trajectory: the ddim-admis scheduler driving idiff-unet with the CA weights from x_T
//     reproduces sample_ddim's x0 after 50 and 25 steps; tolerance 1e-3 * max(1, max|x0|).
// Also: the fixture checkpoints (DDPM wrapper state dicts) load strictly through the host
// with checkpoint_layout(), and the default configuration is the released model's size.

#include <gmock/gmock.h>

#include <iostream>

#include "denoisers_test_util.h"

namespace admis::test::denoisers {
namespace {

using ::testing::HasSubstr;

struct Fixture {
  std::string name;  // generative_shared.json entry
  std::string condition_type;
  bool conditional;
};

class IdiffUNetParity : public ::testing::TestWithParam<Fixture> {};

void expect_parity(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double diff = max_abs_diff(actual, expected), tol = tolerance(expected, 1e-4);
  std::cout << "[ parity   ] " << what << ": max |diff| = " << diff << " (tolerance " << tol << ")" << std::endl;
  EXPECT_LE(diff, tol) << what;
}

TEST_P(IdiffUNetParity, ReproducesTheReferenceEps) {
  const Fixture f = GetParam();
  auto unet = fixture_unet(f.condition_type, f.conditional, f.name + ".ckpt");
  const StateDict& io = fixture_io(f.name + "_io.safetensors");
  torch::InferenceMode guard;
  const torch::Tensor& x = io.at("x");
  const torch::Tensor& t = io.at("t");
  if (!f.conditional) {
    // The reference ignores any context of an unconditional model; so does the plugin.
    expect_parity(unet->forward(x, t), io.at("eps"), f.name + " eps");
    const torch::Tensor some_context = torch::randn({x.size(0), 512});
    expect_parity(unet->forward(x, t, some_context), io.at("eps"), f.name + " eps (context ignored)");
    return;
  }
  const torch::Tensor& context = io.at("context");
  const torch::Tensor& mask = io.at("dropout_mask");
  ASSERT_TRUE(mask.any().item<bool>() && !mask.all().item<bool>()) << "the fixture should mask some rows only";
  expect_parity(unet->forward(x, t, context), io.at("eps"), f.name + " eps");
  expect_parity(unet->forward(x, t, context, mask), io.at("eps_masked"), f.name + " eps_masked");
  expect_parity(unet->forward(x, t), io.at("eps_no_context"), f.name + " eps_no_context");
  // The masked rows are the context-free ones, the others are unchanged.
  const torch::Tensor masked = unet->forward(x, t, context, mask);
  const torch::Tensor rows = mask.nonzero().squeeze(1);
  expect_parity(masked.index_select(0, rows), io.at("eps_no_context").index_select(0, rows),
                f.name + " masked rows == no-context rows");
  EXPECT_FALSE(torch::allclose(io.at("eps"), io.at("eps_no_context"), 1e-3, 1e-3)) << "the context must matter";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, IdiffUNetParity,
                         ::testing::Values(Fixture{"idiff_unet_ca", "CA", true},
                                           Fixture{"idiff_unet_adagn", "AdaGN", true},
                                           Fixture{"idiff_unet_uncond", "AdaGN", false}),
                         [](const auto& info) { return info.param.name; });

// x = x_T; for each step: x = step(model(x, model_timestep(i), context), i, x).prev_sample.
torch::Tensor ddim_sample(Denoiser& unet, const Scheduler& scheduler, torch::Tensor x, const torch::Tensor& context) {
  for (std::int64_t i = 0; i < scheduler.num_steps(); ++i) {
    const torch::Tensor t = torch::full({x.size(0)}, scheduler.model_timestep(i), torch::kInt64);
    const torch::Tensor noise = scheduler.uses_noise(i) ? torch::randn_like(x) : torch::Tensor();
    x = scheduler.step(unet.forward(x, t, context), i, x, noise).prev_sample;
  }
  return x;
}

TEST(IdiffUNetDdimTrajectory, DdimAdmisDrivingTheCaUNetReproducesX0After50And25Steps) {
  auto unet = fixture_unet("CA", true, "idiff_unet_ca.ckpt");
  const StateDict& io = fixture_io("ddim_trajectory_io.safetensors");
  torch::InferenceMode guard;
  for (const std::int64_t steps : {50, 25}) {
    auto scheduler = create<Scheduler>(Kind::Scheduler, "ddim-admis",
                                       {{"num_inference_steps", Value(steps)}, {"eta", Value(0.0)}});
    ASSERT_EQ(scheduler->num_steps(), steps);
    const torch::Tensor x0 = ddim_sample(*unet, *scheduler, io.at("x_T"), io.at("context"));
    const torch::Tensor& expected = io.at("x0_ddim" + std::to_string(steps));
    ASSERT_EQ(x0.sizes(), expected.sizes());
    const double diff = max_abs_diff(x0, expected), tol = tolerance(expected, 1e-3);
    std::cout << "[ parity   ] ddim_trajectory x0_ddim" << steps << ": max |diff| = " << diff << " (tolerance "
              << tol << ")" << std::endl;
    EXPECT_LE(diff, tol);
  }
}

// `admis forward` loads the DDPM-wrapped checkpoint unchanged and, given the fixture's
// x, t, context and dropout_mask, writes eps_masked.
TEST(IdiffUNetCommand, AdmisForwardReproducesEpsMaskedFromTheFixture) {
  const std::string out = temp_dir("idiff-unet") + "/eps.safetensors";
  const CommandResult r = run_command(
      admis_exe() + " forward denoiser/idiff-unet --set initial_channels=32 --set 'channel_multipliers=[1,2,2]'" +
      " --set 'is_attention=[false,true,true]' --set context_channels=64 --weights " +
      parity_file("idiff_unet_ca.ckpt") + " --in " + parity_file("idiff_unet_ca_io.safetensors") + " --out " + out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("loaded 610 tensors"));  // 618 in the file, less the 8 schedule buffers
  const torch::Tensor& expected = fixture_io("idiff_unet_ca_io.safetensors").at("eps_masked");
  const torch::Tensor actual = host::read_safetensors(out).at("output");
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const double diff = max_abs_diff(actual, expected), tol = tolerance(expected, 1e-4);
  std::cout << "[ parity   ] admis forward eps_masked: max |diff| = " << diff << " (tolerance " << tol << ")"
            << std::endl;
  EXPECT_LE(diff, tol);
}

// ---------------------------------------------------------------------------------------
// Checkpoint layout: the DDPM wrapper's state dict, as released.

std::set<std::string> keys_of(const StateDict& s) {
  std::set<std::string> keys;
  for (const auto& [k, v] : s) keys.insert(k);
  return keys;
}

TEST(IdiffUNetCheckpoint, ModuleKeysAreTheEpsModelKeysAndTheRestAreTheScheduleBuffers) {
  for (const auto& [file, condition, conditional] :
       std::vector<std::tuple<std::string, std::string, bool>>{{"idiff_unet_ca.ckpt", "CA", true},
                                                               {"idiff_unet_adagn.ckpt", "AdaGN", true},
                                                               {"idiff_unet_uncond.ckpt", "AdaGN", false}}) {
    auto unet = make_unet(fixture_params(condition, conditional));
    const StateDict ckpt = host::read_weights(parity_file(file));
    std::set<std::string> eps_model, wrapper;
    for (const auto& [key, tensor] : ckpt) {
      if (key.rfind("eps_model.", 0) == 0) {
        eps_model.insert(key.substr(10));
      } else {
        wrapper.insert(key);
      }
    }
    const StateDict own = host::module_state_dict(unet->module());
    EXPECT_EQ(keys_of(own), eps_model) << file;
    for (const auto& [key, tensor] : own)
      EXPECT_EQ(tensor.sizes(), ckpt.at("eps_model." + key).sizes()) << file << " " << key;
    const LoadOptions layout = unet->checkpoint_layout();
    EXPECT_EQ(std::set<std::string>(layout.ignore_keys.begin(), layout.ignore_keys.end()), wrapper) << file;
    EXPECT_THAT(layout.strip_prefixes, ::testing::ElementsAre("module.", "eps_model."));
  }
}

TEST(IdiffUNetCheckpoint, LoadingThroughTheHostCopiesTheWeights) {
  auto unet = fixture_unet("CA", true, "idiff_unet_ca.ckpt");
  const StateDict ckpt = host::read_weights(parity_file("idiff_unet_ca.ckpt"));
  for (const auto& [key, tensor] : host::module_state_dict(unet->module()))
    EXPECT_TRUE(torch::equal(tensor, ckpt.at("eps_model." + key).to(torch::kFloat32))) << key;
}

TEST(IdiffUNetCheckpoint, WeightsOfAnotherConditioningAreRefusedNamingTheKeys) {
  const std::string path = parity_file("idiff_unet_adagn.ckpt");
  const std::string message = error_of([&] { make_unet(fixture_params("CA", true), path); });
  EXPECT_THAT(message, HasSubstr(path));
  // AdaGN residual blocks embed the context; CA ones do not but carry cross-attention.
  EXPECT_THAT(message, HasSubstr("context_emb.1.weight"));
  EXPECT_THAT(message, HasSubstr("cross_attention"));
}

// The released ema_averaged_model_200000.ckpt: unet_cond_ca_cpd25.yaml, "# PARAMS: 216341187".
TEST(IdiffUNetCheckpoint, DefaultConfigurationHasTheReleasedModelsParameterCount) {
  auto unet = make_unet();
  std::int64_t count = 0;
  for (const auto& p : unet->module().parameters()) count += p.numel();
  std::cout << "[ size     ] default idiff-unet: " << count << " parameters" << std::endl;
  EXPECT_EQ(count, 216341187);
  EXPECT_EQ(unet->in_channels(), 3);
  EXPECT_EQ(unet->out_channels(), 3);
  EXPECT_EQ(unet->context_size(), 512);
}

}  // namespace
}  // namespace admis::test::denoisers
