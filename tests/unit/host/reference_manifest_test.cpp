// configs/admis-reference.yaml and configs/idiff-face-baseline.yaml through `admis
// validate`: without the released files every missing one is listed with where it comes
// from and the exit status is non-zero; with stand-in files in their places (real
// torch.save zips and an insightface .bin) both manifests validate; a file that is not
// what its name says (an HTML page saved by a download link) is named as such.

#include <boost/filesystem.hpp>

#include <fstream>

#include "admis/host/weights.h"
#include "support/support.h"

namespace fs = boost::filesystem;
using admis::test::admis_exe;
using admis::test::run_command;
using ::testing::HasSubstr;

namespace {

// A copy of configs/<name> in <dir>/configs, so that its ../released/ is <dir>/released.
std::string copy_manifest(const std::string& dir, const std::string& name) {
  fs::create_directories(dir + "/configs");
  const std::string to = dir + "/configs/" + name;
  fs::copy_file(std::string(ADMIS_SOURCE_DIR) + "/configs/" + name, to, fs::copy_options::overwrite_existing);
  return to;
}

void stand_in_checkpoint(const std::string& path) {
  fs::create_directories(fs::path(path).parent_path());
  admis::host::write_state_dict_torch_save(admis::StateDict{{"weight", torch::zeros({2, 3})}}, path);
}

void stand_in_released_files(const std::string& dir) {
  const std::string released = dir + "/released";
  for (const char* f : {"ADMIS_FRCSyn_ckpt/ema_averaged_model_200000.ckpt", "autoencoder/first_stage_encoder_state_dict.pt",
                        "autoencoder/first_stage_decoder_state_dict.pt", "ffhq_10m.pt",
                        "elasticface_fr/295672backbone.pth"})
    stand_in_checkpoint(released + "/" + f);
  fs::create_directories(released + "/eval");
  for (const char* set : {"lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"})
    fs::copy_file(admis::test::parity_file("tiny_py3.bin"), released + "/eval/" + set + ".bin",
                  fs::copy_options::overwrite_existing);
}

TEST(ReferenceManifest, ValidateListsEveryMissingReleasedFileWithItsOrigin) {
  const std::string dir = admis::test::temp_dir("reference-missing");
  const auto r = run_command(admis_exe() + " validate " + copy_manifest(dir, "admis-reference.yaml"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("10 of the 10 required files are missing or unusable"));
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"released/ADMIS_FRCSyn_ckpt/ema_averaged_model_200000.ckpt (missing",
       "https://drive.google.com/file/d/1r8b-qlkZAkJeUQ8lPXzq7rTUjsMAuwZs"},
      {"released/autoencoder/first_stage_encoder_state_dict.pt (missing", "1jEgr60OAR6hjbaF651723IBYG_DF0kGf"},
      {"released/autoencoder/first_stage_decoder_state_dict.pt (missing", "1jEgr60OAR6hjbaF651723IBYG_DF0kGf"},
      {"released/ffhq_10m.pt (missing", "jychoi118/ilvr_adm"},
      {"released/elasticface_fr/295672backbone.pth (missing", "fdbtrs/ElasticFace"},
      {"released/eval/lfw.bin (missing", "insightface"},
      {"released/eval/cfp_fp.bin (missing", "as lfw.bin"},
      {"released/eval/cplfw.bin (missing", "as lfw.bin"},
      {"released/eval/agedb_30.bin (missing", "as lfw.bin"},
      {"released/eval/calfw.bin (missing", "as lfw.bin"}};
  for (const auto& [file, origin] : expected) {
    const auto at = r.output.find(file);
    ASSERT_NE(at, std::string::npos) << file << " not listed in:\n" << r.output;
    // The origin is on the entry's "from:" line, right after it.
    const auto from = r.output.find("from: ", at);
    ASSERT_NE(from, std::string::npos);
    EXPECT_THAT(r.output.substr(from, r.output.find('\n', from) - from), HasSubstr(origin)) << file;
  }
  EXPECT_THAT(r.output, HasSubstr("relative to the manifest's folder"));

  // `run` refuses before any stage starts.
  const auto run = run_command(admis_exe() + " run " + dir + "/configs/admis-reference.yaml");
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.output, HasSubstr("10 of the 10 required files are missing"));
  EXPECT_FALSE(fs::exists(dir + "/runs"));
}

