// Flip test-time augmentation embeddings and the reports (table, JSON, Markdown, ROC PNG),
// with a test-local linear backbone.
#include <gtest/gtest.h>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "admis/host/verification.h"
#include "eval_test_util.h"
#include "support/support.h"

using namespace admis;
using admis::test::error_of;
using admis::test::read_text;
using ::testing::HasSubstr;
namespace fs = boost::filesystem;

TEST(VerificationEmbedding, FlipAugmentedNormalisedInBatches) {
  const std::int64_t size = 8, dim = 6, n = 7;
  test::LinearBackbone backbone(size, dim);
  backbone.module().train();
  torch::manual_seed(3);
  const torch::Tensor images = torch::randint(0, 256, {n, size, size, 3}, torch::kUInt8);

  // Independent expectation in float64: x = (img/255 - 0.5)/0.5 as NCHW, W x + b for x and
  // its horizontal mirror, summed and L2-normalised.
  const torch::Tensor x = (images.permute({0, 3, 1, 2}).to(torch::kFloat64) / 255 - 0.5) / 0.5;
  const torch::Tensor w = backbone.weight().detach().to(torch::kFloat64), b = backbone.bias().detach().to(torch::kFloat64);
  auto f = [&](const torch::Tensor& t) { return torch::matmul(t.flatten(1), w.t()) + b; };
  torch::Tensor expected = f(x) + f(torch::flip(x, {3}));
  expected = expected / expected.norm(2, 1, true);

  std::vector<std::pair<std::int64_t, std::int64_t>> progress;
  const torch::Tensor e = host::embed_with_flip(backbone, images, 3, [&](std::int64_t done, std::int64_t total) {
    progress.emplace_back(done, total);
  });
  ASSERT_EQ(e.sizes(), (std::vector<std::int64_t>{n, dim}));
  EXPECT_TRUE(test::all_close(e, expected, 1e-5));
  EXPECT_TRUE(test::all_close(e.norm(2, 1), torch::ones({n}, torch::kFloat64), 1e-12));
  // Without the flip the result would differ: the backbone is not mirror-symmetric.
  torch::Tensor plain = f(x);
  plain = plain / plain.norm(2, 1, true);
  EXPECT_GT((plain - expected).abs().max().item<double>(), 1e-2);
  // Batches of 3: 3 + 3 + 1 images, two forward passes each, eval mode, InferenceMode,
  // and the module's training flag restored afterwards.
  EXPECT_EQ(backbone.calls, 6);
  EXPECT_EQ(backbone.max_batch, 3);
  EXPECT_TRUE(backbone.all_eval);
  EXPECT_TRUE(backbone.all_inference);
  EXPECT_TRUE(backbone.module().is_training());
  EXPECT_EQ(progress, (std::vector<std::pair<std::int64_t, std::int64_t>>{{3, 7}, {6, 7}, {7, 7}}));
  // The batch size does not change the result.
  EXPECT_TRUE(test::all_close(host::embed_with_flip(backbone, images, 100), e, 1e-6));

  EXPECT_THAT(error_of([&] { host::embed_with_flip(backbone, images, 0); }), HasSubstr("batch size must be at least 1"));
  EXPECT_THAT(error_of([&] { host::embed_with_flip(backbone, images.to(torch::kFloat32), 4); }),
              HasSubstr("images must be [N,H,W,3] uint8"));
}

