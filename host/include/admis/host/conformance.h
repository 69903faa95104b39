#pragma once
// Per-kind conformance suite: the contract checks every plugin of a kind must pass,
// bundled or third-party (`admis check LIBRARY.so`, and the test suite).

#include <ostream>
#include <string>
#include <vector>

#include "admis/host/registry.h"
#include "admis/host/runtime.h"

namespace admis::host {

struct CheckResult {
  std::string plugin;  // kind/name
  std::string check;
  bool passed = false;
  std::string detail;
};

struct ConformanceReport {
  std::string library;
  std::vector<CheckResult> results;
  bool failed() const;
  std::size_t passed_count() const;
};

// Checks every plugin `registry` holds from `library` (a path as registered).
ConformanceReport check_plugins(const Registry& registry, const std::string& library, Runtime& runtime);
// Loads the bundled plugins, `extra_paths` and `library`, then checks `library`'s plugins.
ConformanceReport check_library(const std::string& library, const std::vector<std::string>& extra_paths,
                                const RunSettings& settings);
void print_report(const ConformanceReport& report, std::ostream& out);

}  // namespace admis::host
