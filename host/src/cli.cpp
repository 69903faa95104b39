// The `admis` command line: one function per command, Boost.Program_options for each.
#include "admis/host/cli.h"

#include "admis/host/bench.h"

#include "admis/host/commands.h"

#include <boost/algorithm/string.hpp>
#include <boost/filesystem.hpp>
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>

#include "admis/host/conformance.h"
#include "admis/host/convert.h"
#include "admis/host/distributed.h"
#include "admis/host/distributed_launch.h"
#include "admis/host/forward.h"
#include "admis/host/generation.h"
#include "admis/host/manifest.h"
#include "admis/host/registry.h"
#include "admis/host/runtime.h"
#include "admis/host/text.h"
#include "admis/host/verification.h"
#include "admis/host/weights.h"

namespace po = boost::program_options;
namespace fs = boost::filesystem;

namespace admis::host {

po::options_description global_options(Globals& g) {
  po::options_description d("global options");
  d.add_options()("threads", po::value<int>(&g.settings.threads)->default_value(0), "intra-op threads (0: all cores)")(
      "device", po::value<std::string>(&g.settings.device)->default_value("cpu"), "cpu or cuda[:N]")(
      "seed", po::value<std::uint64_t>(&g.settings.seed)->default_value(0), "random seed")(
      "plugin-path", po::value<std::vector<std::string>>(&g.plugin_paths)->composing(),
      "extra plugin folder or library (repeatable)")("help,h", "show this help");
  return d;
}

bool parse(const std::vector<std::string>& args, po::options_description& own, po::positional_options_description& pos,
           Globals& g, po::variables_map& vm, const std::string& usage) {
  po::options_description all;
  all.add(own).add(global_options(g));
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << usage << "\n\n" << own << "\n" << global_options(g) << std::endl;
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw Error("admis", fmt::format("{}\n{}", e.what(), usage));
  }
  return true;
}

namespace {

const char* kUsage = R"(usage: admis [global options] COMMAND [options]

commands:
  plugins [--json]                 list every plugin with its parameters
  validate MANIFEST [--set k=v]    check a manifest against the plugins' schemas and its required files
  run MANIFEST [--set k=v] [--stages A,B] [--shard I/N] [--force]   run a manifest's stages
  forward KIND/NAME --in F --out F run one plugin on named tensors
  weights inspect FILE             keys, dtypes, shapes, parameter count
  weights convert IN OUT [--strip-prefix P]   any checkpoint -> safetensors
  check LIBRARY.so                 run the conformance suite on a plugin library
  convert --from FMT:PATH --to FMT:PATH   copy a dataset between image-folder, tfrecord, recordio
  eval --backbone NAME --weights W --data DIR   face verification on insightface .bin sets
  bench [--backbone NAME ...]      backbone (+ head) throughput on this machine
  launch --nproc-per-node N -- COMMAND...   run COMMAND in N data-parallel workers (as torchrun)

global options (before or after the command):
  --threads N      intra-op threads (default: all cores)
  --device D       cpu or cuda[:N] (default: cpu)
  --seed S         random seed (default: 0)
  --plugin-path P  extra plugin folder or library (repeatable)

`admis COMMAND --help` describes each command.)";

std::string param_default_text(const ParamSpec& s) {
  if (s.required()) return "(required)";
  if (s.type == ParamType::String || s.type == ParamType::Path) return "'" + format_value(s.default_value) + "'";
  return format_value(s.default_value);
}

std::string param_range_text(const ParamSpec& s) {
  if (!s.choices.empty()) return "one of " + join(s.choices, ", ");
  if (s.min || s.max)
    return fmt::format("[{}, {}]", s.min ? fmt::format("{}", *s.min) : "-inf", s.max ? fmt::format("{}", *s.max) : "inf");
  if (s.type == ParamType::Plugin) return s.plugin_kind.empty() ? "any plugin" : s.plugin_kind + " plugin";
  return "";
}

