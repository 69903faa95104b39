#include "admis/host/registry.h"

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>

#include "admis/host/text.h"

namespace fs = boost::filesystem;

namespace admis::host {

Kind parse_kind(const std::string& text) {
  for (Kind k : all_kinds())
    if (text == to_string(k)) return k;
  std::vector<std::string> names;
  for (Kind k : all_kinds()) names.push_back(to_string(k));
  throw Error("", fmt::format("unknown plugin kind '{}'{}; kinds are: {}", text, did_you_mean(text, names),
                              join(names, ", ")));
}

Registry::Registry() = default;
Registry::~Registry() = default;

std::string Registry::bundled_plugin_dir() {
  // The executable lives in bin/; bundled plugins in lib/admis/plugins beside it, in the
  // build tree and the install tree alike.
  fs::path exe = boost::dll::program_location();
  return (exe.parent_path() / ADMIS_PLUGIN_RELATIVE_DIR).lexically_normal().string();
}

namespace {

// Accepted plugin libraries stay loaded until the process ends (as LLVM's
// getPermanentLibrary): exceptions, typeinfo and static data a plugin hands out may outlive
// every object and registry that referred to it.
std::vector<std::shared_ptr<boost::dll::shared_library>>& permanent_libraries() {
  static auto* libraries = new std::vector<std::shared_ptr<boost::dll::shared_library>>();
  return *libraries;
}

bool looks_like_library(const fs::path& p) {
  const std::string name = p.filename().string();
  return p.extension() == ".so" || name.find(".so.") != std::string::npos;
}

bool is_elf(const fs::path& p) {
  std::ifstream in(p.string(), std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
}

}  // namespace

void Registry::discover(const std::vector<std::string>& extra) {
  std::vector<std::string> places;
  places.push_back(bundled_plugin_dir());
  if (const char* env = std::getenv("ADMIS_PLUGIN_PATH"))
    for (const auto& p : split(env, ':'))
      if (!p.empty()) places.push_back(p);
  places.insert(places.end(), extra.begin(), extra.end());

  std::set<std::string> seen;
  for (const auto& place : places) {
    fs::path p(place);
    boost::system::error_code ec;
    if (!fs::exists(p, ec)) {
      if (place == places.front()) continue;  // a source-less install may lack bundled plugins
      throw Error(place, "plugin path does not exist (from ADMIS_PLUGIN_PATH or the manifest's plugin_paths)");
    }
    std::vector<fs::path> files;
    if (fs::is_directory(p)) {
      for (const auto& entry : fs::directory_iterator(p))
        if (fs::is_regular_file(entry.path()) && looks_like_library(entry.path())) files.push_back(entry.path());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(p);
    }
    for (const auto& f : files) {
      const std::string canonical = fs::weakly_canonical(f).string();
      if (!seen.insert(canonical).second) continue;  // the same file named twice is loaded once
      load_library(canonical);
    }
  }
}

void Registry::load_library(const std::string& path) {
  fs::path p(path);
  if (!fs::exists(p)) throw Error(path, "plugin library not found");
  if (!is_elf(p))
    throw Error(path, "not a shared library (no ELF header); remove it from the plugin folder or "
                      "ADMIS_PLUGIN_PATH, or build it with admis_add_plugin()");

  auto lib = std::make_shared<boost::dll::shared_library>();
  try {
    // RTLD_LOCAL: plugins do not see each other's symbols; RTLD_NOW: unresolved symbols
    // fail here, with a message, rather than later in the middle of a run.
    lib->load(p, boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now);
  } catch (const std::exception& e) {
    throw Error(path, fmt::format("cannot be loaded as a shared library: {}", e.what()));
  }
  if (!lib->has(ADMIS_PLUGIN_ENTRY_SYMBOL))
    throw Error(path, "is not an admis plugin: it does not export the entry point '" ADMIS_PLUGIN_ENTRY_SYMBOL
                      "' (write ADMIS_PLUGIN(name, version) { ... } in one source file of the library)");
  auto entry = lib->get<const admis_plugin_descriptor*()>(ADMIS_PLUGIN_ENTRY_SYMBOL);
  const admis_plugin_descriptor* d = entry();
  if (d == nullptr) throw Error(path, "entry point returned no descriptor");

  // Only the leading C fields are read until every compatibility check has passed.
  if (d->abi_major != ADMIS_ABI_MAJOR)
    throw Error(path, fmt::format("was built against admis SDK ABI {}.{}, this host speaks ABI {}.{}; "
                                  "the major versions must match: rebuild the plugin against this SDK",
                                  d->abi_major, d->abi_minor, ADMIS_ABI_MAJOR, ADMIS_ABI_MINOR));
  const std::string torch_version = d->torch_version ? d->torch_version : "";
  if (torch_version != ADMIS_TORCH_VERSION_STRING)
    throw Error(path, fmt::format("was built against LibTorch {}, this host uses LibTorch {}; one LibTorch "
                                  "per process: rebuild the plugin against the host's LibTorch",
                                  torch_version, ADMIS_TORCH_VERSION_STRING));
  if (d->cxx11_abi != _GLIBCXX_USE_CXX11_ABI)
    throw Error(path, fmt::format("was built with _GLIBCXX_USE_CXX11_ABI={}, this host with {}; rebuild the "
                                  "plugin with the host's setting (LibTorch's TORCH_CXX_FLAGS)",
                                  d->cxx11_abi, _GLIBCXX_USE_CXX11_ABI));

  auto info = std::make_shared<LoadedLibrary>();
  info->path = path;
  info->name = d->library_name ? d->library_name : "";
  info->version = d->library_version ? d->library_version : "";
  info->abi_major = d->abi_major;
  info->abi_minor = d->abi_minor;
  info->torch_version = torch_version;
  info->cxx11_abi = d->cxx11_abi;
  info->library = lib;

  // Check every factory before registering any, so a refused library leaves no trace.
  for (std::uint32_t i = 0; i < d->factory_count; ++i) {
    const Factory& f = d->factories[i];
    auto key = std::make_pair(f.kind, f.name);
    auto it = plugins_.find(key);
    if (it != plugins_.end())
      throw Error(path, fmt::format("plugin {}/{} is already provided by {}; remove one of the two libraries "
                                    "from the plugin path or rename the plugin",
                                    to_string(f.kind), f.name, it->second.library->path));
    for (std::uint32_t j = 0; j < i; ++j)
      if (d->factories[j].kind == f.kind && d->factories[j].name == f.name)
        throw Error(path, fmt::format("registers plugin {}/{} twice", to_string(f.kind), f.name));
    if (!f.create) throw Error(path, fmt::format("plugin {}/{} has no create function", to_string(f.kind), f.name));
  }
  for (std::uint32_t i = 0; i < d->factory_count; ++i) {
    const Factory& f = d->factories[i];
    plugins_[{f.kind, f.name}] = RegisteredPlugin{&f, info};
  }
  permanent_libraries().push_back(lib);
  libraries_.push_back(info);
}

const RegisteredPlugin* Registry::find(Kind kind, const std::string& name) const {
  auto it = plugins_.find({kind, name});
  return it == plugins_.end() ? nullptr : &it->second;
}

const RegisteredPlugin& Registry::get(Kind kind, const std::string& name) const {
  if (const RegisteredPlugin* p = find(kind, name)) return *p;
  std::vector<std::string> names;
  for (const auto& [key, value] : plugins_)
    if (key.first == kind) names.push_back(key.second);
  throw Error(fmt::format("{}/{}", to_string(kind), name),
              fmt::format("no such plugin{}; available {} plugins: {}", did_you_mean(name, names), to_string(kind),
                          names.empty() ? "(none)" : join(names, ", ")));
}

std::vector<const RegisteredPlugin*> Registry::plugins() const {
  std::vector<const RegisteredPlugin*> out;
  for (const auto& [key, value] : plugins_) out.push_back(&value);
  return out;
}

namespace {

std::string value_text(const Value& v);

template <class T>
std::string list_text(const std::vector<T>& items) {
  std::vector<std::string> parts;
  for (const auto& x : items) parts.push_back(value_text(Value(x)));
  return "[" + join(parts, ", ") + "]";
}

std::string value_text(const Value& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) return "(none)";
        else if constexpr (std::is_same_v<T, bool>) return x ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::int64_t>) return std::to_string(x);
        else if constexpr (std::is_same_v<T, double>) return fmt::format("{}", x);
        else if constexpr (std::is_same_v<T, std::string>) return x;
        else if constexpr (std::is_same_v<T, std::vector<bool>>) {
          std::vector<std::string> parts;
          for (bool b : x) parts.push_back(b ? "true" : "false");
          return "[" + join(parts, ", ") + "]";
        } else if constexpr (std::is_same_v<T, std::shared_ptr<const PluginSpec>>)
          return x ? x->kind + "/" + x->name : "(none)";
        else return list_text(x);
      },
      v.storage());
}

