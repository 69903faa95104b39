#pragma once
// Plugin discovery and loading (Boost.DLL), the (kind, name) registry, parameter
// validation against each factory's schema, and creation with the library kept loaded.

#include <boost/filesystem.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admis/sdk/plugin.h"

namespace boost::dll {
class shared_library;
}

namespace admis::host {

struct LoadedLibrary {
  std::string path;
  std::string name;
  std::string version;
  std::uint32_t abi_major = 0, abi_minor = 0;
  std::string torch_version;
  int cxx11_abi = 0;
  std::shared_ptr<boost::dll::shared_library> library;  // never unloaded while the registry lives
};

struct RegisteredPlugin {
  const Factory* factory = nullptr;
  std::shared_ptr<const LoadedLibrary> library;
};

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Loads every plugin library (*.so) in the bundled folder, in each folder of
  // ADMIS_PLUGIN_PATH (':'-separated) and in `extra` (folders or library files).
  void discover(const std::vector<std::string>& extra = {});
  // Loads one library; refusals throw admis::Error naming the file and what to do.
  void load_library(const std::string& path);

  const RegisteredPlugin* find(Kind kind, const std::string& name) const;
  // Throws admis::Error listing the available names of that kind (and the closest one).
  const RegisteredPlugin& get(Kind kind, const std::string& name) const;
  std::vector<const RegisteredPlugin*> plugins() const;  // sorted by kind, name
  const std::vector<std::shared_ptr<const LoadedLibrary>>& libraries() const { return libraries_; }

  // Validates raw values against the schema (unknown keys, types, ranges, choices;
  // nested Plugin-typed values recursively), resolves paths relative to `base_dir`, and
  // fills defaults. `where` prefixes error messages (e.g. "manifest.yaml:12").
  Params complete_params(const RegisteredPlugin& plugin, const std::map<std::string, Value>& raw,
                         const std::string& base_dir = "", const std::string& where = "") const;

  // The same for any schema (stage keys use it too); `owner` names what is validated.
  Params complete(const std::vector<ParamSpec>& schema, const std::string& owner,
                  const std::map<std::string, Value>& raw, const std::string& base_dir = "",
                  const std::string& where = "") const;

  // Creates the plugin; the returned object keeps its library loaded.
  std::shared_ptr<Plugin> create(Kind kind, const std::string& name, const std::map<std::string, Value>& raw,
                                 Host& host, const std::string& base_dir = "", const std::string& where = "") const;

  static std::string bundled_plugin_dir();

 private:
  std::vector<std::shared_ptr<const LoadedLibrary>> libraries_;
  std::map<std::pair<Kind, std::string>, RegisteredPlugin> plugins_;
};

// Checks one value against its declaration (type, range, choices); returns it converted
// to the declared type (an int where a float is declared, say).
Value validate_value(const ParamSpec& spec, const Value& raw, const std::string& where);

// Parses "backbone" / "context-source" ... back into a Kind; throws listing the kinds.
Kind parse_kind(const std::string& text);

}  // namespace admis::host