nlohmann::json value_json(const Value& v) {
  return std::visit(
      [](const auto& x) -> nlohmann::json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) return nullptr;
        else if constexpr (std::is_same_v<T, std::shared_ptr<const PluginSpec>>) return x ? x->kind + "/" + x->name : "";
        else return x;
      },
      v.storage());
}

int cmd_plugins(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis plugins");
  bool json = false;
  own.add_options()("json", po::bool_switch(&json), "machine-readable output");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm, "usage: admis plugins [--json]\nLists every plugin found in the bundled folder, "
                                    "ADMIS_PLUGIN_PATH and --plugin-path.")) return 0;
  Registry registry;
  registry.discover(g.plugin_paths);
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto* p : registry.plugins()) {
      const Factory& f = *p->factory;
      nlohmann::json params = nlohmann::json::array();
      for (const auto& s : f.params) {
        nlohmann::json j = {{"name", s.name}, {"type", to_string(s.type)}, {"doc", s.doc}, {"required", s.required()}};
        j["default"] = value_json(s.default_value);
        if (s.min) j["min"] = *s.min;
        if (s.max) j["max"] = *s.max;
        if (!s.choices.empty()) j["choices"] = s.choices;
        if (s.type == ParamType::Plugin) j["plugin_kind"] = s.plugin_kind;
        params.push_back(j);
      }
      out.push_back({{"kind", to_string(f.kind)}, {"name", f.name}, {"version", f.version}, {"summary", f.summary},
                     {"library", p->library->path}, {"library_name", p->library->name},
                     {"library_version", p->library->version}, {"params", params}});
    }
    std::cout << out.dump(2) << std::endl;
    return 0;
  }
  std::string last_kind;
  for (const auto* p : registry.plugins()) {
    const Factory& f = *p->factory;
    if (last_kind != to_string(f.kind)) {
      last_kind = to_string(f.kind);
      std::cout << "\n" << last_kind << "\n";
    }
    std::cout << fmt::format("  {} {}  {}\n    library: {} ({} {})\n", f.name, f.version, f.summary, p->library->path,
                             p->library->name, p->library->version);
    for (const auto& s : f.params)
      std::cout << fmt::format("    {:<28} {:<14} default {:<14} {}  {}\n", s.name, to_string(s.type),
                               param_default_text(s), param_range_text(s), s.doc);
  }
  std::cout << fmt::format("\n{} plugins from {} libraries\n", registry.plugins().size(), registry.libraries().size());
  return 0;
}

struct ManifestArgs {
  std::string manifest;
  std::vector<std::string> sets;
  bool force = false;
  std::string shard;  // INDEX/COUNT for every `sample` stage
  std::string stages;  // comma-separated stage names to run (default: all)
};

Manifest load_and_validate(const ManifestArgs& a, Globals& g, Registry& registry) {
  YAML::Node root = load_manifest_yaml(a.manifest, a.sets);
  if (!a.shard.empty()) {
    parse_shard(a.shard, "--shard");
    int sampling = 0;
    if (root["stages"] && root["stages"].IsSequence())
      for (auto stage : root["stages"])
        if (stage.IsMap() && stage["stage"] && stage["stage"].as<std::string>() == "sample") {
          stage["shard"] = a.shard;
          ++sampling;
        }
    if (sampling == 0) throw Error(a.manifest, "--shard is given but the manifest has no `sample` stage");
  }
  std::vector<std::string> paths = g.plugin_paths;
  for (const auto& p : manifest_plugin_paths(root, a.manifest)) paths.push_back(p);
  registry.discover(paths);
  return resolve_manifest(root, a.manifest, registry);
}

