// The quickstart manifest (configs/quickstart.yaml) at its smoke scale, through `admis` as
// the README runs it: every stage of the miniature ADMIS pipeline runs (toy faces, held-out
// pairs, recognizer, conditional and unconditional diffusion models, ddpm-faces contexts,
// Gaussian and ADMIS sampling, three recognizers, three evaluations, the report); the
// report holds the three rows, their figures and the time per stage; a second run keeps
// every finished stage.
#include <filesystem>
#include <fstream>
#include <regex>

#include "support/support.h"

using namespace admis;
namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST(Quickstart, SmokeScaleRunsEveryStageAndWritesTheReport) {
  const std::string out = test::temp_dir("quickstart_smoke") + "/run";
  const std::string command = test::admis_exe() + " run " + std::string(ADMIS_SOURCE_DIR) +
                              "/configs/quickstart.yaml --set scale=smoke --set output_dir=" + out;
  auto r = test::run_command(command);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[13/13] stage 'report' (report) done"));

  const std::string report = read_text(fs::path(out) / "report" / "report.md");
  EXPECT_THAT(report, HasSubstr("| Backbone | Head | Dataset | Id | toy_pairs | Average |"));
  // One row per method, each with an accuracy in [0, 100].
  for (const char* label : {"Toy real faces", "IDiff-Face (Gaussian contexts)", "ADMIS (ddpm-faces contexts)"}) {
    const std::string escaped = std::regex_replace(std::string(label), std::regex(R"([()])"), R"(\$&)");
    const std::regex row("\\| " + escaped + R"( \| 8 \| ([0-9.]+) \| ([0-9.]+) \|)");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(report, m, row)) << label << " row missing in:\n" << report;
    const double accuracy = std::stod(m[1].str());
    EXPECT_GE(accuracy, 0.0);
    EXPECT_LE(accuracy, 100.0);
  }
  EXPECT_THAT(report, HasSubstr("Smoke scale"));
  EXPECT_THAT(report, HasSubstr("| total (before this report) |"));
  for (const char* figure : {"recognition_loss.png", "generator_loss.png", "roc_toy_pairs.png", "samples_syn_gaussian.png",
                             "samples_syn_admis.png", "context_faces.png"})
    EXPECT_TRUE(fs::exists(fs::path(out) / "report" / "figures" / figure)) << figure;
  EXPECT_TRUE(fs::exists(fs::path(out) / "report" / "overview.png"));
  EXPECT_THAT(read_text(fs::path(out) / "report" / "report.html"), HasSubstr("<img src=\"figures/roc_toy_pairs.png\""));
  // The synthetic sets were written as TFRecord, the ADMIS one oversampled (4 + 3 per identity).
  EXPECT_TRUE(fs::exists(fs::path(out) / "data" / "Syn_gaussian.index"));
  std::ifstream index(fs::path(out) / "data" / "Syn_admis.index");
  int lines = 0;
  for (std::string line; std::getline(index, line);) ++lines;
  EXPECT_EQ(lines, 8 * (4 + 3));

  // Running again keeps every stage.
  r = test::run_command(command);
  ASSERT_EQ(r.status, 0) << r.output;
  std::size_t kept = 0;
  for (std::size_t at = r.output.find("already done, kept"); at != std::string::npos;
       at = r.output.find("already done, kept", at + 1))
    ++kept;
  EXPECT_EQ(kept, 13u) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr(") done in")));
}
