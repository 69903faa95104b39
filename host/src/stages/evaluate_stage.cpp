// The `evaluate` stage: a backbone checkpoint on insightface verification sets, writing
// results.json, results.md and one ROC picture per set into the stage's folder.
#include <boost/filesystem.hpp>
#include <fmt/format.h>

#include <iostream>

#include "admis/host/manifest.h"
#include "admis/host/stages.h"
#include "admis/host/verification.h"

namespace fs = boost::filesystem;

namespace admis::host {

StageType evaluate_stage() {
  return StageType{
      "evaluate",
      "face verification on insightface .bin sets: 10-fold accuracy, TAR@FAR=1e-3, ROC curves",
      {
          ParamSpec::Plugin("backbone", "backbone",
                            "the backbone to evaluate: {plugin: NAME, params: {...}, weights: CHECKPOINT}"),
          ParamSpec::Path("data", "", "folder of .bin verification sets (lfw.bin, cfp_fp.bin, ...)").required_value(),
          ParamSpec::Int("batch_size", 64, "images per forward pass").at_least(1),
          ParamSpec::StringList("sets", {}, "only these sets, by file name without .bin (default: every .bin in data)"),
      },
      [](const Params& keys, StageContext& ctx) {
        const PluginSpec& spec = keys.get_plugin("backbone");
        if (spec.weights.empty())
          throw Error(ctx.stage_name, fmt::format("backbone/{} has no weights; give backbone.weights: CHECKPOINT", spec.name));
        const auto bins = find_verification_sets(keys.get_path("data"), keys.get_strings("sets"));
        auto plugin = ctx.runtime.create(spec);
        auto* backbone = dynamic_cast<Backbone*>(plugin.get());
        if (!backbone) throw Error("backbone/" + spec.name, "the plugin does not implement admis::Backbone");
        EvaluationOptions options;
        options.batch_size = keys.get_int("batch_size");
        options.json_path = (fs::path(ctx.output_dir) / "results.json").string();
        options.markdown_path = (fs::path(ctx.output_dir) / "results.md").string();
        options.roc_dir = ctx.output_dir;
        options.title = fmt::format("{}: backbone/{} ({})", ctx.stage_name, spec.name, fs::path(spec.weights).filename().string());
        const auto results = evaluate_backbone(*backbone, bins, options, std::cerr);
        std::cerr << results_table(results);
      }};
}

}  // namespace admis::host
