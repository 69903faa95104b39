// Plugin loading: discovery, the refusals (each message names the file and what to do),
// and lifetime (objects keep their library loaded).
#include <boost/filesystem.hpp>

#include <fstream>

#include "support/support.h"

namespace fs = boost::filesystem;
using admis::Error;
using admis::Kind;
using admis::host::Registry;
using ::testing::HasSubstr;

namespace {

std::string test_plugin(const std::string& name) {
  return (fs::path(ADMIS_TEST_PLUGIN_DIR) / ("lib" + name + ".so")).string();
}

std::string refusal(Registry& r, const std::string& path) {
  try {
    r.load_library(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no refusal)";
}

}  // namespace

TEST(Registry, DiscoversBundledPlugins) {
  auto& r = admis::test::registry();
  EXPECT_NE(r.find(Kind::Head, "arcface"), nullptr);
  EXPECT_NE(r.find(Kind::Scheduler, "ddim-admis"), nullptr);
  EXPECT_GE(r.libraries().size(), 2u);
  for (const auto* p : r.plugins()) {
    EXPECT_FALSE(p->factory->summary.empty()) << p->factory->name;
    EXPECT_EQ(p->library->abi_major, ADMIS_ABI_MAJOR);
  }
}

TEST(Registry, RefusesAnotherAbiMajor) {
  Registry r;
  const std::string path = test_plugin("refuse_abi_major");
  const std::string msg = refusal(r, path);
  EXPECT_THAT(msg, HasSubstr(path));
  // The fixture declares major + 98.
  EXPECT_THAT(msg, HasSubstr("SDK ABI " + std::to_string(ADMIS_ABI_MAJOR + 98) + ".0"));
  EXPECT_THAT(msg, HasSubstr("this host speaks ABI " + std::to_string(ADMIS_ABI_MAJOR) + "." +
                                 std::to_string(ADMIS_ABI_MINOR)));
  EXPECT_THAT(msg, HasSubstr("rebuild the plugin"));
  EXPECT_TRUE(r.plugins().empty());
  EXPECT_TRUE(r.libraries().empty());
}

TEST(Registry, RefusesAnotherLibTorch) {
  Registry r;
  const std::string path = test_plugin("refuse_torch_version");
  const std::string msg = refusal(r, path);
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("built against LibTorch 0.4.1"));
  EXPECT_THAT(msg, HasSubstr("this host uses LibTorch " ADMIS_TORCH_VERSION_STRING));
}

TEST(Registry, RefusesLibraryWithoutEntryPoint) {
  Registry r;
  const std::string path = test_plugin("no_entry_point");
  const std::string msg = refusal(r, path);
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("does not export the entry point 'admis_plugin_entry'"));
}

TEST(Registry, RefusesFileThatIsNotALibrary) {
  Registry r;
  const std::string dir = admis::test::temp_dir("notlib");
  const std::string path = dir + "/libnotes.so";
  std::ofstream(path) << "these are notes, not a library\n";
  const std::string msg = refusal(r, path);
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("not a shared library"));
  // Discovery of a folder holding it fails the same way, naming the file.
  Registry r2;
  try {
    r2.discover({dir});
    FAIL() << "discovery accepted a non-library";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("libnotes.so"));
  }
}

TEST(Registry, RefusesDuplicatePluginNamingBothLibraries) {
  Registry r;
  const std::string a = test_plugin("duplicate_a"), b = test_plugin("duplicate_b");
  r.load_library(a);
  const std::string msg = refusal(r, b);
  EXPECT_THAT(msg, HasSubstr(b));
  EXPECT_THAT(msg, HasSubstr("augmenter/mirror-duplicate is already provided by " + a));
  EXPECT_EQ(r.libraries().size(), 1u);
}

TEST(Registry, MissingPluginPathIsAnError) {
  Registry r;
  try {
    r.discover({"/nonexistent/admis-plugins"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("/nonexistent/admis-plugins: plugin path does not exist"));
  }
}

TEST(Registry, UnknownPluginListsAvailableAndSuggests) {
  try {
    admis::test::registry().get(Kind::Head, "arcfce");
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_THAT(msg, HasSubstr("head/arcfce: no such plugin; did you mean 'arcface'?"));
    EXPECT_THAT(msg, HasSubstr("cosface"));
  }
}

TEST(Registry, CreatedObjectKeepsItsLibraryLoaded) {
  std::shared_ptr<admis::Plugin> object;
  {
    Registry r;
    r.load_library(test_plugin("duplicate_a"));
    admis::host::Runtime rt(r, {});
    object = r.create(Kind::Augmenter, "mirror-duplicate", {}, rt);
  }  // the registry (and its handle on the library) is gone; the object's deleter holds it
  auto& aug = dynamic_cast<admis::Augmenter&>(*object);
  auto image = torch::arange(6, torch::kUInt8).view({1, 2, 3});
  auto gen = at::detail::createCPUGenerator(0);
  EXPECT_TRUE(torch::equal(aug.augment_image(image, gen), image.flip({1})));
  object.reset();
}

TEST(Registry, ExceptionsFromAPluginOutliveItsRegistry) {
  // An admis::Error thrown by plugin code is often caught only after the command's
  // registry is gone; the plugin library must still be there to destroy it.
  std::exception_ptr error;
  {
    Registry r;
    r.load_library(test_plugin("duplicate_a"));
    admis::host::Runtime rt(r, {});
    auto object = r.create(Kind::Augmenter, "mirror-duplicate", {}, rt);
    admis::IdentitySamples identity;
    try {
      dynamic_cast<admis::Augmenter&>(*object).augment_identity(identity);
    } catch (...) {
      error = std::current_exception();
    }
  }
  ASSERT_TRUE(error);
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("augmenter/mirror-duplicate: works on single images only"));
  }
  error = nullptr;  // destroyed here, after the registry
}

TEST(Registry, ParseKindSuggests) {
  EXPECT_EQ(admis::host::parse_kind("context-source"), Kind::ContextSource);
  try {
    admis::host::parse_kind("backbon");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("did you mean 'backbone'?"));
  }
}
