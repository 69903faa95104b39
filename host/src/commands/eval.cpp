// `admis eval`: a backbone checkpoint on every insightface verification set in a folder.
#include <boost/filesystem.hpp>
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <iostream>

#include "admis/host/commands.h"
#include "admis/host/manifest.h"
#include "admis/host/registry.h"
#include "admis/host/runtime.h"
#include "admis/host/verification.h"

namespace po = boost::program_options;
namespace fs = boost::filesystem;

namespace admis::host {

int cmd_eval(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis eval");
  std::string backbone_name, weights, data, json, roc_dir;
  std::vector<std::string> sets, strip, names;
  std::int64_t batch_size = 64;
  own.add_options()("backbone", po::value<std::string>(&backbone_name)->required(), "backbone plugin name, e.g. ir")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(), "backbone parameter=value (YAML), e.g. num_layers=50")(
      "weights", po::value<std::string>(&weights)->required(), "backbone checkpoint (.pt/.pth/.ckpt/.safetensors)")(
      "strip-prefix", po::value<std::vector<std::string>>(&strip)->composing(),
      "remove this prefix from checkpoint keys (repeatable), e.g. module.")(
      "data", po::value<std::string>(&data)->required(), "folder of insightface .bin verification sets")(
      "sets", po::value<std::vector<std::string>>(&names)->composing(), "only these sets (repeatable), e.g. lfw")(
      "json", po::value<std::string>(&json), "write the results as JSON to this file")(
      "roc-dir", po::value<std::string>(&roc_dir), "write one ROC curve PNG per set into this folder")(
      "batch-size", po::value<std::int64_t>(&batch_size)->default_value(64), "images per forward pass");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis eval --backbone NAME [--set k=v ...] --weights W --data DIR [--json F] [--roc-dir D] "
             "[--batch-size B]\n"
             "Evaluates a backbone on every .bin in DIR (lfw, cfp_fp, agedb_30, calfw, cplfw, ...): 10-fold "
             "accuracy (TFace protocol)\nand TAR@FAR=1e-3 (insightface), with flip test-time augmentation."))
    return 0;
  if (batch_size < 1) throw Error("admis eval", fmt::format("--batch-size must be at least 1, got {}", batch_size));
  // Cheap checks first, so a typo costs no model construction.
  const std::vector<std::string> bins = find_verification_sets(data, names);
  boost::system::error_code ec;
  if (!fs::is_regular_file(weights, ec)) throw Error(weights, "no such weights file");

  Registry registry;
  registry.discover(g.plugin_paths);
  const RegisteredPlugin& plugin = registry.get(Kind::Backbone, backbone_name);
  const std::string who = "backbone/" + backbone_name;
  auto raw = parse_set_options(sets, plugin.factory->params, registry, who);
  Runtime runtime(registry, g.settings);
  LoadOptions options;
  options.strip_prefixes = strip;
  auto object = runtime.create(Kind::Backbone, backbone_name, raw, weights, options, fs::current_path().string());
  auto* backbone = dynamic_cast<Backbone*>(object.get());
  if (!backbone) throw Error(who, "the plugin does not implement admis::Backbone");
  std::cerr << fmt::format("{} with {} on {} set(s) from {}", who, weights, bins.size(), data) << std::endl;

  EvaluationOptions eval;
  eval.batch_size = batch_size;
  eval.json_path = json;
  eval.roc_dir = roc_dir;
  const auto results = evaluate_backbone(*backbone, bins, eval, std::cerr);
  std::cout << results_table(results);
  if (!json.empty()) std::cerr << "wrote " << json << std::endl;
  if (!roc_dir.empty()) std::cerr << "wrote ROC curves to " << roc_dir << std::endl;
  return 0;
}

}  // namespace admis::host
