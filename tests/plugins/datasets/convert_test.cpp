// `admis convert` end to end through the executable.

#include "datasets_test_util.h"

namespace admis::test::datasets {
namespace {

TEST(ConvertCommand, TFRecordFixtureToRecordIOAndImageFolder) {
  const std::string dir = temp_dir("convert");
  const std::string source = fs::path(parity_file("Syn_tiny.index")).replace_extension("").string();
  auto run = run_command(admis_exe() + " convert --from tfrecord:" + source + " --to recordio:" + dir + "/rec/train --workers 2");
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_THAT(run.output, ::testing::HasSubstr("converted 6/6 images"));
  EXPECT_THAT(run.output, ::testing::HasSubstr("images/s"));
  EXPECT_THAT(run.output, ::testing::HasSubstr("ETA"));
  EXPECT_THAT(run.output, ::testing::HasSubstr("wrote 6 images of 3 identities"));

  run = run_command(admis_exe() + " convert --from recordio:" + dir + "/rec/train --to image-folder:" + dir + "/faces");
  ASSERT_EQ(run.status, 0) << run.output;
  auto original = open_reader("tfrecord", source);
  auto converted = open_reader("image-folder", dir + "/faces");
  ASSERT_EQ(converted->size(), 6);
  for (std::int64_t i = 0; i < 6; ++i) {
    const Sample a = original->read(i), b = converted->read(i);
    EXPECT_EQ(a.encoded, b.encoded) << i;  // the JPEGs travel unchanged
    EXPECT_EQ(a.label, b.label);
  }

  // The destination now exists: refused, then replaced with --overwrite.
  run = run_command(admis_exe() + " convert --from recordio:" + dir + "/rec/train --to image-folder:" + dir + "/faces");
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.output, ::testing::HasSubstr("refusing to overwrite"));
  run = run_command(admis_exe() + " convert --overwrite --from recordio:" + dir + "/rec/train --to image-folder:" + dir +
                    "/faces");
  EXPECT_EQ(run.status, 0) << run.output;
}

TEST(ConvertCommand, ReportsBadFormatsAndBrokenInputs) {
  const std::string dir = temp_dir("convert-bad");
  auto run = run_command(admis_exe() + " convert --from tfrecords:" + dir + "/x --to recordio:" + dir + "/y");
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.output, ::testing::HasSubstr("tfrecords"));
  EXPECT_THAT(run.output, ::testing::HasSubstr("tfrecord"));

  run = run_command(admis_exe() + " convert --from " + dir + " --to recordio:" + dir + "/y");
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.output, ::testing::HasSubstr("FORMAT:PATH"));

  fs::create_directories(dir + "/faces/a");
  put_bytes(dir + "/faces/a/broken.png", "not an image");
  run = run_command(admis_exe() + " convert --from image-folder:" + dir + "/faces --to tfrecord:" + dir + "/out/set");
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.output, ::testing::HasSubstr(dir + "/faces/a/broken.png"));
  EXPECT_FALSE(fs::exists(dir + "/out/set.index"));
  EXPECT_TRUE(fs::is_empty(dir + "/out")) << "temporary files left behind";
}

}  // namespace
}  // namespace admis::test::datasets
