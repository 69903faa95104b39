// Manifests: validation errors name file:line, stage, plugin and key with a suggestion;
// --set overrides; the resolved manifest carries every default.
#include <boost/filesystem.hpp>

#include <fstream>

#include "admis/host/manifest.h"
#include "support/support.h"

namespace fs = boost::filesystem;
using admis::Error;
using ::testing::HasSubstr;

namespace {

std::string write_manifest(const std::string& text) {
  const std::string dir = admis::test::temp_dir("manifest");
  const std::string path = dir + "/m.yaml";
  std::ofstream(path) << text;
  return path;
}

std::string validation_error(const std::string& text, const std::vector<std::string>& sets = {}) {
  const std::string path = write_manifest(text);
  try {
    auto root = admis::host::load_manifest_yaml(path, sets);
    admis::host::resolve_manifest(root, path, admis::test::registry());
  } catch (const Error& e) {
    return e.what();
  }
  return "(valid)";
}

const char* kGood = R"(version: 1
output_dir: out
stages:
  - name: logits
    stage: forward
    plugin:
      kind: head
      plugin: arcface
      params: {in_features: 64, out_features: 4}
    inputs: in.safetensors
  - name: sched
    stage: schedule
    scheduler:
      plugin: ddim-admis
      params:
        num_inference_steps: 25
)";

}  // namespace

TEST(Manifest, ValidManifestResolvesWithDefaults) {
  const std::string path = write_manifest(kGood);
  auto root = admis::host::load_manifest_yaml(path, {});
  auto m = admis::host::resolve_manifest(root, path, admis::test::registry());
  ASSERT_EQ(m.stages.size(), 2u);
  EXPECT_EQ(m.output_dir, (fs::path(path).parent_path() / "out").string());
  EXPECT_EQ(m.stages[0].keys.get_path("inputs"), (fs::path(path).parent_path() / "in.safetensors").string());
  const auto& head = m.stages[0].keys.get_plugin("plugin");
  EXPECT_EQ(head.params.at("out_features").as<std::int64_t>(), 4);
  EXPECT_DOUBLE_EQ(head.params.at("scale").as<double>(), 64.0);  // default filled
  const std::string text = admis::host::resolved_manifest_yaml(m);
  EXPECT_THAT(text, HasSubstr("scale: 64"));
  EXPECT_THAT(text, HasSubstr("num_inference_steps: 25"));
  // The resolved text is itself a valid manifest that resolves to the same values.
  const std::string again = write_manifest(text);
  auto m2 = admis::host::resolve_manifest(admis::host::load_manifest_yaml(again, {}), again, admis::test::registry());
  EXPECT_EQ(admis::host::resolved_manifest_yaml(m2).substr(text.find('\n')), text.substr(text.find('\n')));
}

TEST(Manifest, UnknownPluginParameterNamesLinePluginAndSuggestion) {
  std::string text = kGood;
  text.replace(text.find("num_inference_steps"), 19, "num_inferense_steps");
  const std::string msg = validation_error(text);
  EXPECT_THAT(msg, HasSubstr("m.yaml:16"));
  EXPECT_THAT(msg, HasSubstr("scheduler/ddim-admis: unknown parameter 'num_inferense_steps'"));
  EXPECT_THAT(msg, HasSubstr("did you mean 'num_inference_steps'?"));
}

TEST(Manifest, UnknownStageKeyAndTopLevelKey) {
  std::string text = kGood;
  text.replace(text.find("inputs:"), 7, "input:");
  EXPECT_THAT(validation_error(text), HasSubstr("m.yaml:10: stage 'logits' (forward): unknown key 'input'; did you mean 'inputs'?"));
  EXPECT_THAT(validation_error(std::string("outptu_dir: x\n") + kGood),
              HasSubstr("m.yaml:1: unknown top-level key 'outptu_dir'; did you mean 'output_dir'?"));
}

TEST(Manifest, WrongTypeUnknownPluginUnknownStage) {
  std::string text = kGood;
  text.replace(text.find("num_inference_steps: 25"), 23, "num_inference_steps: many");
  EXPECT_THAT(validation_error(text), HasSubstr("m.yaml:16: 'num_inference_steps' must be int, got 'many'"));
  text = kGood;
  text.replace(text.find("plugin: arcface"), 15, "plugin: arcfase");
  EXPECT_THAT(validation_error(text), HasSubstr("m.yaml:8: head/arcfase: no such plugin; did you mean 'arcface'?"));
  text = kGood;
  text.replace(text.find("stage: schedule"), 15, "stage: schedul");
  EXPECT_THAT(validation_error(text), HasSubstr("unknown stage type 'schedul'; did you mean 'schedule'?"));
  text = kGood;
  text.replace(text.find("out_features: 4"), 15, "out_features: -4");
  EXPECT_THAT(validation_error(text), HasSubstr("head/arcface: parameter 'out_features' = -4 is out of range"));
}

