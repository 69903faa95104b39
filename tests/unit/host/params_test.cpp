// Schema validation: unknown keys, required keys, types, ranges, choices, coercions,
// path resolution and nested plugins; each error names the owner and the key.
#include "support/support.h"

using admis::Error;
using admis::ParamSpec;
using admis::Value;
using ::testing::HasSubstr;

namespace {

const std::vector<ParamSpec>& schema() {
  static const std::vector<ParamSpec> s = {
      ParamSpec::Int("num_layers", 50, "depth").range(18, 200),
      ParamSpec::Float("margin", 0.5, "additive angular margin").range(0, 1.5),
      ParamSpec::String("mode", "ir", "block type").one_of({"ir", "ir_se"}),
      ParamSpec::Path("weights", "", "weights file"),
      ParamSpec::IntList("channel_multipliers", {1, 2, 2}, "per level"),
      ParamSpec::Bool("easy_margin", false, "ArcFace easy margin"),
      ParamSpec::Int("classes", 0, "number of classes").required_value(),
  };
  return s;
}

std::vector<ParamSpec> schema_with_plugin() {
  auto s = schema();
  s.push_back(ParamSpec::Plugin("scheduler", "scheduler", "nested scheduler"));
  return s;
}

std::string error_of(const std::map<std::string, Value>& raw) {
  try {
    admis::test::registry().complete(schema(), "test/owner", raw, "/base");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST(Params, DefaultsFilledAndTypedAccess) {
  auto p = admis::test::registry().complete(schema(), "test/owner", {{"classes", Value(10)}, {"margin", Value(1)}}, "/base");
  EXPECT_EQ(p.get_int("num_layers"), 50);
  EXPECT_DOUBLE_EQ(p.get_float("margin"), 1.0);  // an int where a float is declared
  EXPECT_EQ(p.get_string("mode"), "ir");
  EXPECT_EQ(p.get_ints("channel_multipliers"), (std::vector<std::int64_t>{1, 2, 2}));
  EXPECT_FALSE(p.get_bool("easy_margin"));
  EXPECT_EQ(p.get_int("classes"), 10);
  EXPECT_THAT(std::string([&] {
                try {
                  p.get_string("num_layers");
                } catch (const Error& e) {
                  return std::string(e.what());
                }
                return std::string();
              }()),
              HasSubstr("test/owner: parameter 'num_layers' is not of type string"));
}

TEST(Params, UnknownKeySuggestsClosest) {
  EXPECT_THAT(error_of({{"classes", Value(1)}, {"margn", Value(0.3)}}),
              HasSubstr("test/owner: unknown parameter 'margn'; did you mean 'margin'?"));
}

TEST(Params, RequiredKeyMissing) {
  EXPECT_THAT(error_of({}), HasSubstr("parameter 'classes' (int) is required: number of classes"));
  try {
    admis::test::registry().complete(schema_with_plugin(), "o", {{"classes", Value(1)}});
    FAIL() << "a missing plugin role was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("parameter 'scheduler' (plugin) is required: nested scheduler"));
  }
}

TEST(Params, WrongTypeRangeAndChoices) {
  EXPECT_THAT(error_of({{"classes", Value("ten")}}), HasSubstr("parameter 'classes' must be int, got 'ten'"));
  EXPECT_THAT(error_of({{"classes", Value(1)}, {"num_layers", Value(7)}}),
              HasSubstr("parameter 'num_layers' = 7 is out of range [18, 200]"));
  EXPECT_THAT(error_of({{"classes", Value(1)}, {"mode", Value("ir-se")}}),
              HasSubstr("parameter 'mode' = 'ir-se' is not one of: ir, ir_se; did you mean 'ir_se'?"));
  EXPECT_THAT(error_of({{"classes", Value(1)}, {"margin", Value(2.5)}}), HasSubstr("out of range [0, 1.5]"));
  EXPECT_THAT(error_of({{"classes", Value(2.5)}}), HasSubstr("must be int, got '2.5'"));
}

TEST(Params, PathsResolveAgainstBase) {
  auto p = admis::test::registry().complete(schema(), "o", {{"classes", Value(1)}, {"weights", Value("w/a.pt")}}, "/base");
  EXPECT_EQ(p.get_path("weights"), "/base/w/a.pt");
  auto q = admis::test::registry().complete(schema(), "o", {{"classes", Value(1)}, {"weights", Value("/abs/a.pt")}}, "/base");
  EXPECT_EQ(q.get_path("weights"), "/abs/a.pt");
}

TEST(Params, NestedPluginValidatedRecursively) {
  auto nested = std::make_shared<admis::PluginSpec>();
  nested->name = "ddim-admis";
  nested->params["num_inference_steps"] = Value(25);
  auto p = admis::test::registry().complete(
      schema_with_plugin(), "o", {{"classes", Value(1)}, {"scheduler", Value(std::shared_ptr<const admis::PluginSpec>(nested))}});
  const auto& spec = p.get_plugin("scheduler");
  EXPECT_EQ(spec.kind, "scheduler");
  EXPECT_EQ(spec.params.at("num_inference_steps").as<std::int64_t>(), 25);
  EXPECT_FALSE(spec.params.at("eta").empty());  // defaults filled in the nested plugin too

  auto bad = std::make_shared<admis::PluginSpec>();
  bad->name = "ddim-admis";
  bad->params["num_inference_step"] = Value(25);
  std::string msg;
  try {
    admis::test::registry().complete(schema_with_plugin(), "o",
                                     {{"classes", Value(1)}, {"scheduler", Value(std::shared_ptr<const admis::PluginSpec>(bad))}});
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_THAT(msg, HasSubstr("scheduler/ddim-admis: unknown parameter 'num_inference_step'; did you mean 'num_inference_steps'?"));
}
