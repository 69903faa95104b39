#include "support/support.h"

#include <boost/filesystem.hpp>
#include <fmt/format.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sys/wait.h>

namespace fs = boost::filesystem;

namespace admis::test {

host::Registry& registry() {
  static host::Registry* r = [] {
    auto* reg = new host::Registry();
    reg->discover();
    return reg;
  }();
  return *r;
}

host::Runtime& runtime() {
  static host::Runtime* rt = [] {
    host::RunSettings s;
    s.quiet = true;
    return new host::Runtime(registry(), s);
  }();
  return *rt;
}

std::string parity_dir() {
  std::string dir;
  if (const char* env = std::getenv("ADMIS_PARITY_DIR")) dir = env;
  else dir = (fs::path(ADMIS_SOURCE_DIR) / ".." / "shared" / "parity").lexically_normal().string();
  if (!fs::is_directory(dir))
    throw Error(dir, "parity fixtures not found: put ../shared/parity beside the project or set ADMIS_PARITY_DIR");
  return dir;
}

std::string parity_file(const std::string& name) {
  const std::string path = (fs::path(parity_dir()) / name).string();
  if (!fs::exists(path)) throw Error(path, "parity fixture is missing");
  return path;
}

std::string golden_dir() { return (fs::path(ADMIS_SOURCE_DIR) / "tests" / "golden").string(); }

namespace {
std::vector<std::string>& temp_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}
void remove_temp_dirs() {
  for (const auto& d : temp_dirs()) {
    boost::system::error_code ec;
    fs::remove_all(d, ec);
  }
}
}  // namespace

std::string temp_dir(const std::string& tag) {
  static std::once_flag once;
  // The list must exist before the exit handler is registered, so it outlives it.
  std::call_once(once, [] {
    temp_dirs();
    std::atexit(remove_temp_dirs);
  });
  const fs::path dir = fs::temp_directory_path() / fs::unique_path("admis-" + tag + "-%%%%%%%%");
  fs::create_directories(dir);
  temp_dirs().push_back(dir.string());
  return dir.string();
}

::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance) {
  if (!actual.defined() || !expected.defined()) return ::testing::AssertionFailure() << "undefined tensor";
  if (actual.sizes() != expected.sizes())
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " vs expected " << expected.sizes();
  const double diff =
      (actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs().max().item<double>();
  if (diff <= tolerance) return ::testing::AssertionSuccess() << "max abs diff " << diff;
  return ::testing::AssertionFailure() << "max abs diff " << diff << " exceeds tolerance " << tolerance;
}

CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buffer{};
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string admis_exe() { return ADMIS_EXE; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace admis::test
