#include "admis/host/manifest.h"

#include <boost/algorithm/string.hpp>
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <set>

#include "admis/host/distributed.h"
#include "admis/host/text.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

std::string line_of(const std::string& file, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return file;
  return fmt::format("{}:{}", file, mark.line + 1);
}

template <class T>
bool parse_number(const std::string& text, T& out) {
  if (text.empty()) return false;
  try {
    std::size_t used = 0;
    if constexpr (std::is_same_v<T, std::int64_t>) out = std::stoll(text, &used);
    else out = std::stod(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

Value scalar_to_value(const YAML::Node& node, ParamType type, const std::string& name, const std::string& where) {
  auto wrong = [&](const char* expected) {
    return Error(where, fmt::format("'{}' must be {}, got '{}'", name, expected,
                                    node.IsScalar() ? node.Scalar() : std::string(node.IsSequence() ? "a list" : "a map")));
  };
  if (!node.IsScalar()) throw wrong(to_string(type));
  const std::string& text = node.Scalar();
  switch (type) {
    case ParamType::Bool: {
      if (text == "true" || text == "True" || text == "yes") return Value(true);
      if (text == "false" || text == "False" || text == "no") return Value(false);
      throw wrong("bool (true or false)");
    }
    case ParamType::Int: {
      std::int64_t i = 0;
      if (parse_number(text, i)) return Value(i);
      throw wrong("int");
    }
    case ParamType::Float: {
      double d = 0;
      if (parse_number(text, d)) return Value(d);
      throw wrong("float");
    }
    default:
      return Value(text);
  }
}

ParamType element_type(ParamType list) {
  switch (list) {
    case ParamType::BoolList: return ParamType::Bool;
    case ParamType::IntList: return ParamType::Int;
    case ParamType::FloatList: return ParamType::Float;
    case ParamType::StringList: return ParamType::String;
    case ParamType::PathList: return ParamType::Path;
    default: return list;
  }
}

std::string stage_label(const ResolvedStage& s) { return fmt::format("stage '{}' ({})", s.name, s.type->name); }

}  // namespace

Value yaml_to_value(const YAML::Node& node, const ParamSpec& spec, const Registry& registry, const std::string& file) {
  const std::string where = line_of(file, node);
  if (node.IsNull()) return Value();
  Value value;
  if (spec.type == ParamType::Plugin) {
    if (!node.IsMap())
      throw Error(where, fmt::format("'{}' must be a plugin map such as {{plugin: NAME, params: {{...}}}}", spec.name));
    static const std::vector<std::string> allowed = {"kind", "plugin", "params", "weights"};
    for (const auto& item : node) {
      const std::string key = item.first.Scalar();
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
        throw Error(line_of(file, item.first), fmt::format("unknown key '{}' in plugin '{}'{}; keys are: {}", key,
                                                           spec.name, did_you_mean(key, allowed), join(allowed, ", ")));
    }
    auto nested = std::make_shared<PluginSpec>();
    nested->kind = node["kind"] ? node["kind"].Scalar() : spec.plugin_kind;
    if (nested->kind.empty())
      throw Error(where, fmt::format("'{}' must say which kind of plugin it names (kind: backbone, head, ...)", spec.name));
    if (!node["plugin"]) throw Error(where, fmt::format("'{}' must name its plugin (plugin: NAME)", spec.name));
    nested->name = node["plugin"].Scalar();
    const RegisteredPlugin* plugin = nullptr;
    try {
      plugin = &registry.get(parse_kind(nested->kind), nested->name);
    } catch (const Error& e) {
      throw Error(line_of(file, node["plugin"]), e.what());
    }
    const std::string owner = fmt::format("{}/{}", nested->kind, nested->name);
    if (YAML::Node params = node["params"]) {
      if (!params.IsMap()) throw Error(line_of(file, params), fmt::format("{}: 'params' must be a map", owner));
      std::vector<std::string> declared;
      for (const auto& s : plugin->factory->params) declared.push_back(s.name);
      for (const auto& item : params) {
        const std::string key = item.first.Scalar();
        auto it = std::find_if(plugin->factory->params.begin(), plugin->factory->params.end(),
                               [&](const ParamSpec& s) { return s.name == key; });
        if (it == plugin->factory->params.end())
          throw Error(line_of(file, item.first),
                      fmt::format("{}: unknown parameter '{}'{}; parameters are: {}", owner, key,
                                  did_you_mean(key, declared), declared.empty() ? "(none)" : join(declared, ", ")));
        nested->params[key] = yaml_to_value(item.second, *it, registry, file);
        if (!nested->params[key].empty())
          validate_value(*it, nested->params[key], line_of(file, item.second) + ": " + owner);
      }
    }
    if (node["weights"]) nested->weights = node["weights"].Scalar();
    value = Value(std::shared_ptr<const PluginSpec>(nested));
  } else if (is_list(spec.type)) {
    if (!node.IsSequence()) throw Error(where, fmt::format("'{}' must be a list, e.g. [a, b]", spec.name));
    const ParamType et = element_type(spec.type);
    std::vector<bool> bools;
    std::vector<std::int64_t> ints;
    std::vector<double> floats;
    std::vector<std::string> strings;
    for (const auto& item : node) {
      Value v = scalar_to_value(item, et, spec.name, line_of(file, item));
      if (et == ParamType::Bool) bools.push_back(v.as<bool>());
      else if (et == ParamType::Int) ints.push_back(v.as<std::int64_t>());
      else if (et == ParamType::Float) floats.push_back(v.as<double>());
      else strings.push_back(v.as<std::string>());
    }
    if (et == ParamType::Bool) value = Value(bools);
    else if (et == ParamType::Int) value = Value(ints);
    else if (et == ParamType::Float) value = Value(floats);
    else value = Value(strings);
  } else {
    value = scalar_to_value(node, spec.type, spec.name, where);
  }
  return value;
}

std::map<std::string, Value> parse_set_options(const std::vector<std::string>& sets, const std::vector<ParamSpec>& schema,
                                               const Registry& registry, const std::string& owner) {
  std::vector<std::string> declared;
  for (const auto& s : schema) declared.push_back(s.name);
  std::map<std::string, Value> out;
  for (const auto& set : sets) {
    auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error("--set " + set, "expected key=value, e.g. --set margin=0.4 or --set channel_multipliers=[1,2,2]");
    const std::string key = set.substr(0, eq);
    auto it = std::find_if(schema.begin(), schema.end(), [&](const ParamSpec& s) { return s.name == key; });
    if (it == schema.end())
      throw Error(owner, fmt::format("unknown parameter '{}' in --set{}; parameters are: {}", key,
                                     did_you_mean(key, declared), declared.empty() ? "(none)" : join(declared, ", ")));
    YAML::Node node;
    try {
      node = YAML::Load(set.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw Error("--set " + set, fmt::format("value is not valid YAML: {}", e.msg));
    }
    out[key] = yaml_to_value(node, *it, registry, "--set " + key);
  }
  return out;
}

namespace {

// Applies "a.b.c=value" overrides to the YAML tree (value parsed as YAML; sequence elements
// addressed by index or, for stages, by their name). `source` names where they come from.
void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides, const std::string& source) {
  for (const auto& set : overrides) {
    auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error(source + " " + set, "expected key.path=value, e.g. --set stages.logits.plugin.params.margin=0.4");
    const std::vector<std::string> parts = split(set.substr(0, eq), '.');
    YAML::Node value;
    try {
      value = YAML::Load(set.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw Error(source + " " + set, fmt::format("value is not valid YAML: {}", e.msg));
    }
    YAML::Node cur = root;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const std::string& part = parts[i];
      const bool last = i + 1 == parts.size();
      if (cur.IsSequence()) {
        YAML::Node found;
        bool ok = false;
        std::int64_t index = -1;
        if (parse_number(part, index) && index >= 0 && static_cast<std::size_t>(index) < cur.size()) {
          found.reset(cur[static_cast<std::size_t>(index)]);
          ok = true;
        } else {
          for (auto item : cur)
            if (item.IsMap() && item["name"] && item["name"].Scalar() == part) {
              found.reset(item);
              ok = true;
            }
        }
        if (!ok) throw Error(source + " " + set, fmt::format("no element '{}' (an index or a stage name) in the list", part));
        if (last) throw Error(source + " " + set, "cannot replace a whole list element; set one of its keys");
        cur.reset(found);
      } else {
        if (!cur.IsMap() && !cur.IsNull())
          throw Error(source + " " + set, fmt::format("'{}' is inside a value that is not a map", part));
        if (last) {
          cur[part] = value;
        } else {
          YAML::Node next = cur[part];
          cur.reset(next);
        }
      }
    }
  }
}

}  // namespace

YAML::Node load_manifest_yaml(const std::string& path, const std::vector<std::string>& overrides) {
  if (!fs::exists(path)) throw Error(path, "manifest not found");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw Error(fmt::format("{}:{}", path, e.mark.line + 1), fmt::format("invalid YAML: {}", e.msg));
  }
  if (!root.IsMap()) throw Error(path, "a manifest must be a YAML map with at least 'stages'");
  apply_overrides(root, overrides, "--set");

  // A named scale (`scale: smoke`, or --set scale=smoke) applies its overrides from
  // `scales`; the command line's --set values still win.
  if (YAML::Node scale = root["scale"]) {
    if (!scale.IsScalar()) throw Error(line_of(path, scale), "'scale' must be the name of one of the manifest's scales");
    const std::string name = scale.Scalar();
    YAML::Node scales = root["scales"];
    std::vector<std::string> names;
    if (scales && scales.IsMap())
      for (const auto& item : scales) names.push_back(item.first.Scalar());
    if (!scales || !scales.IsMap() || !scales[name])
      throw Error(path, fmt::format("scale '{}' is not defined{}; the manifest's scales are: {}", name,
                                    did_you_mean(name, names), names.empty() ? "(none)" : join(names, ", ")));
    const YAML::Node chosen = scales[name];
    if (!chosen.IsMap())
      throw Error(line_of(path, chosen), fmt::format("scales.{} must map key paths to values, e.g. "
                                                     "stages.train.epochs: 2", name));
    std::vector<std::string> scale_sets;
    for (const auto& item : chosen) {
      YAML::Emitter value;
      value << YAML::Flow << item.second;
      scale_sets.push_back(item.first.Scalar() + "=" + value.c_str());
    }
    apply_overrides(root, scale_sets, fmt::format("scales.{}", name));
    apply_overrides(root, overrides, "--set");
  }

  // ${output_dir} in any value stands for the run's output folder (as written, relative to
  // the manifest's folder), so stages can name each other's outputs and a scale or --set
  // that moves the run moves them too.
  const std::string output_dir =
      root["output_dir"] && root["output_dir"].IsScalar() ? root["output_dir"].Scalar()
                                                           : "runs/" + fs::path(path).stem().string();
  std::function<void(YAML::Node)> substitute = [&](YAML::Node node) {
    if (node.IsScalar()) {
      const std::string text = node.Scalar();
      if (text.find("${output_dir}") != std::string::npos)
        node = boost::algorithm::replace_all_copy(text, "${output_dir}", output_dir);
    } else if (node.IsSequence()) {
      for (std::size_t i = 0; i < node.size(); ++i) substitute(node[i]);
    } else if (node.IsMap()) {
      for (auto item : node) substitute(item.second);
    }
  };
  substitute(root);
  return root;
}

std::vector<std::string> manifest_plugin_paths(const YAML::Node& root, const std::string& path) {
  std::vector<std::string> out;
  const fs::path dir = fs::absolute(fs::path(path)).parent_path();
  if (YAML::Node paths = root["plugin_paths"]) {
    if (!paths.IsSequence()) throw Error(line_of(path, paths), "'plugin_paths' must be a list of folders or libraries");
    for (const auto& p : paths) {
      fs::path f(p.Scalar());
      out.push_back((f.is_absolute() ? f : dir / f).lexically_normal().string());
    }
  }
  return out;
}

Manifest resolve_manifest(const YAML::Node& root, const std::string& path, const Registry& registry) {
  Manifest m;
  m.path = fs::absolute(path).lexically_normal().string();
  m.dir = fs::path(m.path).parent_path().string();
  static const std::vector<std::string> top_keys = {"version",        "output_dir", "seed",  "plugin_paths",
                                                    "required_files", "scale",      "scales", "stages"};
  for (const auto& item : root) {
    const std::string key = item.first.Scalar();
    if (std::find(top_keys.begin(), top_keys.end(), key) == top_keys.end())
      throw Error(line_of(path, item.first), fmt::format("unknown top-level key '{}'{}; keys are: {}", key,
                                                         did_you_mean(key, top_keys), join(top_keys, ", ")));
  }
  if (YAML::Node v = root["version"]) {
    if (!v.IsScalar() || v.Scalar() != "1")
      throw Error(line_of(path, v), fmt::format("manifest version '{}' is not supported; this admis reads version 1",
                                                v.IsScalar() ? v.Scalar() : "?"));
  }
  const std::string stem = fs::path(path).stem().string();
  std::string out = root["output_dir"] ? root["output_dir"].Scalar() : "runs/" + stem;
  m.output_dir = (fs::path(out).is_absolute() ? fs::path(out) : fs::path(m.dir) / out).lexically_normal().string();
  if (YAML::Node s = root["seed"]) {
    Value v = scalar_to_value(s, ParamType::Int, "seed", line_of(path, s));
    m.seed = static_cast<std::uint64_t>(v.as<std::int64_t>());
  }
  m.plugin_paths = manifest_plugin_paths(root, path);
  if (YAML::Node files = root["required_files"]) {
    if (!files.IsSequence())
      throw Error(line_of(path, files), "'required_files' must be a list of {path: ..., from: ...} entries");
    for (const auto& entry : files) {
      const std::string where = line_of(path, entry);
      if (!entry.IsMap() || !entry["path"] || !entry["path"].IsScalar())
        throw Error(where, "each required_files entry needs 'path' (and 'from': where the file comes from)");
      for (const auto& item : entry) {
        const std::string key = item.first.Scalar();
        if (key != "path" && key != "from")
          throw Error(line_of(path, item.first),
                      fmt::format("unknown key '{}' in a required_files entry; keys are: path, from", key));
      }
      const fs::path file(entry["path"].Scalar());
      m.required_files.push_back({(file.is_absolute() ? file : fs::path(m.dir) / file).lexically_normal().string(),
                                  entry["from"] ? entry["from"].Scalar() : std::string(), where});
    }
  }

  YAML::Node stages = root["stages"];
  if (!stages || !stages.IsSequence() || stages.size() == 0)
    throw Error(path, "'stages' must be a non-empty list of stages");
  std::set<std::string> names;
  std::vector<std::string> type_names;
  for (const auto& t : stage_types()) type_names.push_back(t.name);
  for (const auto& node : stages) {
    const std::string where = line_of(path, node);
    if (!node.IsMap()) throw Error(where, "each stage must be a map with 'name' and 'stage'");
    if (!node["stage"]) throw Error(where, fmt::format("stage has no 'stage' key; stage types are: {}", join(type_names, ", ")));
    ResolvedStage rs;
    rs.where = where;
    rs.type = &find_stage_type(node["stage"].Scalar(), line_of(path, node["stage"]));
    rs.name = node["name"] ? node["name"].Scalar() : rs.type->name;
    if (!names.insert(rs.name).second)
      throw Error(where, fmt::format("two stages are named '{}'; give each stage a distinct 'name'", rs.name));
    std::vector<std::string> declared = {"name", "stage"};
    for (const auto& k : rs.type->keys) declared.push_back(k.name);
    std::map<std::string, Value> raw;
    const std::string owner = fmt::format("stage '{}' ({})", rs.name, rs.type->name);
    std::set<std::string> seen;
    for (const auto& item : node) {
      const std::string key = item.first.Scalar();
      // YAML keeps the last of two equal keys silently; a stage must not.
      if (!seen.insert(key).second)
        throw Error(line_of(path, item.first), fmt::format("{}: key '{}' is given twice", owner, key));
      if (key == "name" || key == "stage") continue;
      auto it = std::find_if(rs.type->keys.begin(), rs.type->keys.end(), [&](const ParamSpec& s) { return s.name == key; });
      if (it == rs.type->keys.end())
        throw Error(line_of(path, item.first), fmt::format("{}: unknown key '{}'{}; keys are: {}", owner, key,
                                                           did_you_mean(key, declared), join(declared, ", ")));
      raw[key] = yaml_to_value(item.second, *it, registry, path);
      if (!raw[key].empty()) raw[key] = validate_value(*it, raw[key], line_of(path, item.second) + ": " + owner);
    }
    rs.keys = registry.complete(rs.type->keys, owner, raw, m.dir, where);
    m.stages.push_back(std::move(rs));
  }
  return m;
}

namespace {

void emit_value(YAML::Emitter& e, const Value& v);

void emit_plugin(YAML::Emitter& e, const PluginSpec& p) {
  e << YAML::BeginMap << YAML::Key << "kind" << YAML::Value << p.kind << YAML::Key << "plugin" << YAML::Value << p.name;
  e << YAML::Key << "params" << YAML::Value << YAML::BeginMap;
  for (const auto& [k, v] : p.params) {
    e << YAML::Key << k << YAML::Value;
    emit_value(e, v);
  }
  e << YAML::EndMap;
  if (!p.weights.empty()) e << YAML::Key << "weights" << YAML::Value << p.weights;
  e << YAML::EndMap;
}

void emit_value(YAML::Emitter& e, const Value& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) e << YAML::Null;
        else if constexpr (std::is_same_v<T, std::shared_ptr<const PluginSpec>>) emit_plugin(e, *x);
        else if constexpr (std::is_same_v<T, std::vector<bool>>) {
          e << YAML::Flow << YAML::BeginSeq;
          for (bool b : x) e << b;
          e << YAML::EndSeq;
        } else if constexpr (std::is_same_v<T, std::vector<std::int64_t>> || std::is_same_v<T, std::vector<double>> ||
                             std::is_same_v<T, std::vector<std::string>>) {
          e << YAML::Flow << YAML::BeginSeq;
          for (const auto& item : x) e << item;
          e << YAML::EndSeq;
        } else if constexpr (std::is_same_v<T, std::string>) e << YAML::DoubleQuoted << x;
        else e << x;
      },
      v.storage());
}

}  // namespace

