// Every bundled plugin library passes its kinds' conformance suites; a plugin that breaks
// the contract is caught with a message that says how.
#include <boost/filesystem.hpp>

#include <sstream>

#include "admis/host/conformance.h"
#include "support/support.h"

namespace fs = boost::filesystem;
using ::testing::HasSubstr;

TEST(Conformance, EveryBundledLibraryPasses) {
  auto& registry = admis::test::registry();
  ASSERT_FALSE(registry.libraries().empty());
  for (const auto& lib : registry.libraries()) {
    auto report = admis::host::check_plugins(registry, lib->path, admis::test::runtime());
    std::ostringstream text;
    admis::host::print_report(report, text);
    EXPECT_FALSE(report.failed()) << text.str();
    EXPECT_GT(report.passed_count(), 0u);
  }
}

TEST(Conformance, CatchesAContractBreach) {
  const std::string lib = (fs::path(ADMIS_TEST_PLUGIN_DIR) / "libnonconforming_head.so").string();
  auto report = admis::host::check_library(lib, {}, {});
  std::ostringstream text;
  admis::host::print_report(report, text);
  EXPECT_TRUE(report.failed());
  EXPECT_THAT(text.str(), HasSubstr("FAIL schema is well formed (parameter 'scale' has no doc line)"));
  EXPECT_THAT(text.str(), HasSubstr("FAIL head contract (logits has shape [3, 4], expected [4, 3])"));
  EXPECT_THAT(text.str(), HasSubstr("PASS unknown parameter is refused with its name"));

  auto r = admis::test::run_command(admis::test::admis_exe() + " check " + lib);
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("2 passed, 2 failed"));  // schema and contract fail
}