// Converts a raw value to the declared type where the conversion is lossless (an int
// written where a float is declared, one scalar where a list is declared is not allowed).
Value coerce(const ParamSpec& spec, const Value& raw, const std::string& where) {
  auto wrong = [&]() {
    return Error(where, fmt::format("parameter '{}' must be {}, got '{}'", spec.name, to_string(spec.type),
                                    value_text(raw)));
  };
  switch (spec.type) {
    case ParamType::Bool:
      if (raw.holds<bool>()) return raw;
      throw wrong();
    case ParamType::Int:
      if (raw.holds<std::int64_t>()) return raw;
      if (raw.holds<double>() && std::floor(raw.as<double>()) == raw.as<double>())
        return Value(static_cast<std::int64_t>(raw.as<double>()));
      throw wrong();
    case ParamType::Float:
      if (raw.holds<double>()) return raw;
      if (raw.holds<std::int64_t>()) return Value(static_cast<double>(raw.as<std::int64_t>()));
      throw wrong();
    case ParamType::String:
    case ParamType::Path:
      if (raw.holds<std::string>()) return raw;
      throw wrong();
    case ParamType::BoolList:
      if (raw.holds<std::vector<bool>>()) return raw;
      throw wrong();
    case ParamType::IntList:
      if (raw.holds<std::vector<std::int64_t>>()) return raw;
      if (raw.holds<std::vector<double>>()) {
        std::vector<std::int64_t> out;
        for (double d : raw.as<std::vector<double>>()) {
          if (std::floor(d) != d) throw wrong();
          out.push_back(static_cast<std::int64_t>(d));
        }
        return Value(out);
      }
      throw wrong();
    case ParamType::FloatList:
      if (raw.holds<std::vector<double>>()) return raw;
      if (raw.holds<std::vector<std::int64_t>>()) {
        std::vector<double> out;
        for (auto i : raw.as<std::vector<std::int64_t>>()) out.push_back(static_cast<double>(i));
        return Value(out);
      }
      throw wrong();
    case ParamType::StringList:
    case ParamType::PathList:
      if (raw.holds<std::vector<std::string>>()) return raw;
      throw wrong();
    case ParamType::Plugin:
      if (raw.holds<std::shared_ptr<const PluginSpec>>()) return raw;
      throw wrong();
  }
  throw wrong();
}

