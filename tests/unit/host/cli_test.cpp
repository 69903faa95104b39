// The `admis` executable end to end: help, plugins, validate, run, forward, weights.
#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include <fstream>

#include "support/support.h"

namespace fs = boost::filesystem;
using admis::test::admis_exe;
using admis::test::run_command;
using ::testing::HasSubstr;

namespace {
std::string example(const std::string& name) { return std::string(ADMIS_SOURCE_DIR) + "/configs/examples/" + name; }
}  // namespace

TEST(Cli, HelpAndUnknownCommand) {
  auto r = run_command(admis_exe() + " --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("commands:"));
  r = run_command(admis_exe() + " forward --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("--weights"));
  r = run_command(admis_exe() + " plugin");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("unknown command 'plugin'; did you mean 'plugins'?"));
  r = run_command(admis_exe() + " validate");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("manifest"));
}

TEST(Cli, BadGlobalOptionsAreRefused) {
  const std::string forward = " forward head/arcface --in " + example("head_inputs.safetensors") + " --out /tmp/unused.safetensors";
  auto r = run_command(admis_exe() + " --device tpu" + forward);
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("--device: 'tpu' is not a device; use cpu or cuda[:N]"));
  if (!torch::cuda::is_available()) {
    r = run_command(admis_exe() + " --device cuda:0" + forward);
    EXPECT_EQ(r.status, 1);
    EXPECT_THAT(r.output, HasSubstr("'cuda:0' requested but this LibTorch has no usable CUDA device"));
  }
  r = run_command(admis_exe() + " --threads many plugins");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("threads"));
}

TEST(Cli, PluginsJsonListsParameters) {
  auto r = run_command(admis_exe() + " plugins --json 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  bool found = false;
  for (const auto& p : j) {
    EXPECT_TRUE(p.contains("library"));
    if (p["kind"] == "head" && p["name"] == "arcface") {
      found = true;
      bool has_margin = false;
      for (const auto& param : p["params"])
        if (param["name"] == "margin") {
          has_margin = true;
          EXPECT_EQ(param["type"], "float");
          EXPECT_FALSE(param["doc"].get<std::string>().empty());
        }
      EXPECT_TRUE(has_margin);
    }
  }
  EXPECT_TRUE(found);
  r = run_command(admis_exe() + " plugins");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("scheduler"));
  EXPECT_THAT(r.output, HasSubstr("ddim-admis"));
}

TEST(Cli, ValidateReportsErrorsWithNonZeroExit) {
  auto r = run_command(admis_exe() + " validate " + example("heads-and-schedulers.yaml"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("valid (4 stages"));
  r = run_command(admis_exe() + " validate " + example("heads-and-schedulers.yaml") +
                  " --set stages.arcface-logits.plugin.params.scael=3");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("head/arcface: unknown parameter 'scael'; did you mean 'scale'?"));
  r = run_command(admis_exe() + " validate /nonexistent/m.yaml");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("/nonexistent/m.yaml: manifest not found"));
}

TEST(Cli, RunWritesOutputsAndResolvedManifest) {
  const std::string out = admis::test::temp_dir("run");
  auto r = run_command(admis_exe() + " --threads 2 run " + example("heads-and-schedulers.yaml") + " --set output_dir=" + out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[4/4] stage 'adm-respaced-100' (schedule) done"));
  EXPECT_TRUE(fs::exists(out + "/manifest.resolved.yaml"));
  auto logits = admis::host::read_safetensors(out + "/arcface-logits/outputs.safetensors");
  EXPECT_EQ(logits.at("logits").sizes(), torch::IntArrayRef({8, 4}));
  auto schedule = admis::host::read_safetensors(out + "/ddim-admis-50/schedule.safetensors");
  EXPECT_EQ(schedule.at("model_timesteps").size(0), 50);
  EXPECT_EQ(schedule.at("model_timesteps")[0].item<std::int64_t>(), 980);
  EXPECT_TRUE(fs::exists(out + "/adm-respaced-100/schedule.csv"));

  // Running again keeps finished stages; a changed value re-runs its stage and the ones
  // after it; --force re-runs everything.
  const std::string base = admis_exe() + " run " + example("heads-and-schedulers.yaml") + " --set output_dir=" + out;
  r = run_command(base);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[1/4] stage 'arcface-logits' (forward) already done, kept"));
  EXPECT_THAT(r.output, HasSubstr("[4/4] stage 'adm-respaced-100' (schedule) already done, kept"));
  r = run_command(base + " --set stages.ddim-admis-50.scheduler.params.num_inference_steps=25");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[2/4] stage 'curricularface-logits' (forward) already done, kept"));
  EXPECT_THAT(r.output, HasSubstr("[3/4] stage 'ddim-admis-50' (schedule) done"));
  EXPECT_THAT(r.output, HasSubstr("[4/4] stage 'adm-respaced-100' (schedule) done"));
  EXPECT_EQ(admis::host::read_safetensors(out + "/ddim-admis-50/schedule.safetensors").at("model_timesteps").size(0), 25);
  r = run_command(base + " --set stages.ddim-admis-50.scheduler.params.num_inference_steps=25 --force");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[1/4] stage 'arcface-logits' (forward) done"));
}

TEST(Cli, RunStagesSelectsStagesAndContextsStageBuildsASource) {
  const std::string out = admis::test::temp_dir("run-stages");
  const std::string base = admis_exe() + " run " + example("heads-and-schedulers.yaml") + " --set output_dir=" + out;
  auto r = run_command(base + " --stages ddim-admis-50,curricularface-logits");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[1/4] stage 'arcface-logits' (forward) not selected by --stages, left as it is"));
  EXPECT_THAT(r.output, HasSubstr("[3/4] stage 'ddim-admis-50' (schedule) done"));
  EXPECT_FALSE(fs::exists(out + "/arcface-logits"));
  EXPECT_FALSE(fs::exists(out + "/adm-respaced-100"));
  EXPECT_TRUE(fs::exists(out + "/ddim-admis-50/schedule.csv"));
  r = run_command(base + " --stages ddim-admis");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("--stages names 'ddim-admis', which is not a stage of this manifest"));

  const std::string manifest = out + "/contexts.yaml";
  std::ofstream(manifest) << "version: 1\noutput_dir: runs\nstages:\n  - name: identities\n    stage: contexts\n"
                             "    source: {plugin: gaussian, params: {count: 5, embedding_size: 8}}\n";
  r = run_command(admis_exe() + " run " + manifest);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[identities] context-source/gaussian: 5 contexts of size 8"));
}