TEST(Manifest, DuplicateStageNamesAndBadVersion) {
  std::string text = kGood;
  text.replace(text.find("name: sched"), 11, "name: logits");
  EXPECT_THAT(validation_error(text), HasSubstr("two stages are named 'logits'"));
  text = kGood;
  text.replace(0, 10, "version: 2");
  EXPECT_THAT(validation_error(text), HasSubstr("manifest version '2' is not supported"));
}

TEST(Manifest, SetOverridesByStageNameAndIndex) {
  const std::string path = write_manifest(kGood);
  auto root = admis::host::load_manifest_yaml(
      path, {"stages.logits.plugin.params.margin=0.3", "stages.1.scheduler.params.eta=0.5", "seed=7"});
  auto m = admis::host::resolve_manifest(root, path, admis::test::registry());
  EXPECT_DOUBLE_EQ(m.stages[0].keys.get_plugin("plugin").params.at("margin").as<double>(), 0.3);
  EXPECT_DOUBLE_EQ(m.stages[1].keys.get_plugin("scheduler").params.at("eta").as<double>(), 0.5);
  EXPECT_EQ(m.seed, 7u);
  EXPECT_THAT(validation_error(kGood, {"stages.nosuch.plugin=1"}), HasSubstr("no element 'nosuch'"));
  EXPECT_THAT(validation_error(kGood, {"stages.logits.plugin.params.margn=0.3"}),
              HasSubstr("unknown parameter 'margn'; did you mean 'margin'?"));
  EXPECT_THAT(validation_error(kGood, {"noequals"}), HasSubstr("expected key.path=value"));
}

TEST(Manifest, InvalidYamlNamesLine) {
  EXPECT_THAT(validation_error("stages:\n  - name: [unclosed\n"), HasSubstr("m.yaml:"));
  EXPECT_THAT(validation_error("stages:\n  - name: [unclosed\n"), HasSubstr("invalid YAML"));
}

// Named scales: `scale: NAME` (or --set scale=NAME) applies scales.NAME's overrides; the
// command line's --set still wins; ${output_dir} follows the scale's output folder.
namespace {
const char* kScaled = R"(version: 1
output_dir: out
scale: default
scales:
  default: {}
  small:
    output_dir: out-small
    stages.sched.scheduler.params.num_inference_steps: 5
stages:
  - name: logits
    stage: forward
    plugin: {kind: head, plugin: arcface, params: {in_features: 64, out_features: 4}}
    inputs: "${output_dir}/in.safetensors"
  - name: sched
    stage: schedule
    scheduler: {plugin: ddim-admis, params: {num_inference_steps: 25}}
)";

admis::host::Manifest resolve_scaled(const std::vector<std::string>& sets) {
  const std::string path = write_manifest(kScaled);
  return admis::host::resolve_manifest(admis::host::load_manifest_yaml(path, sets), path, admis::test::registry());
}

std::int64_t steps_of(const admis::host::Manifest& m) {
  return m.stages[1].keys.get_plugin("scheduler").params.at("num_inference_steps").as<std::int64_t>();
}
}  // namespace

TEST(Manifest, ScalesApplyTheirOverridesAndSetStillWins) {
  auto m = resolve_scaled({});
  EXPECT_EQ(steps_of(m), 25);
  EXPECT_EQ(fs::path(m.output_dir).filename().string(), "out");
  EXPECT_EQ(fs::path(m.stages[0].keys.get_path("inputs")).parent_path().filename().string(), "out");

  m = resolve_scaled({"scale=small"});
  EXPECT_EQ(steps_of(m), 5);
  EXPECT_EQ(fs::path(m.output_dir).filename().string(), "out-small");
  EXPECT_EQ(fs::path(m.stages[0].keys.get_path("inputs")).parent_path().filename().string(), "out-small");

  m = resolve_scaled({"scale=small", "stages.sched.scheduler.params.num_inference_steps=7"});
  EXPECT_EQ(steps_of(m), 7);
}

TEST(Manifest, AnUnknownScaleIsRefusedListingTheScales) {
  const std::string error = validation_error(kScaled, {"scale=smal"});
  EXPECT_THAT(error, HasSubstr("scale 'smal' is not defined; did you mean 'small'?; the manifest's scales are: default, "
                               "small"));
  std::string broken = kScaled;
  broken.replace(broken.find("  small:"), 0, "  broken: {stages.nothere.epochs: 1}\n");
  EXPECT_THAT(validation_error(broken, {"scale=broken"}),
              HasSubstr("scales.broken stages.nothere.epochs=1: no element 'nothere' (an index or a stage name)"));
}

TEST(Manifest, AKeyGivenTwiceInAStageIsRefused) {
  const std::string error = validation_error(R"(version: 1
stages:
  - name: sched
    stage: schedule
    scheduler: {plugin: ddpm}
    scheduler: {plugin: ddim}
)");
  EXPECT_THAT(error, HasSubstr("m.yaml:6: stage 'sched' (schedule): key 'scheduler' is given twice"));
}