TEST(VerificationReports, EvaluateBackboneWritesJsonMarkdownAndRoc) {
  const std::string dir = test::temp_dir("evalreport");
  test::write_face_bin(dir + "/faces_a.bin", 20, 16);
  test::write_face_bin(dir + "/faces_b.bin", 30, 16);
  test::LinearBackbone backbone(16, 8);

  const auto bins = host::find_verification_sets(dir);
  ASSERT_EQ(bins.size(), 2u);
  host::EvaluationOptions options;
  options.batch_size = 16;
  options.json_path = dir + "/out/results.json";
  options.markdown_path = dir + "/out/results.md";
  options.roc_dir = dir + "/out/roc";
  options.title = "tiny";
  std::ostringstream log;
  const auto results = host::evaluate_backbone(backbone, bins, options, log);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_THAT(log.str(), HasSubstr("[1/2] faces_a: 20 pairs, 16x16 images"));
  EXPECT_THAT(log.str(), HasSubstr("embedded 40/40 images"));

  // The results equal the protocol run on the embeddings directly.
  const auto set = host::read_verification_bin(dir + "/faces_b.bin");
  const auto direct = host::evaluate_verification("faces_b", host::embed_with_flip(backbone, set.images, 7), set.issame);

  const auto json = nlohmann::json::parse(read_text(options.json_path));
  const auto& b = json.at("sets").at("faces_b");
  EXPECT_NEAR(b.at("accuracy").get<double>(), direct.roc.accuracy, 1e-12);
  EXPECT_NEAR(b.at("std").get<double>(), direct.roc.std, 1e-12);
  EXPECT_NEAR(b.at("tar_at_far_1e-3").get<double>(), direct.val.val, 1e-12);
  EXPECT_NEAR(b.at("best_threshold").get<double>(), host::numpy_mean(direct.roc.best_thresholds), 1e-12);
  EXPECT_EQ(b.at("pairs").get<int>(), 30);
  EXPECT_EQ(json.at("sets").at("faces_a").at("pairs").get<int>(), 20);
  EXPECT_NEAR(json.at("average_accuracy").get<double>(), (results[0].roc.accuracy + results[1].roc.accuracy) / 2, 1e-12);
  EXPECT_FALSE(fs::exists(options.json_path + ".tmp")) << "atomic write leaves no temporary file";

  const std::string md = read_text(options.markdown_path);
  EXPECT_THAT(md, HasSubstr("# tiny"));
  EXPECT_THAT(md, HasSubstr("| faces_a |"));
  EXPECT_THAT(md, HasSubstr("| average |"));

  for (const char* name : {"faces_a", "faces_b"}) {
    const std::string png = options.roc_dir + "/" + name + "_roc.png";
    ASSERT_TRUE(fs::exists(png)) << png;
    cv::Mat img = cv::imread(png, cv::IMREAD_COLOR);
    ASSERT_FALSE(img.empty()) << png;
    EXPECT_EQ(img.cols, 640);
    EXPECT_EQ(img.rows, 560);
    // The curve is drawn in its colour (B=180, G=90, R=20) somewhere in the plot.
    cv::Mat mask;
    cv::inRange(img, cv::Scalar(170, 80, 10), cv::Scalar(190, 100, 30), mask);
    EXPECT_GT(cv::countNonZero(mask), 100) << png;
  }

  const std::string table = host::results_table(results);
  EXPECT_THAT(table, HasSubstr("TAR@FAR=1e-3"));
  EXPECT_THAT(table, HasSubstr("faces_a"));
  EXPECT_THAT(table, HasSubstr("average"));
}

TEST(VerificationReports, FindSetsErrors) {
  const std::string dir = test::temp_dir("evalsets");
  EXPECT_THAT(error_of([&] { host::find_verification_sets(dir); }), HasSubstr(dir + ": no .bin verification sets found"));
  EXPECT_THAT(error_of([&] { host::find_verification_sets(dir + "/nope"); }), HasSubstr(dir + "/nope: no such folder"));
  test::write_face_bin(dir + "/lfw.bin", 10, 16);
  test::write_face_bin(dir + "/agedb_30.bin", 10, 16);
  EXPECT_EQ(host::find_verification_sets(dir, {"lfw"}), (std::vector<std::string>{dir + "/lfw.bin"}));
  EXPECT_THAT(error_of([&] { host::find_verification_sets(dir, {"lwf"}); }),
              HasSubstr("no verification set 'lwf' (lwf.bin); did you mean 'lfw'?"));
  test::LinearBackbone wrong_size(12, 4);
  host::EvaluationOptions options;
  std::ostringstream log;
  EXPECT_THAT(error_of([&] { host::evaluate_backbone(wrong_size, {dir + "/lfw.bin"}, options, log); }),
              HasSubstr("images are 16x16 but the backbone expects 12x12"));
}