void check_range(const ParamSpec& spec, double x, const std::string& where) {
  if ((spec.min && x < *spec.min) || (spec.max && x > *spec.max))
    throw Error(where, fmt::format("parameter '{}' = {} is out of range [{}, {}]", spec.name, x,
                                   spec.min ? fmt::format("{}", *spec.min) : "-inf",
                                   spec.max ? fmt::format("{}", *spec.max) : "inf"));
}

void check_constraints(const ParamSpec& spec, const Value& v, const std::string& where) {
  if (v.holds<std::int64_t>()) check_range(spec, static_cast<double>(v.as<std::int64_t>()), where);
  if (v.holds<double>()) check_range(spec, v.as<double>(), where);
  if (v.holds<std::vector<std::int64_t>>())
    for (auto x : v.as<std::vector<std::int64_t>>()) check_range(spec, static_cast<double>(x), where);
  if (v.holds<std::vector<double>>())
    for (auto x : v.as<std::vector<double>>()) check_range(spec, x, where);
  if (!spec.choices.empty()) {
    std::string text = value_text(v);
    if (std::find(spec.choices.begin(), spec.choices.end(), text) == spec.choices.end())
      throw Error(where, fmt::format("parameter '{}' = '{}' is not one of: {}{}", spec.name, text,
                                     join(spec.choices, ", "), did_you_mean(text, spec.choices)));
  }
}

std::string resolve_path(const std::string& p, const std::string& base_dir) {
  if (p.empty() || base_dir.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base_dir) / p).lexically_normal().string();
}

}  // namespace

