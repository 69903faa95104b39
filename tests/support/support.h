#pragma once
// Shared helpers for the test suite: the bundled plugin registry, a host runtime,
// fixture lookup in ../shared/parity, and tensor comparisons with stated tolerances.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "admis/host/registry.h"
#include "admis/host/runtime.h"
#include "admis/host/weights.h"
#include "admis/sdk.h"

namespace admis::test {

host::Registry& registry();  // bundled plugins, discovered once
host::Runtime& runtime();    // cpu, seed 0

// ADMIS_PARITY_DIR, else <source root>/../shared/parity. Throws (failing the test loudly)
// when the folder or the file is absent.
std::string parity_dir();
std::string parity_file(const std::string& name);
// Folder with the per-plugin golden files (tests/golden in the source tree).
std::string golden_dir();
// A fresh temporary folder, removed at process exit.
std::string temp_dir(const std::string& tag);

template <class T>
std::shared_ptr<T> create(Kind kind, const std::string& name, const std::map<std::string, Value>& params = {}) {
  auto p = std::dynamic_pointer_cast<T>(runtime().create(kind, name, params));
  if (!p) throw Error(name, "plugin does not implement the requested interface");
  return p;
}

// max|actual - expected| <= tolerance; prints the worst difference on failure.
::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance);

// The whole file as a string (empty when it cannot be read).
std::string read_text(const std::string& path);

// Runs `f` and returns the admis::Error message it throws; fails the test when it throws
// nothing or another exception.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected admis::Error, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected admis::Error, nothing was thrown";
  return {};
}

// Runs `command` through /bin/sh, returning exit status and combined output.
struct CommandResult {
  int status = -1;
  std::string output;
};
CommandResult run_command(const std::string& command);
// Path of the built `admis` executable.
std::string admis_exe();

}  // namespace admis::test