int cmd_manifest(const std::vector<std::string>& args, Globals& g, bool run) {
  const std::string name = run ? "run" : "validate";
  po::options_description own("admis " + name);
  ManifestArgs a;
  own.add_options()("manifest", po::value<std::string>(&a.manifest)->required(), "manifest YAML file")(
      "set", po::value<std::vector<std::string>>(&a.sets)->composing(),
      "override a value: key.path=value (YAML), e.g. stages.NAME.plugin.params.margin=0.4");
  own.add_options()("stages", po::value<std::string>(&a.stages),
                    "NAME[,NAME...]: only these stages (run: the others are left as they are)");
  if (run)
    own.add_options()("force", po::bool_switch(&a.force), "recompute stages that already finished")(
        "shard", po::value<std::string>(&a.shard),
        "INDEX/COUNT: every `sample` stage takes the identities i with i mod COUNT == INDEX");
  po::positional_options_description pos;
  pos.add("manifest", 1);
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             fmt::format("usage: admis {} MANIFEST [--set key.path=value ...]{}", name,
                         run ? "\nRuns the stages in order and saves the resolved manifest in the output folder."
                             : "\nChecks the manifest against every stage and plugin schema without running it.")))
    return 0;
  Registry registry;
  Manifest m = load_and_validate(a, g, registry);
  std::vector<std::string> only;
  if (!a.stages.empty()) boost::algorithm::split(only, a.stages, [](char c) { return c == ','; });
  check_stage_names(m, only);
  check_required_files(m, only);
  if (!run) {
    std::cout << fmt::format("{}: valid ({} stages, output to {})\n", a.manifest, m.stages.size(), m.output_dir);
    return 0;
  }
  g.settings.seed = vm["seed"].defaulted() ? m.seed : g.settings.seed;
  Runtime runtime(registry, g.settings);
  run_manifest(m, runtime, a.force, only);
  if (world(runtime.device())->is_main()) std::cout << fmt::format("done: outputs in {}\n", m.output_dir);
  return 0;
}

int cmd_forward(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis forward");
  std::string target, weights, in, out;
  std::vector<std::string> sets, strip;
  own.add_options()("plugin", po::value<std::string>(&target)->required(), "KIND/NAME, e.g. head/arcface")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(), "parameter=value (YAML), e.g. num_layers=18")(
      "weights", po::value<std::string>(&weights), "weights file (.pt/.pth/.ckpt/.safetensors)")(
      "strip-prefix", po::value<std::vector<std::string>>(&strip)->composing(),
      "remove this prefix from checkpoint keys (repeatable), e.g. module.")(
      "non-strict", "load weights even if keys are missing or unexpected (reports them)")(
      "in", po::value<std::string>(&in)->required(), "input tensors (safetensors)")(
      "out", po::value<std::string>(&out)->required(), "output tensors (safetensors)");
  po::positional_options_description pos;
  pos.add("plugin", 1);
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis forward KIND/NAME [--set k=v ...] [--weights FILE] --in IN.safetensors --out OUT.safetensors\n"
             "Tensor names: backbone input -> output; head embeddings, labels -> logits, original_logits;\n"
             "denoiser x, t, [context], [dropout_mask] -> output; codec image -> latent | latent -> decoded;\n"
             "scheduler model_output, x_t, step, [noise] -> prev_sample, pred_x0, ... (+ betas, alpha_bars, "
             "model_timesteps)"))
    return 0;
  auto slash = target.find('/');
  if (slash == std::string::npos) throw Error(target, "name the plugin as KIND/NAME, e.g. head/arcface");
  const Kind kind = parse_kind(target.substr(0, slash));
  const std::string name = target.substr(slash + 1);
  Registry registry;
  registry.discover(g.plugin_paths);
  const RegisteredPlugin& plugin = registry.get(kind, name);
  auto raw = parse_set_options(sets, plugin.factory->params, registry, target);
  Runtime runtime(registry, g.settings);
  LoadOptions options;
  options.strict = !vm.count("non-strict");
  options.strip_prefixes = strip;
  auto object = runtime.create(kind, name, raw, "", options, fs::current_path().string());
  if (!weights.empty()) {
    auto* m = dynamic_cast<ModulePlugin*>(object.get());
    if (!m) throw Error(target, "this plugin has no weights, but --weights was given");
    LoadReport report = runtime.load_state_dict(m->module(), read_weights(weights), with_layout(options, *m), weights);
    std::cerr << fmt::format("loaded {} tensors from {}", report.loaded, weights) << std::endl;
    if (!report.ok())
      std::cerr << fmt::format("  missing {}, unexpected {}, mismatched {}", report.missing.size(),
                               report.unexpected.size(), report.mismatched.size())
                << std::endl;
  }
  StateDict outputs = forward_plugin(*object, read_weights(in), target);
  write_safetensors(outputs, out, {{"plugin", target}});
  for (const auto& [k, t] : outputs) std::cout << fmt::format("{} [{}] {}\n", k, fmt::join(t.sizes().vec(), ", "), std::string(t.dtype().name()));
  return 0;
}

