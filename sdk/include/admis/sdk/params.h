#pragma once
// Declared parameters: every factory publishes a schema (name, type, default, range or
// choices, one-line doc) for each parameter it accepts. The host validates a manifest
// against the schema before anything is constructed, fills in the defaults, and hands the
// plugin a complete Params with typed access.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "admis/sdk/error.h"

namespace admis {

enum class ParamType {
  Bool,
  Int,
  Float,
  String,
  Path,  // a string the host resolves relative to the manifest's folder
  BoolList,
  IntList,
  FloatList,
  StringList,
  PathList,
  Plugin,  // a nested plugin: {plugin: NAME, params: {...}, weights: FILE}
};

inline const char* to_string(ParamType t) {
  switch (t) {
    case ParamType::Bool: return "bool";
    case ParamType::Int: return "int";
    case ParamType::Float: return "float";
    case ParamType::String: return "string";
    case ParamType::Path: return "path";
    case ParamType::BoolList: return "list of bool";
    case ParamType::IntList: return "list of int";
    case ParamType::FloatList: return "list of float";
    case ParamType::StringList: return "list of string";
    case ParamType::PathList: return "list of path";
    case ParamType::Plugin: return "plugin";
  }
  return "?";
}

inline bool is_list(ParamType t) {
  return t == ParamType::BoolList || t == ParamType::IntList || t == ParamType::FloatList ||
         t == ParamType::StringList || t == ParamType::PathList;
}

struct PluginSpec;

// One parameter value. Lists hold their elements; a Plugin value holds a nested spec.
class Value {
 public:
  using Storage = std::variant<std::monostate, bool, std::int64_t, double, std::string, std::vector<bool>,
                               std::vector<std::int64_t>, std::vector<double>, std::vector<std::string>,
                               std::shared_ptr<const PluginSpec>>;
  Value() = default;
  Value(bool b) : v_(b) {}
  Value(int i) : v_(std::int64_t{i}) {}
  Value(std::int64_t i) : v_(i) {}
  Value(double d) : v_(d) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::vector<bool> v) : v_(std::move(v)) {}
  Value(std::vector<std::int64_t> v) : v_(std::move(v)) {}
  Value(std::vector<double> v) : v_(std::move(v)) {}
  Value(std::vector<std::string> v) : v_(std::move(v)) {}
  Value(std::shared_ptr<const PluginSpec> p) : v_(std::move(p)) {}

  bool empty() const { return std::holds_alternative<std::monostate>(v_); }
  template <class T>
  bool holds() const { return std::holds_alternative<T>(v_); }
  template <class T>
  const T& as() const { return std::get<T>(v_); }
  const Storage& storage() const { return v_; }

 private:
  Storage v_;
};

