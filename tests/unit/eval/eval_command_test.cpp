// `admis eval` and the `evaluate` stage end to end, through the built executable, on a
// generated 112 px .bin with the bundled TFace IR-18 and its parity weights.
#include <gtest/gtest.h>

#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "eval_test_util.h"
#include "support/support.h"

using namespace admis;
using admis::test::admis_exe;
using admis::test::run_command;
using admis::test::read_text;
using ::testing::HasSubstr;
namespace fs = boost::filesystem;

TEST(EvalCommand, EvaluatesEveryBinInTheFolder) {
  ASSERT_NE(test::registry().find(Kind::Backbone, "ir"), nullptr) << "the bundled backbone/ir plugin is not built";
  const std::string dir = test::temp_dir("evalcli");
  fs::create_directories(dir + "/data");
  test::write_face_bin(dir + "/data/lfw.bin", 20, 112);
  test::write_face_bin(dir + "/data/calfw.bin", 20, 112);
  const std::string cmd = fmt::format(
      "{} eval --backbone ir --set num_layers=18 --weights {} --data {}/data --json {}/out/results.json --roc-dir "
      "{}/out/roc --batch-size 16 --threads 2",
      admis_exe(), test::parity_file("tface_ir_18.pt"), dir, dir, dir);
  const auto r = run_command(cmd);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[1/2] calfw: 20 pairs, 112x112 images"));
  EXPECT_THAT(r.output, HasSubstr("embedded 40/40 images"));
  EXPECT_THAT(r.output, HasSubstr("TAR@FAR=1e-3"));
  EXPECT_THAT(r.output, HasSubstr("average"));
  const auto json = nlohmann::json::parse(read_text(dir + "/out/results.json"));
  for (const char* set : {"lfw", "calfw"}) {
    const auto& s = json.at("sets").at(set);
    for (const char* key : {"accuracy", "std", "best_threshold", "tar_at_far_1e-3", "pairs"})
      EXPECT_TRUE(s.contains(key)) << set << " lacks " << key;
    const double accuracy = s.at("accuracy").get<double>();
    EXPECT_GE(accuracy, 0.0);
    EXPECT_LE(accuracy, 1.0);
    EXPECT_TRUE(fs::exists(fmt::format("{}/out/roc/{}_roc.png", dir, set)));
  }
  EXPECT_EQ(json.at("sets").at("lfw").at("pairs").get<int>(), 20);
}

TEST(EvalCommand, EvaluateStageWritesResultsIntoItsFolder) {
  ASSERT_NE(test::registry().find(Kind::Backbone, "ir"), nullptr) << "the bundled backbone/ir plugin is not built";
  const std::string dir = test::temp_dir("evalstage");
  fs::create_directories(dir + "/data");
  test::write_face_bin(dir + "/data/agedb_30.bin", 20, 112);
  test::write_face_bin(dir + "/data/other.bin", 10, 112);
  std::ofstream(dir + "/m.yaml") << fmt::format(
      "version: 1\noutput_dir: runs\nstages:\n  - name: eval-ir18\n    stage: evaluate\n"
      "    backbone: {{plugin: ir, params: {{num_layers: 18}}, weights: {}}}\n"
      "    data: data\n    batch_size: 8\n    sets: [agedb_30]\n",
      test::parity_file("tface_ir_18.pt"));
  const auto r = run_command(fmt::format("{} run {}/m.yaml --threads 2", admis_exe(), dir));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string out = dir + "/runs/eval-ir18";
  const auto json = nlohmann::json::parse(read_text(out + "/results.json"));
  EXPECT_TRUE(json.at("sets").contains("agedb_30"));
  EXPECT_FALSE(json.at("sets").contains("other")) << "only the listed sets";
  EXPECT_THAT(read_text(out + "/results.md"), HasSubstr("| agedb_30 |"));
  EXPECT_TRUE(fs::exists(out + "/agedb_30_roc.png"));
}

TEST(EvalCommand, RefusesBadInputsWithReasons) {
  const std::string dir = test::temp_dir("evalbad");
  fs::create_directories(dir + "/empty");
  const std::string weights = dir + "/w.safetensors";
  std::ofstream(weights) << "x";

  auto r = run_command(fmt::format("{} eval --backbone ir --weights {} --data {}/empty", admis_exe(), weights, dir));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr(dir + "/empty: no .bin verification sets found"));

  fs::create_directories(dir + "/data");
  test::write_face_bin(dir + "/data/lfw.bin", 10, 16);
  r = run_command(fmt::format("{} eval --backbone ir --weights {}/missing.pt --data {}/data", admis_exe(), dir, dir));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr(dir + "/missing.pt: no such weights file"));

  r = run_command(fmt::format("{} eval --backbone ir --data {}/data", admis_exe(), dir));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("--weights"));

  r = run_command(fmt::format("{} eval --backbone ir --weights {} --data {}/data --sets lwf", admis_exe(), weights, dir));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("did you mean 'lfw'?"));

  r = run_command(fmt::format("{} eval --backbone no-such-net --weights {} --data {}/data", admis_exe(), weights, dir));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("no-such-net"));

  r = run_command(fmt::format("{} eval --backbone ir --weights {} --data {}/data --batch-size 0", admis_exe(), weights, dir));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("--batch-size must be at least 1, got 0"));

  r = run_command(admis_exe() + " eval --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("usage: admis eval --backbone NAME"));
}