namespace {

void emit_stage(YAML::Emitter& e, const ResolvedStage& s) {
  e << YAML::BeginMap << YAML::Key << "name" << YAML::Value << s.name << YAML::Key << "stage" << YAML::Value
    << s.type->name;
  for (const auto& [k, v] : s.keys.values()) {
    e << YAML::Key << k << YAML::Value;
    emit_value(e, v);
  }
  e << YAML::EndMap;
}

// Every string a stage's values hold that names an existing file (inputs, weights, ...).
// Every string a value holds (nested plugins' parameters and weights included).
void collect_strings(const Value& v, std::vector<std::string>& out) {
  if (v.holds<std::string>()) out.push_back(v.as<std::string>());
  if (v.holds<std::vector<std::string>>())
    for (const auto& t : v.as<std::vector<std::string>>()) out.push_back(t);
  if (v.holds<std::shared_ptr<const PluginSpec>>()) {
    const PluginSpec& p = *v.as<std::shared_ptr<const PluginSpec>>();
    out.push_back(p.weights);
    for (const auto& [k, inner] : p.params) collect_strings(inner, out);
  }
}

void collect_files(const Value& v, std::vector<std::string>& files) {
  auto consider = [&](const std::string& text) {
    boost::system::error_code ec;
    if (!text.empty() && fs::is_regular_file(text, ec)) files.push_back(text);
  };
  if (v.holds<std::string>()) consider(v.as<std::string>());
  if (v.holds<std::vector<std::string>>())
    for (const auto& t : v.as<std::vector<std::string>>()) consider(t);
  if (v.holds<std::shared_ptr<const PluginSpec>>()) {
    const PluginSpec& p = *v.as<std::shared_ptr<const PluginSpec>>();
    consider(p.weights);
    for (const auto& [k, inner] : p.params) collect_files(inner, files);
  }
}

// What a stage's result depends on: its resolved keys, the seed, and the size and time of
// every file it names. A finished stage whose fingerprint still matches is not run again.
std::string stage_fingerprint(const ResolvedStage& s, std::uint64_t seed) {
  YAML::Emitter e;
  emit_stage(e, s);
  std::string text = fmt::format("seed: {}\n{}\n", seed, e.c_str());
  std::vector<std::string> files;
  for (const auto& [k, v] : s.keys.values()) collect_files(v, files);
  for (const auto& f : files)
    text += fmt::format("file {} {} {}\n", f, fs::file_size(f), static_cast<long long>(fs::last_write_time(f)));
  return text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

std::string file_problem(const std::string& path) {
  boost::system::error_code ec;
  if (!fs::exists(path, ec)) return "missing";
  if (fs::is_directory(path, ec)) return fs::directory_iterator(path) == fs::directory_iterator() ? "an empty folder" : "";
  std::ifstream in(path, std::ios::binary);
  char head[16] = {};
  in.read(head, sizeof head);
  const std::size_t n = static_cast<std::size_t>(in.gcount());
  if (n == 0) return "an empty file";
  const std::string ext = boost::algorithm::to_lower_copy(fs::path(path).extension().string());
  const std::string start(head, n);
  if (start.rfind("<!DOCTYPE", 0) == 0 || start.rfind("<html", 0) == 0 || start.rfind("<HTML", 0) == 0)
    return "an HTML page, not the file (a download link that needs confirmation?)";
  auto expect = [&](bool ok, const char* what) { return ok ? std::string() : fmt::format("not {}", what); };
  if (ext == ".pt" || ext == ".pth" || ext == ".ckpt")
    return expect(start.rfind("PK\x03\x04", 0) == 0, "a torch.save zip file (PyTorch >= 1.6 format)");
  if (ext == ".safetensors") {
    std::uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(head[i]);
    return expect(n >= 9 && head[8] == '{' && header >= 2 && header + 8 <= fs::file_size(path, ec),
                  "a safetensors file");
  }
  if (ext == ".npy") return expect(start.rfind("\x93NUMPY", 0) == 0, "a NumPy .npy file");
  if (ext == ".bin") return expect(static_cast<unsigned char>(head[0]) == 0x80, "a pickled insightface .bin set");
  return "";
}

void check_required_files(const Manifest& m, const std::vector<std::string>& only) {
  // With --stages, a file that only unselected stages use is not needed now.
  auto needed = [&](const RequiredFile& f) {
    if (only.empty()) return true;
    bool used_by_any = false;
    for (const auto& s : m.stages) {
      std::vector<std::string> strings;
      for (const auto& [key, value] : s.keys.values()) collect_strings(value, strings);
      // The stage names the file itself, or a folder it lies in (e.g. evaluate's `data`).
      const bool uses = std::any_of(strings.begin(), strings.end(), [&](const std::string& text) {
        if (text.empty() || f.path.compare(0, text.size(), text) != 0) return false;
        return f.path.size() == text.size() || text.back() == '/' || f.path[text.size()] == '/';
      });
      if (!uses) continue;
      if (std::find(only.begin(), only.end(), s.name) != only.end()) return true;
      used_by_any = true;
    }
    return !used_by_any;
  };
  std::string problems;
  int count = 0;
  std::size_t checked = 0;
  for (const auto& f : m.required_files) {
    if (!needed(f)) continue;
    ++checked;
    const std::string problem = file_problem(f.path);
    if (problem.empty()) continue;
    ++count;
    problems += fmt::format("\n  {} ({}; listed at {})\n      from: {}", f.path, problem, f.where,
                            f.from.empty() ? "(the manifest does not say)" : f.from);
  }
  if (count == 0) return;
  throw Error(m.path, fmt::format("{} of the {} required files {} missing or unusable:{}\nPut each file at the path "
                                  "shown (paths in required_files are relative to the manifest's folder), or change "
                                  "the paths in required_files.",
                                  count, checked, count == 1 ? "is" : "are", problems));
}

std::string resolved_manifest_yaml(const Manifest& m) {
  YAML::Emitter e;
  e << YAML::Comment(fmt::format("resolved from {}: every default filled in, paths absolute", m.path));
  e << YAML::BeginMap;
  e << YAML::Key << "version" << YAML::Value << 1;
  e << YAML::Key << "output_dir" << YAML::Value << m.output_dir;
  e << YAML::Key << "seed" << YAML::Value << m.seed;
  e << YAML::Key << "plugin_paths" << YAML::Value << YAML::Flow << m.plugin_paths;
  if (!m.required_files.empty()) {
    e << YAML::Key << "required_files" << YAML::Value << YAML::BeginSeq;
    for (const auto& f : m.required_files)
      e << YAML::BeginMap << YAML::Key << "path" << YAML::Value << f.path << YAML::Key << "from" << YAML::Value
        << f.from << YAML::EndMap;
    e << YAML::EndSeq;
  }
  e << YAML::Key << "stages" << YAML::Value << YAML::BeginSeq;
  for (const auto& s : m.stages) emit_stage(e, s);
  e << YAML::EndSeq << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const fs::path target(path);
  if (!target.parent_path().empty()) fs::create_directories(target.parent_path());
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(path, "cannot open for writing");
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error(path, "write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path, "cannot move the finished file into place");
  }
}

void check_stage_names(const Manifest& m, const std::vector<std::string>& only) {
  std::vector<std::string> names;
  for (const auto& s : m.stages) names.push_back(s.name);
  for (const auto& name : only)
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw Error(m.path, fmt::format("--stages names '{}', which is not a stage of this manifest{}; stages are: {}", name,
                                      did_you_mean(name, names), join(names, ", ")));
}

void run_manifest(const Manifest& m, Runtime& runtime, bool force, const std::vector<std::string>& only) {
  check_stage_names(m, only);
  Distributed& dist = *world(runtime.device());
  const bool main_rank = dist.is_main();
  if (main_rank) {
    fs::create_directories(m.output_dir);
    write_file_atomic((fs::path(m.output_dir) / "manifest.resolved.yaml").string(), resolved_manifest_yaml(m));
  }
  const std::size_t n = m.stages.size();
  // Once a stage runs, every later stage runs too: its inputs may have changed.
  bool upstream_ran = force;
  for (std::size_t i = 0; i < n; ++i) {
    const ResolvedStage& s = m.stages[i];
    StageContext ctx{runtime, s.name, (fs::path(m.output_dir) / s.name).string(), force};
    const std::string stamp = (fs::path(ctx.output_dir) / kStageDoneFile).string();
    const std::string label = stage_label(s);
    // Rank 0 decides what happens to the stage from its view of the output folder, and the
    // other ranks follow (their view may differ, e.g. a folder not shared between machines).
    std::string plan;
    std::string fingerprint;
    if (main_rank) {
      fingerprint = stage_fingerprint(s, m.seed);
      if (!only.empty() && std::find(only.begin(), only.end(), s.name) == only.end()) {
        plan = "unselected";
        std::cerr << fmt::format("[{}/{}] {} not selected by --stages, left as it is", i + 1, n, label) << std::endl;
      } else if (!upstream_ran && fs::exists(stamp) && read_text(stamp) == fingerprint) {
        plan = "kept";
        std::cerr << fmt::format("[{}/{}] {} already done, kept (--force recomputes)", i + 1, n, label) << std::endl;
      } else {
        plan = "run";
        upstream_ran = true;
        fs::remove(stamp);
        fs::create_directories(ctx.output_dir);
        std::cerr << fmt::format("[{}/{}] {} ...{}", i + 1, n, label,
                                 dist.active() ? s.type->all_ranks
                                                     ? fmt::format(" (on all {} ranks)", dist.world_size())
                                                     : " (on rank 0; the other ranks wait)"
                                               : "")
                  << std::endl;
      }
      dist.publish(fmt::format("stage/{}/plan", i), plan);
    } else {
      plan = dist.await(fmt::format("stage/{}/plan", i), fmt::format("rank 0 to start {}", label));
    }
    if (plan != "run") continue;

    const std::string finished_key = fmt::format("stage/{}/finished", i);
    const auto start = std::chrono::steady_clock::now();
    if (main_rank || s.type->all_ranks) {
      try {
        if (s.type->all_ranks) fs::create_directories(ctx.output_dir);
        s.type->run(s.keys, ctx);
      } catch (const std::exception& e) {
        const Error error(fmt::format("{} {}", s.where, label), describe(e));
        dist.publish_failure(error.what());
        throw error;
      }
      if (s.type->all_ranks)
        dist.wait_for_all(fmt::format("stage/{}/end", i), fmt::format("the other ranks to finish {}", label));
      else
        dist.publish(finished_key, "ok");
    } else {
      dist.await(finished_key, fmt::format("rank 0 to finish {}", label));
    }
    if (!main_rank) continue;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    write_file_atomic((fs::path(ctx.output_dir) / kStageTimeFile).string(), fmt::format("{:.3f}\n", seconds));
    write_file_atomic(stamp, fingerprint);
    std::cerr << fmt::format("[{}/{}] {} done in {:.2f} s -> {}", i + 1, n, label, seconds, ctx.output_dir)
              << std::endl;
  }
  // Rank 0 serves the store the others still read from: it is the last to go.
  dist.farewell("the end of the run");
}

std::shared_ptr<Plugin> create_from_entry(Kind kind, const std::string& entry, Runtime& runtime, const std::string& where) {
  std::vector<std::string> words;
  const std::string trimmed = boost::algorithm::trim_copy(entry);
  boost::algorithm::split(words, trimmed, boost::is_any_of(" \t"), boost::token_compress_on);
  if (words.empty() || words[0].empty()) throw Error(where, fmt::format("empty {} entry", to_string(kind)));
  const std::string owner = fmt::format("{}/{}", to_string(kind), words[0]);
  const RegisteredPlugin& registered = runtime.registry().get(kind, words[0]);
  const std::vector<std::string> sets(words.begin() + 1, words.end());
  try {
    auto raw = parse_set_options(sets, registered.factory->params, runtime.registry(), owner);
    return runtime.create(kind, words[0], raw, "", {}, "", where);
  } catch (const Error& e) {
    throw Error(where, fmt::format("{} entry '{}': {}", to_string(kind), entry, e.what()));
  }
}

AugmenterList create_augmenters(const std::vector<std::string>& entries, Runtime& runtime, const std::string& where) {
  AugmenterList list;
  for (const auto& entry : entries) {
    list.plugins.push_back(create_from_entry(Kind::Augmenter, entry, runtime, where));
    list.augmenters.push_back(&dynamic_cast<Augmenter&>(*list.plugins.back()));
  }
  return list;
}

}  // namespace admis::host
