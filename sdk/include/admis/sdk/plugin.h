#pragma once
// The plugin entry point. Each plugin library exports exactly one C-linkage function,
// `admis_plugin_entry`, returning a descriptor. The descriptor's leading fields are plain
// C so the host can check compatibility (ABI major, LibTorch version, C++ ABI) before it
// touches anything C++; only then does it read the factories.
//
// A plugin author writes:
//
//   ADMIS_PLUGIN("my-heads", "1.0.0") {
//     registry.add(admis::Kind::Head, "my-head", "1.0.0", "One-line summary",
//                  {admis::ParamSpec::Int("in_features", 512, "embedding size").at_least(1)},
//                  [](const admis::Params& p, admis::Host& host) -> std::unique_ptr<admis::Plugin> {
//                    return std::make_unique<MyHead>(p);
//                  });
//   }

#include <torch/version.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "admis/sdk/host.h"
#include "admis/sdk/kinds.h"
#include "admis/sdk/params.h"
#include "admis/sdk/version.h"

namespace admis {

using CreateFn = std::function<std::unique_ptr<Plugin>(const Params& params, Host& host)>;

struct Factory {
  Kind kind;
  std::string name;
  std::string version;
  std::string summary;
  std::vector<ParamSpec> params;
  CreateFn create;
};

// Collects the factories inside the entry point (no static-initialisation registries).
class FactoryList {
 public:
  void add(Kind kind, std::string name, std::string version, std::string summary, std::vector<ParamSpec> params,
           CreateFn create) {
    factories_.push_back(
        Factory{kind, std::move(name), std::move(version), std::move(summary), std::move(params), std::move(create)});
  }
  const std::vector<Factory>& factories() const { return factories_; }

 private:
  std::vector<Factory> factories_;
};

}  // namespace admis

extern "C" {

// Frozen layout for ABI major 1. New fields are appended and gated by abi_minor.
struct admis_plugin_descriptor {
  std::uint32_t abi_major;
  std::uint32_t abi_minor;
  const char* library_name;
  const char* library_version;
  const char* torch_version;  // LibTorch the library was built against, e.g. "1.13.0"
  std::int32_t cxx11_abi;     // _GLIBCXX_USE_CXX11_ABI it was built with
  std::uint32_t factory_count;
  const admis::Factory* factories;  // read by the host only after the checks above pass
};

typedef const admis_plugin_descriptor* (*admis_plugin_entry_fn)();
}

#define ADMIS_PLUGIN_ENTRY_SYMBOL "admis_plugin_entry"

#define ADMIS_STRINGIFY2(x) #x
#define ADMIS_STRINGIFY(x) ADMIS_STRINGIFY2(x)
#define ADMIS_TORCH_VERSION_STRING \
  ADMIS_STRINGIFY(TORCH_VERSION_MAJOR) "." ADMIS_STRINGIFY(TORCH_VERSION_MINOR) "." ADMIS_STRINGIFY(TORCH_VERSION_PATCH)

// Writes the entry point. The block that follows fills `registry` (an admis::FactoryList&).
// Define ADMIS_PLUGIN_ENTRY_NAME before including this header to give the entry point
// another name when linking several plugins statically into one binary.
#ifndef ADMIS_PLUGIN_ENTRY_NAME
#define ADMIS_PLUGIN_ENTRY_NAME admis_plugin_entry
#endif

#define ADMIS_PLUGIN(LIBRARY_NAME, LIBRARY_VERSION)                                                              \
  static void admis_register_factories(::admis::FactoryList& registry);                                         \
  extern "C" __attribute__((visibility("default"))) const admis_plugin_descriptor* ADMIS_PLUGIN_ENTRY_NAME() {  \
    static const ::admis::FactoryList list = [] {                                                               \
      ::admis::FactoryList l;                                                                                   \
      admis_register_factories(l);                                                                              \
      return l;                                                                                                 \
    }();                                                                                                        \
    static const admis_plugin_descriptor descriptor = {                                                         \
        ADMIS_ABI_MAJOR,                                                                                        \
        ADMIS_ABI_MINOR,                                                                                        \
        LIBRARY_NAME,                                                                                           \
        LIBRARY_VERSION,                                                                                        \
        ADMIS_TORCH_VERSION_STRING,                                                                             \
        _GLIBCXX_USE_CXX11_ABI,                                                                                 \
        static_cast<std::uint32_t>(list.factories().size()),                                                    \
        list.factories().data()};                                                                               \
    return &descriptor;                                                                                         \
  }                                                                                                             \
  static void admis_register_factories(::admis::FactoryList& registry)
