#pragma once
// Manifests: YAML files naming, for each stage, the plugins for its roles and their
// parameters (DESIGN.md section 5).
//
//   version: 1
//   output_dir: runs/example      # relative to the manifest's folder
//   seed: 0
//   plugin_paths: [my_plugins/]   # extra plugin folders or libraries
//   required_files:               # files the run needs and cannot make, with their origin
//     - path: &ldm ../released/ema_averaged_model_200000.ckpt
//       from: ADMIS README, "Pretrained LDM (25% CPD)", https://...
//   stages:
//     - name: logits
//       stage: forward
//       plugin: {kind: head, plugin: arcface, params: {in_features: 64}, weights: w.safetensors}
//       inputs: inputs.safetensors
//
// Stage keys are declared with the same ParamSpec schema as plugin parameters, a role
// being a Plugin-typed key, so one validator serves both.

#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <vector>

#include "admis/host/registry.h"
#include "admis/host/runtime.h"

namespace admis::host {

struct StageContext {
  Runtime& runtime;
  std::string stage_name;
  std::string output_dir;  // this stage's folder: <manifest output_dir>/<stage name>
  bool force = false;
};

struct StageType {
  std::string name;
  std::string summary;
  std::vector<ParamSpec> keys;
  std::function<void(const Params& keys, StageContext& context)> run;
  // In a job of several processes (admis launch, torchrun, srun), a stage that splits its
  // work by rank itself runs on every rank; any other stage runs on rank 0 alone while the
  // other ranks wait for it (see run_manifest).
  bool all_ranks = false;
};

const std::vector<StageType>& stage_types();
const StageType& find_stage_type(const std::string& name, const std::string& where);

struct ResolvedStage {
  std::string name;
  const StageType* type = nullptr;
  Params keys;
  std::string where;  // "file:line"
};

// A file the manifest needs and no stage makes (released weights, evaluation sets),
// with where to get it. YAML anchors let stages refer to the same path (weights: *ldm).
struct RequiredFile {
  std::string path;   // resolved against the manifest's folder
  std::string from;   // where the file comes from, for the user
  std::string where;  // "file:line"
};

struct Manifest {
  std::string path;
  std::string dir;
  std::string output_dir;
  std::uint64_t seed = 0;
  std::vector<std::string> plugin_paths;
  std::vector<RequiredFile> required_files;
  std::vector<ResolvedStage> stages;
};

// Reads the YAML file and applies --set overrides "a.b.c=value" (value parsed as YAML;
// sequence elements addressed by index or, for stages, by their name).
YAML::Node load_manifest_yaml(const std::string& path, const std::vector<std::string>& overrides);
// The plugin folders a manifest asks for (resolved), needed before validation.
std::vector<std::string> manifest_plugin_paths(const YAML::Node& root, const std::string& path);
// Validates everything against the stage and plugin schemas; errors name file:line, the
// stage, the plugin and the key, with the closest valid key.
Manifest resolve_manifest(const YAML::Node& root, const std::string& path, const Registry& registry);
// Throws one error listing every required file that is missing or not what its name says
// (an HTML page saved instead of a checkpoint, a truncated download), each with its origin.
// With `only` (the --stages selection), files that only unselected stages use are skipped.
void check_required_files(const Manifest& manifest, const std::vector<std::string>& only = {});
// "" when `path` looks like what its extension promises (torch.save zip, safetensors,
// .npy, pickled .bin, image, non-empty folder), else what is wrong with it.
std::string file_problem(const std::string& path);
// The manifest with every default filled in, as YAML text.
std::string resolved_manifest_yaml(const Manifest& manifest);
// Runs the stages in order. A stage that finished before with the same keys, seed and
// input files (its fingerprint, kept in <stage folder>/.admis-stage-done) is kept, unless
// `force`; once one stage runs, all later ones run too. With `only` non-empty, just the
// stages named there run (the others are left as they are).
// In a job of several processes (world() from the environment) rank 0 decides which stages
// run and is the only one to write the stage records and print the stage lines; a stage
// with all_ranks runs on every rank, any other on rank 0 while the rest wait (without a
// time limit: a stage may take hours), and every rank starts the next stage together. A
// stage that fails on any rank stops all of them with an error.
void run_manifest(const Manifest& manifest, Runtime& runtime, bool force, const std::vector<std::string>& only = {});
// Throws unless every name in `only` is a stage of the manifest.
void check_stage_names(const Manifest& manifest, const std::vector<std::string>& only);
inline constexpr const char* kStageDoneFile = ".admis-stage-done";
inline constexpr const char* kStageTimeFile = ".admis-stage-seconds";  // how long the stage's last run took

// YAML -> typed Value for one declared parameter (nested plugins validated recursively).
Value yaml_to_value(const YAML::Node& node, const ParamSpec& spec, const Registry& registry, const std::string& file);
// Parses "key=value" pairs (value as YAML) into raw values for a plugin's schema.
std::map<std::string, Value> parse_set_options(const std::vector<std::string>& sets, const std::vector<ParamSpec>& schema,
                                               const Registry& registry, const std::string& owner);

// Writes `text` to `path` atomically (temporary file in the same folder, then rename).
void write_file_atomic(const std::string& path, const std::string& text);

// A plugin from a one-line entry "NAME key=value key=value" (values as YAML, like --set),
// as stage lists such as `augmenters: [flip, "random-resized-crop p=0.2"]` write them.
std::shared_ptr<Plugin> create_from_entry(Kind kind, const std::string& entry, Runtime& runtime, const std::string& where);

// The augmenters a stage's `augmenters` list names, in order; `plugins` keeps them alive.
struct AugmenterList {
  std::vector<std::shared_ptr<Plugin>> plugins;
  std::vector<Augmenter*> augmenters;
};
AugmenterList create_augmenters(const std::vector<std::string>& entries, Runtime& runtime, const std::string& where);

}  // namespace admis::host