TEST(ReferenceManifest, BothManifestsValidateWithStandInFiles) {
  const std::string dir = admis::test::temp_dir("reference-present");
  stand_in_released_files(dir);
  for (const auto& [name, stages] : {std::pair<const char*, const char*>{"admis-reference.yaml", "valid (4 stages"},
                                     {"idiff-face-baseline.yaml", "valid (3 stages"}}) {
    const auto r = run_command(admis_exe() + " validate " + copy_manifest(dir, name));
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr(stages));
  }
  // The Gaussian baseline needs neither the FFHQ model nor ElasticFace.
  fs::remove(dir + "/released/ffhq_10m.pt");
  fs::remove(dir + "/released/elasticface_fr/295672backbone.pth");
  EXPECT_EQ(run_command(admis_exe() + " validate " + dir + "/configs/idiff-face-baseline.yaml").status, 0);
  const auto r = run_command(admis_exe() + " validate " + dir + "/configs/admis-reference.yaml");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("2 of the 10 required files are missing"));
  // Sampling from ADMIS's shipped context database skips the context_database stage, and
  // with it the two files only that stage uses.
  const auto shipped = run_command(admis_exe() + " validate " + dir +
                                   "/configs/admis-reference.yaml --stages syn_10k,ir50_arcface,verification");
  EXPECT_EQ(shipped.status, 0) << shipped.output;
  const auto contexts_only =
      run_command(admis_exe() + " validate " + dir + "/configs/admis-reference.yaml --stages context_database");
  EXPECT_EQ(contexts_only.status, 1);
  EXPECT_THAT(contexts_only.output, HasSubstr("2 of the 2 required files are missing"));
  EXPECT_THAT(contexts_only.output, HasSubstr("ffhq_10m.pt (missing"));
  const auto typo = run_command(admis_exe() + " validate " + dir + "/configs/admis-reference.yaml --stages syn_1k");
  EXPECT_EQ(typo.status, 1);
  EXPECT_THAT(typo.output, HasSubstr("--stages names 'syn_1k', which is not a stage of this manifest; did you mean "
                                     "'syn_10k'?"));
}

TEST(ReferenceManifest, FilesThatAreNotWhatTheirNameSaysAreNamed) {
  const std::string dir = admis::test::temp_dir("reference-wrong");
  stand_in_released_files(dir);
  std::ofstream(dir + "/released/ffhq_10m.pt", std::ios::trunc) << "<!DOCTYPE html><html>Google Drive - quota</html>";
  std::ofstream(dir + "/released/eval/lfw.bin", std::ios::trunc) << "PK not a pickle";
  std::ofstream(dir + "/released/autoencoder/first_stage_decoder_state_dict.pt", std::ios::trunc);
  const auto r = run_command(admis_exe() + " validate " + copy_manifest(dir, "admis-reference.yaml"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("3 of the 10 required files are missing or unusable"));
  EXPECT_THAT(r.output, HasSubstr("ffhq_10m.pt (an HTML page, not the file"));
  EXPECT_THAT(r.output, HasSubstr("lfw.bin (not a pickled insightface .bin set"));
  EXPECT_THAT(r.output, HasSubstr("first_stage_decoder_state_dict.pt (an empty file"));
}

TEST(ReferenceManifest, RequiredFilesEntriesAreChecked) {
  const std::string dir = admis::test::temp_dir("reference-schema");
  const std::string manifest = dir + "/m.yaml";
  std::ofstream(manifest) << "version: 1\nrequired_files:\n  - path: a.pt\n    form: typo\nstages:\n"
                             "  - {name: s, stage: schedule, scheduler: {plugin: ddpm}}\n";
  auto r = run_command(admis_exe() + " validate " + manifest);
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("m.yaml:4: unknown key 'form' in a required_files entry; keys are: path, from"));
  std::ofstream(manifest, std::ios::trunc) << "version: 1\nrequired_files: a.pt\nstages:\n"
                                              "  - {name: s, stage: schedule, scheduler: {plugin: ddpm}}\n";
  r = run_command(admis_exe() + " validate " + manifest);
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("'required_files' must be a list of {path: ..., from: ...} entries"));
}

}  // namespace