// A nested plugin as written in a manifest: which plugin, with which parameters, and
// optionally which weights to load into it.
struct PluginSpec {
  std::string kind;
  std::string name;
  std::map<std::string, Value> params;  // validated and completed by the host
  std::string weights;                  // resolved path, or empty
};

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::String;
  Value default_value;  // empty: the parameter is required
  std::optional<double> min, max;  // inclusive, for Int/Float (and their lists' elements)
  std::vector<std::string> choices;  // for String (and Int, written as text)
  std::string doc;
  std::string plugin_kind;  // for Plugin: the kind the nested plugin must be

  bool required() const { return default_value.empty(); }

  // Fluent builders, so a schema reads as one declaration per parameter.
  static ParamSpec Bool(std::string n, bool def, std::string d) { return make(n, ParamType::Bool, def, d); }
  static ParamSpec Int(std::string n, std::int64_t def, std::string d) { return make(n, ParamType::Int, def, d); }
  static ParamSpec Float(std::string n, double def, std::string d) { return make(n, ParamType::Float, def, d); }
  static ParamSpec String(std::string n, std::string def, std::string d) {
    return make(n, ParamType::String, std::move(def), d);
  }
  static ParamSpec Path(std::string n, std::string def, std::string d) {
    return make(n, ParamType::Path, std::move(def), d);
  }
  static ParamSpec IntList(std::string n, std::vector<std::int64_t> def, std::string d) {
    return make(n, ParamType::IntList, std::move(def), d);
  }
  static ParamSpec FloatList(std::string n, std::vector<double> def, std::string d) {
    return make(n, ParamType::FloatList, std::move(def), d);
  }
  static ParamSpec BoolList(std::string n, std::vector<bool> def, std::string d) {
    return make(n, ParamType::BoolList, std::move(def), d);
  }
  static ParamSpec StringList(std::string n, std::vector<std::string> def, std::string d) {
    return make(n, ParamType::StringList, std::move(def), d);
  }
  static ParamSpec PathList(std::string n, std::vector<std::string> def, std::string d) {
    return make(n, ParamType::PathList, std::move(def), d);
  }
  static ParamSpec Plugin(std::string n, std::string kind, std::string d) {
    ParamSpec s = make(n, ParamType::Plugin, Value(), d);
    s.plugin_kind = std::move(kind);
    return s;
  }
  // A parameter without a default must be given in the manifest.
  ParamSpec required_value() && {
    default_value = Value();
    return std::move(*this);
  }
  ParamSpec range(double lo, double hi) && {
    min = lo;
    max = hi;
    return std::move(*this);
  }
  ParamSpec at_least(double lo) && {
    min = lo;
    return std::move(*this);
  }
  ParamSpec one_of(std::vector<std::string> c) && {
    choices = std::move(c);
    return std::move(*this);
  }

 private:
  static ParamSpec make(std::string n, ParamType t, Value def, std::string d) {
    ParamSpec s;
    s.name = std::move(n);
    s.type = t;
    s.default_value = std::move(def);
    s.doc = std::move(d);
    return s;
  }
};

// The validated, complete parameter set a plugin is created with. Asking for an
// undeclared name or with the wrong type is a programming error of the plugin, reported
// with the plugin's name.
class Params {
 public:
  Params() = default;
  Params(std::string owner, std::map<std::string, Value> values) : owner_(std::move(owner)), values_(std::move(values)) {}

  const std::string& owner() const { return owner_; }
  const std::map<std::string, Value>& values() const { return values_; }
  bool has(const std::string& name) const { return values_.count(name) && !values_.at(name).empty(); }

  bool get_bool(const std::string& n) const { return get<bool>(n, "bool"); }
  std::int64_t get_int(const std::string& n) const { return get<std::int64_t>(n, "int"); }
  double get_float(const std::string& n) const {
    const Value& v = at(n);
    if (v.holds<std::int64_t>()) return static_cast<double>(v.as<std::int64_t>());
    return get<double>(n, "float");
  }
  const std::string& get_string(const std::string& n) const { return get<std::string>(n, "string"); }
  const std::string& get_path(const std::string& n) const { return get<std::string>(n, "path"); }
  const std::vector<bool>& get_bools(const std::string& n) const { return get<std::vector<bool>>(n, "list of bool"); }
  const std::vector<std::int64_t>& get_ints(const std::string& n) const {
    return get<std::vector<std::int64_t>>(n, "list of int");
  }
  const std::vector<double>& get_floats(const std::string& n) const {
    return get<std::vector<double>>(n, "list of float");
  }
  const std::vector<std::string>& get_strings(const std::string& n) const {
    return get<std::vector<std::string>>(n, "list of string");
  }
  const PluginSpec& get_plugin(const std::string& n) const {
    return *get<std::shared_ptr<const PluginSpec>>(n, "plugin");
  }

 private:
  const Value& at(const std::string& n) const {
    auto it = values_.find(n);
    if (it == values_.end() || it->second.empty())
      throw Error(owner_, "parameter '" + n + "' was not declared in the plugin's schema or has no value");
    return it->second;
  }
  template <class T>
  const T& get(const std::string& n, const char* type) const {
    const Value& v = at(n);
    if (!v.holds<T>()) throw Error(owner_, "parameter '" + n + "' is not of type " + type);
    return v.as<T>();
  }

  std::string owner_;
  std::map<std::string, Value> values_;
};

}  // namespace admis