int cmd_weights(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis weights");
  std::string action, in, out;
  std::vector<std::string> strip;
  own.add_options()("action", po::value<std::string>(&action)->required(), "inspect or convert")(
      "in", po::value<std::string>(&in)->required(), "input weights file")(
      "out", po::value<std::string>(&out), "output .safetensors (convert)")(
      "strip-prefix", po::value<std::vector<std::string>>(&strip)->composing(), "prefix to remove from keys (repeatable)");
  po::positional_options_description pos;
  pos.add("action", 1).add("in", 1).add("out", 1);
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis weights inspect FILE\n       admis weights convert IN OUT.safetensors [--strip-prefix P ...]"))
    return 0;
  if (action == "inspect") {
    inspect_weights(in, std::cout);
    return 0;
  }
  if (action == "convert") {
    if (out.empty()) throw Error("admis weights convert", "give the output file: admis weights convert IN OUT.safetensors");
    convert_weights(in, out, strip);
    std::cout << fmt::format("wrote {}\n", out);
    return 0;
  }
  throw Error("admis weights", fmt::format("unknown action '{}'; use inspect or convert", action));
}

int cmd_check(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis check");
  std::string library;
  own.add_options()("library", po::value<std::string>(&library)->required(), "plugin library (.so)");
  po::positional_options_description pos;
  pos.add("library", 1);
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis check LIBRARY.so\nLoads the library (with the bundled plugins beside it, for nested "
             "plugins) and runs every plugin it registers through its kind's conformance suite."))
    return 0;
  ConformanceReport report = check_library(library, g.plugin_paths, g.settings);
  print_report(report, std::cout);
  return report.failed() ? 1 : 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage << std::endl;
    return args.empty() ? 2 : 0;
  }
  // The command is the first word that is not a global option (or its value).
  std::size_t at = 0;
  static const std::vector<std::string> with_value = {"--threads", "--device", "--seed", "--plugin-path"};
  while (at < args.size() && args[at].rfind("--", 0) == 0) {
    const bool has_value = std::find(with_value.begin(), with_value.end(), args[at]) != with_value.end();
    at += has_value ? 2 : 1;
  }
  if (at >= args.size()) {
    std::cerr << kUsage << std::endl;
    return 2;
  }
  const std::string command = args[at];
  args.erase(args.begin() + static_cast<long>(at));
  Globals g;
  try {
    if (command == "plugins") return cmd_plugins(args, g);
    if (command == "validate") return cmd_manifest(args, g, false);
    if (command == "run") return cmd_manifest(args, g, true);
    if (command == "forward") return cmd_forward(args, g);
    if (command == "weights") return cmd_weights(args, g);
    if (command == "check") return cmd_check(args, g);
    if (command == "convert") return cmd_convert(args, g);
    if (command == "eval") return cmd_eval(args, g);
    if (command == "bench") return cmd_bench(args, g);
    if (command == "launch") return cmd_launch(args, g);
    static const std::vector<std::string> commands = {"plugins", "validate", "run",  "forward", "weights",
                                                      "check",   "bench",    "eval", "convert", "launch"};
    std::cerr << fmt::format("admis: unknown command '{}'{}\n\n{}", command, did_you_mean(command, commands), kUsage)
              << std::endl;
    return 2;
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << describe(e) << std::endl;
    return 1;
  }
}

}  // namespace admis::host