std::string format_value(const Value& v) { return value_text(v); }

Value validate_value(const ParamSpec& spec, const Value& raw, const std::string& where) {
  Value v = coerce(spec, raw, where);
  check_constraints(spec, v, where);
  return v;
}

Params Registry::complete_params(const RegisteredPlugin& plugin, const std::map<std::string, Value>& raw,
                                 const std::string& base_dir, const std::string& where) const {
  const Factory& f = *plugin.factory;
  return complete(f.params, fmt::format("{}/{}", to_string(f.kind), f.name), raw, base_dir, where);
}

Params Registry::complete(const std::vector<ParamSpec>& schema, const std::string& owner,
                          const std::map<std::string, Value>& raw, const std::string& base_dir,
                          const std::string& where) const {
  const std::string at = where.empty() ? owner : where + ": " + owner;

  std::vector<std::string> declared;
  for (const auto& s : schema) declared.push_back(s.name);
  for (const auto& [key, value] : raw) {
    if (std::find(declared.begin(), declared.end(), key) == declared.end())
      throw Error(at, fmt::format("unknown parameter '{}'{}; parameters are: {}", key, did_you_mean(key, declared),
                                  declared.empty() ? "(none)" : join(declared, ", ")));
  }

  std::map<std::string, Value> values;
  for (const auto& spec : schema) {
    auto it = raw.find(spec.name);
    if (it == raw.end() || it->second.empty()) {
      if (spec.required())
        throw Error(at, fmt::format("parameter '{}' ({}) is required: {}", spec.name, to_string(spec.type), spec.doc));
      values[spec.name] = spec.default_value;
      continue;
    }
    Value v = coerce(spec, it->second, at);
    check_constraints(spec, v, at);
    if (spec.type == ParamType::Path) v = Value(resolve_path(v.as<std::string>(), base_dir));
    if (spec.type == ParamType::PathList) {
      std::vector<std::string> resolved;
      for (const auto& p : v.as<std::vector<std::string>>()) resolved.push_back(resolve_path(p, base_dir));
      v = Value(resolved);
    }
    if (spec.type == ParamType::Plugin) {
      const PluginSpec& nested = *v.as<std::shared_ptr<const PluginSpec>>();
      const std::string kind = nested.kind.empty() ? spec.plugin_kind : nested.kind;
      if (kind.empty())
        throw Error(at, fmt::format("'{}' must say which kind of plugin it names (kind: backbone, head, ...)",
                                    spec.name));
      if (!spec.plugin_kind.empty() && kind != spec.plugin_kind)
        throw Error(at, fmt::format("'{}' must name a {} plugin, got a {} plugin", spec.name, spec.plugin_kind, kind));
      const RegisteredPlugin& inner = get(parse_kind(kind), nested.name);
      auto completed = std::make_shared<PluginSpec>();
      completed->kind = kind;
      completed->name = nested.name;
      completed->params =
          complete_params(inner, nested.params, base_dir, fmt::format("{} '{}'", at, spec.name)).values();
      completed->weights = resolve_path(nested.weights, base_dir);
      v = Value(std::shared_ptr<const PluginSpec>(completed));
    }
    values[spec.name] = std::move(v);
  }
  return Params(owner, std::move(values));
}

std::shared_ptr<Plugin> Registry::create(Kind kind, const std::string& name, const std::map<std::string, Value>& raw,
                                         Host& host, const std::string& base_dir, const std::string& where) const {
  const RegisteredPlugin& plugin = get(kind, name);
  Params params = complete_params(plugin, raw, base_dir, where);
  std::unique_ptr<Plugin> object;
  try {
    object = plugin.factory->create(params, host);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(params.owner(), fmt::format("creation failed: {}", describe(e)));
  }
  if (!object) throw Error(params.owner(), "factory returned no object");
  if (object->kind() != kind)
    throw Error(params.owner(), fmt::format("factory made an object of kind {}", to_string(object->kind())));
  // The deleter holds the library: the object is destroyed (by the plugin's own code,
  // through its virtual destructor) before the library can go.
  auto library = plugin.library;
  return std::shared_ptr<Plugin>(object.release(), [library](Plugin* p) { delete p; });
}

}  // namespace admis::host
