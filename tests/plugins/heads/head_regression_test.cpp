// Regression and contract tests of all six heads: golden outputs, input validation with
// its messages, the declared parameter schemas, and a full-size batch.
//
// Golden files: tests/golden/head-<name>.safetensors hold seeded inputs, the head's state
// and the logits of two successive calls. To re-record them after an intended change:
//   ADMIS_RECORD_GOLDEN=1 build/bin/test_heads --gtest_filter='HeadGolden*'
// and review the diff of the regenerated files.

#include <gmock/gmock.h>

#include <boost/filesystem.hpp>

#include <chrono>
#include <cstdlib>
#include <functional>

#include "heads_test_util.h"

namespace admis::test::heads {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kHeads = {"arcface",         "cosface",         "curricularface",
                                         "elastic-arcface", "elastic-cosface", "softmax"};

std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

// ---------------------------------------------------------------------------------------
// Golden regression

constexpr double kGoldenTolerance = 1e-4;  // same computation, possibly another BLAS build
constexpr std::uint64_t kInputSeed = 2024;
constexpr std::uint64_t kMarginSeed = 77;  // ElasticFace's margins are drawn after this seed

// Non-default settings, so that the golden also pins how each parameter is used.
ParamMap golden_params(const std::string& head) {
  ParamMap p{{"in_features", Value(32)}, {"out_features", Value(12)}};
  if (head == "arcface") p.insert({{"scale", Value(32.0)}, {"margin", Value(0.45)}});
  if (head == "cosface") p.insert({{"scale", Value(32.0)}, {"margin", Value(0.35)}});
  if (head == "curricularface") p.insert({{"scale", Value(32.0)}, {"margin", Value(0.45)}, {"alpha", Value(0.2)}});
  if (head == "elastic-arcface") p.insert({{"scale", Value(32.0)}, {"std", Value(0.05)}, {"plus", Value(false)}});
  if (head == "elastic-cosface") p.insert({{"scale", Value(32.0)}, {"std", Value(0.05)}, {"plus", Value(true)}});
  if (head == "softmax") p.insert({"bias", Value(true)});
  return p;
}

bool recording() {
  const char* v = std::getenv("ADMIS_RECORD_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

StateDict record_golden(const std::string& name) {
  torch::manual_seed(kInputSeed);
  auto head = make_head(name, golden_params(name));
  StateDict golden;
  for (auto [key, tensor] : host::module_state_dict(head->module())) {
    // Zero-initialised state (softmax's bias) would pin nothing; give it values.
    if (key == "bias") tensor = torch::randn_like(tensor);
    golden["state." + key] = tensor.detach().clone();
  }
  host::load_state_dict(head->module(),
                        [&] {
                          StateDict s;
                          for (const auto& [k, v] : golden) s[k.substr(6)] = v;
                          return s;
                        }(),
                        LoadOptions{}, "golden state");

  const torch::Tensor kernel = golden.at("state.kernel");
  torch::Tensor embeddings = 3.0 * torch::randn({8, kernel.size(0)});
  const torch::Tensor labels = torch::randint(0, kernel.size(1), {8}, torch::kLong);
  // Row 0 close to its class centre (cos = 0.95), row 1 nearly opposite (cos = -0.95,
  // past cos(pi - m) where ArcFace and CurricularFace take their fallback). Not exactly
  // +-1: there sqrt(1 - cos^2) and acos turn rounding of the matrix product into
  // visible differences, which would pin the BLAS rather than the head.
  for (std::int64_t row : {0, 1}) {
    const torch::Tensor centre = kernel.select(1, labels[row].item<std::int64_t>());
    const torch::Tensor unit_centre = centre / centre.norm();
    torch::Tensor across = torch::randn_like(unit_centre);
    across = across - across.dot(unit_centre) * unit_centre;
    const double cos_theta = row == 0 ? 0.95 : -0.95;
    embeddings[row] = 2.0 * (cos_theta * unit_centre + std::sqrt(1 - cos_theta * cos_theta) * across / across.norm());
  }
  golden["embeddings"] = embeddings;
  golden["labels"] = labels;

  torch::manual_seed(kMarginSeed);
  const HeadOutput first = head->forward(embeddings, labels);
  const HeadOutput second = head->forward(embeddings, labels);
  golden["logits_call1"] = first.logits.detach();
  golden["original_logits_call1"] = first.original_logits;
  golden["logits_call2"] = second.logits.detach();
  golden["original_logits_call2"] = second.original_logits;
  return golden;
}

class HeadGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(HeadGolden, ReproducesTheRecordedLogits) {
  const std::string name = GetParam();
  const std::string path = golden_dir() + "/head-" + name + ".safetensors";
  if (recording()) {
    host::write_safetensors(record_golden(name), path,
                            {{"head", name}, {"recorded_with", "ADMIS_RECORD_GOLDEN=1 test_heads"}});
    std::cout << "recorded " << path << std::endl;
  }
  if (!boost::filesystem::exists(path)) {
    FAIL() << "golden file " << path << " is missing; record it with ADMIS_RECORD_GOLDEN=1 test_heads "
           << "--gtest_filter='HeadGolden*'";
  }
  const StateDict golden = host::read_safetensors(path);

  auto head = make_head(name, golden_params(name));
  StateDict state;
  for (const auto& [key, tensor] : golden)
    if (key.rfind("state.", 0) == 0) state[key.substr(6)] = tensor;
  const LoadReport report = host::load_state_dict(head->module(), state, LoadOptions{}, path);
  EXPECT_TRUE(report.ok());

  torch::manual_seed(kMarginSeed);
  const HeadOutput first = head->forward(golden.at("embeddings"), golden.at("labels"));
  const HeadOutput second = head->forward(golden.at("embeddings"), golden.at("labels"));
  EXPECT_TRUE(all_close(first.logits, golden.at("logits_call1"), kGoldenTolerance));
  EXPECT_TRUE(all_close(first.original_logits, golden.at("original_logits_call1"), kGoldenTolerance));
  EXPECT_TRUE(all_close(second.logits, golden.at("logits_call2"), kGoldenTolerance));
  EXPECT_TRUE(all_close(second.original_logits, golden.at("original_logits_call2"), kGoldenTolerance));
}

INSTANTIATE_TEST_SUITE_P(Heads, HeadGolden, ::testing::ValuesIn(kHeads), test_name);

// ---------------------------------------------------------------------------------------
// Input validation: errors name the head and say what is wrong.

using admis::test::error_of;

class HeadInputs : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    head_ = make_head(GetParam(), {{"in_features", Value(64)}, {"out_features", Value(10)}});
    embeddings_ = torch::randn({16, 64});
    labels_ = torch::arange(16, torch::kLong) % 10;
  }
  std::string where() const { return "head/" + GetParam() + ": "; }
  std::shared_ptr<Head> head_;
  torch::Tensor embeddings_, labels_;
};

TEST_P(HeadInputs, LabelAtOrPastOutFeaturesIsRefused) {
  labels_[3] = 10;
  EXPECT_EQ(error_of([&] { head_->forward(embeddings_, labels_); }),
            where() + "label 10 at row 3 is outside [0, 10) (out_features = 10)");
}

TEST_P(HeadInputs, NegativeLabelIsRefused) {
  labels_[7] = -1;
  labels_[9] = -4;
  EXPECT_EQ(error_of([&] { head_->forward(embeddings_, labels_); }),
            where() + "label -1 at row 7 is outside [0, 10) (out_features = 10)");
}

TEST_P(HeadInputs, EmbeddingsOfAnotherWidthAreRefused) {
  EXPECT_EQ(error_of([&] { head_->forward(torch::randn({16, 32}), labels_); }),
            where() + "embeddings must have shape [N, 64] (in_features = 64), got [16, 32]");
  EXPECT_THAT(error_of([&] { head_->forward(torch::randn({64}), labels_); }),
              HasSubstr("(in_features = 64), got [64]"));
}

TEST_P(HeadInputs, LabelsMustBeOneIntegerPerRow) {
  EXPECT_EQ(error_of([&] { head_->forward(embeddings_, labels_.slice(0, 0, 15)); }),
            where() + "labels must have shape [16] (one class index per embedding), got [15]");
  EXPECT_EQ(error_of([&] { head_->forward(embeddings_, labels_.to(torch::kFloat)); }),
            where() + "labels must be integer class indices, got Float");
  EXPECT_EQ(error_of([&] { head_->forward(embeddings_.to(torch::kLong), labels_); }),
            where() + "embeddings must be floating point, got Long");
  EXPECT_EQ(error_of([&] { head_->forward(torch::randn({0, 64}), torch::zeros({0}, torch::kLong)); }),
            where() + "embeddings hold no rows (the batch is empty)");
}

TEST_P(HeadInputs, AcceptsInt32LabelsAndDoubleEmbeddings) {
  torch::manual_seed(1);
  const HeadOutput a = head_->forward(embeddings_, labels_);
  torch::manual_seed(1);
  const HeadOutput b = head_->forward(embeddings_.to(torch::kDouble), labels_.to(torch::kInt));
  EXPECT_EQ(b.logits.scalar_type(), torch::kFloat);
  if (GetParam() != "curricularface") {  // its running t moved between the two calls
    EXPECT_TRUE(all_close(a.logits, b.logits, 1e-4));
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, HeadInputs, ::testing::ValuesIn(kHeads), test_name);

// ---------------------------------------------------------------------------------------
// Schemas: one library, six heads, every parameter declared with a default and a doc.

const ParamSpec* find_param(const Factory& f, const std::string& name) {
  for (const auto& p : f.params)
    if (p.name == name) return &p;
  return nullptr;
}

TEST(HeadSchemas, AllSixComeFromTheAdmisHeadsLibrary) {
  for (const auto& name : kHeads) {
    const host::RegisteredPlugin& plugin = registry().get(Kind::Head, name);
    EXPECT_EQ(plugin.library->name, "admis_heads") << name;
    EXPECT_FALSE(plugin.factory->summary.empty()) << name;
    for (const auto& p : plugin.factory->params) {
      EXPECT_FALSE(p.doc.empty()) << name << "." << p.name;
      EXPECT_FALSE(p.required()) << name << "." << p.name << " should have a default";
    }
  }
}

TEST(HeadSchemas, ParametersAreNamedAsTheReferenceConstructors) {
  auto names = [](const std::string& head) {
    std::vector<std::string> out;
    for (const auto& p : registry().get(Kind::Head, head).factory->params) out.push_back(p.name);
    return out;
  };
  using ::testing::UnorderedElementsAre;
  EXPECT_THAT(names("arcface"), UnorderedElementsAre("in_features", "out_features", "scale", "margin", "easy_margin"));
  EXPECT_THAT(names("cosface"), UnorderedElementsAre("in_features", "out_features", "scale", "margin"));
  EXPECT_THAT(names("curricularface"),
              UnorderedElementsAre("in_features", "out_features", "scale", "margin", "alpha"));
  for (const std::string elastic : {"elastic-arcface", "elastic-cosface"})
    EXPECT_THAT(names(elastic),
                UnorderedElementsAre("in_features", "out_features", "scale", "margin", "std", "plus"));
  EXPECT_THAT(names("softmax"), UnorderedElementsAre("in_features", "out_features", "bias"));
}

TEST(HeadSchemas, DefaultsAreTheReferenceDefaults) {
  auto def = [](const std::string& head, const std::string& param) {
    const ParamSpec* p = find_param(*registry().get(Kind::Head, head).factory, param);
    if (p == nullptr) throw Error(head, "no parameter " + param);
    const Value& v = p->default_value;
    return v.holds<double>() ? v.as<double>() : v.holds<std::int64_t>() ? double(v.as<std::int64_t>()) : -1.0;
  };
  EXPECT_EQ(def("arcface", "scale"), 64.0);
  EXPECT_EQ(def("arcface", "margin"), 0.5);
  EXPECT_EQ(def("cosface", "margin"), 0.4);
  EXPECT_EQ(def("curricularface", "margin"), 0.5);
  EXPECT_EQ(def("curricularface", "alpha"), 0.1);
  EXPECT_EQ(def("elastic-arcface", "margin"), 0.5);
  EXPECT_EQ(def("elastic-cosface", "margin"), 0.35);
  EXPECT_EQ(def("elastic-arcface", "std"), 0.05);
  EXPECT_EQ(def("softmax", "in_features"), 512.0);
}

TEST(HeadSchemas, OutOfRangeSettingsAreRefusedBeforeConstruction) {
  EXPECT_THAT(error_of([] { make_head("cosface", {{"margin", Value(1.5)}}); }),
              HasSubstr("parameter 'margin' = 1.5 is out of range"));
  EXPECT_THAT(error_of([] { make_head("curricularface", {{"alpha", Value(2.0)}}); }), HasSubstr("'alpha'"));
  EXPECT_THAT(error_of([] { make_head("elastic-arcface", {{"std", Value(-0.1)}}); }), HasSubstr("'std'"));
  EXPECT_THAT(error_of([] { make_head("arcface", {{"out_features", Value(0)}}); }), HasSubstr("'out_features'"));
}

// ---------------------------------------------------------------------------------------
// A training-size batch: 64 embeddings of 512 against 10,000 classes.

class HeadAtScale : public ::testing::TestWithParam<std::string> {};

TEST_P(HeadAtScale, HandlesABatchOf64Against10000Classes) {
  torch::manual_seed(8);
  auto head = make_head(GetParam(), {{"in_features", Value(512)}, {"out_features", Value(10000)}});
  const torch::Tensor embeddings = torch::randn({64, 512});
  const torch::Tensor labels = torch::randint(0, 10000, {64}, torch::kLong);
  head->forward(embeddings, labels);  // warm-up
  const auto start = std::chrono::steady_clock::now();
  const HeadOutput out = head->forward(embeddings, labels);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::cout << GetParam() << ": [64,512] x 10000 classes in " << ms << " ms (" << torch::get_num_threads()
            << " threads)" << std::endl;
  ASSERT_EQ(out.logits.sizes(), torch::IntArrayRef({64, 10000}));
  ASSERT_EQ(out.original_logits.sizes(), torch::IntArrayRef({64, 10000}));
  EXPECT_TRUE(out.logits.isfinite().all().item<bool>());
  if (GetParam() != "softmax") {  // the margin heads' plain logits are scaled cosines
    EXPECT_LE(out.original_logits.abs().max().item<double>(), 64.0 + 1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, HeadAtScale, ::testing::ValuesIn(kHeads), test_name);

}  // namespace
}  // namespace admis::test::heads