TEST(Cli, ForwardMatchesInProcessPluginWithWeights) {
  const std::string dir = admis::test::temp_dir("forward");
  // Weights for a head: a kernel [64, 4] written as safetensors, loaded strictly.
  torch::manual_seed(3);
  auto kernel = torch::randn({64, 4});
  admis::host::write_safetensors({{"kernel", kernel}}, dir + "/w.safetensors");
  auto r = run_command(admis_exe() + " forward head/cosface --set in_features=64 --set out_features=4 --set margin=0.35" +
                       " --weights " + dir + "/w.safetensors --in " + example("head_inputs.safetensors") + " --out " + dir +
                       "/out.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  auto out = admis::host::read_safetensors(dir + "/out.safetensors");
  auto head = admis::test::create<admis::Head>(admis::Kind::Head, "cosface",
                                               {{"in_features", admis::Value(64)}, {"out_features", admis::Value(4)},
                                                {"margin", admis::Value(0.35)}});
  admis::host::load_state_dict(head->module(), {{"kernel", kernel}}, {}, "test");
  auto in = admis::host::read_safetensors(example("head_inputs.safetensors"));
  torch::NoGradGuard ng;
  auto expected = head->forward(in.at("embeddings"), in.at("labels"));
  EXPECT_TRUE(admis::test::all_close(out.at("logits"), expected.logits, 1e-5));
  EXPECT_TRUE(admis::test::all_close(out.at("original_logits"), expected.original_logits, 1e-5));

  // A weights file whose shapes do not fit is refused by name.
  admis::host::write_safetensors({{"kernel", torch::randn({64, 5})}, {"extra", torch::zeros({1})}}, dir + "/bad.safetensors");
  r = run_command(admis_exe() + " forward head/cosface --set in_features=64 --set out_features=4 --weights " + dir +
                  "/bad.safetensors --in " + example("head_inputs.safetensors") + " --out " + dir + "/o2.safetensors");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("bad.safetensors"));
  EXPECT_THAT(r.output, HasSubstr("kernel"));
  EXPECT_THAT(r.output, HasSubstr("extra"));
  EXPECT_FALSE(fs::exists(dir + "/o2.safetensors"));

  // Missing input tensor names the tensor and what the file has.
  r = run_command(admis_exe() + " forward backbone/nonexistent --in x --out y");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("backbone/nonexistent: no such plugin"));
}

TEST(Cli, WeightsInspectAndConvert) {
  const std::string dir = admis::test::temp_dir("weights-cli");
  const std::string ckpt = admis::test::parity_file("idiff_unet_adagn.ckpt");
  auto r = run_command(admis_exe() + " weights inspect " + ckpt);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("eps_model."));
  r = run_command(admis_exe() + " weights convert " + ckpt + " " + dir + "/unet.safetensors --strip-prefix eps_model.");
  ASSERT_EQ(r.status, 0) << r.output;
  auto converted = admis::host::read_safetensors(dir + "/unet.safetensors");
  auto original = admis::host::read_torch_save(ckpt);
  std::size_t unet_keys = 0;
  for (const auto& [k, v] : original)
    if (k.rfind("eps_model.", 0) == 0) {
      ++unet_keys;
      ASSERT_TRUE(converted.count(k.substr(10))) << k;
      EXPECT_TRUE(torch::equal(converted.at(k.substr(10)), v)) << k;
    }
  EXPECT_GT(unet_keys, 10u);
}
