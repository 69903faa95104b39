// insightface .bin reader: the two parity files (Python 2 and Python 3 pickles) decode to
// the reference RGB pixels exactly; bad files are refused with the file and image named.
#include <gtest/gtest.h>

#include <boost/filesystem.hpp>

#include "admis/host/verification.h"
#include "admis/host/weights.h"
#include "eval_test_util.h"
#include "support/support.h"

using namespace admis;
using admis::test::error_of;
using admis::test::parity_file;
using ::testing::HasSubstr;

namespace {

void expect_reference_set(const std::string& file) {
  const auto expected = host::read_weights(parity_file("formats_expected.safetensors"));
  const host::VerificationSet set = host::read_verification_bin(parity_file(file));
  EXPECT_EQ(set.name, boost::filesystem::path(file).stem().string());
  const torch::Tensor& rgb = expected.at("bin_images_rgb");
  ASSERT_EQ(set.images.sizes(), rgb.sizes());
  ASSERT_EQ(set.images.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(torch::equal(set.images, rgb)) << file << ": decoded pixels differ from the OpenCV reference";
  const torch::Tensor issame = expected.at("bin_issame").to(torch::kBool);
  ASSERT_EQ(static_cast<std::int64_t>(set.issame.size()), issame.size(0));
  for (std::size_t i = 0; i < set.issame.size(); ++i)
    EXPECT_EQ(set.issame[i], issame[static_cast<std::int64_t>(i)].item<bool>()) << "pair " << i;
  EXPECT_EQ(set.pairs(), 4);
}

}  // namespace

TEST(VerificationBin, Python2Protocol2MatchesReference) { expect_reference_set("tiny_py2.bin"); }

TEST(VerificationBin, Python3Protocol4MatchesReference) { expect_reference_set("tiny_py3.bin"); }

TEST(VerificationBin, GeneratedProtocol2FileRoundTrips) {
  const std::string dir = test::temp_dir("bin");
  const std::string path = dir + "/gen.bin";
  test::write_face_bin(path, 6, 24);
  const auto set = host::read_verification_bin(path);
  EXPECT_EQ(set.name, "gen");
  EXPECT_EQ(set.images.sizes(), (std::vector<std::int64_t>{12, 24, 24, 3}));
  EXPECT_EQ(set.issame, (std::vector<bool>{true, false, true, false, true, false}));
  // BGR -> RGB: the decoded first image equals OpenCV's own decode with channels swapped.
  const std::string jpg = test::face_jpeg(0, 0, 24);
  cv::Mat bgr = cv::imdecode(cv::Mat(1, static_cast<int>(jpg.size()), CV_8UC1, const_cast<char*>(jpg.data())), cv::IMREAD_COLOR);
  EXPECT_EQ(set.images[0][5][7][0].item<int>(), bgr.at<cv::Vec3b>(5, 7)[2]);
  EXPECT_EQ(set.images[0][5][7][2].item<int>(), bgr.at<cv::Vec3b>(5, 7)[0]);
}

TEST(VerificationBin, ErrorsNameFileAndImage) {
  const std::string dir = test::temp_dir("badbin");
  const std::string good = test::face_jpeg(1, 0, 16);

  const std::string truncated = dir + "/truncated.bin";
  const std::string full = test::py2_bin_pickle({good, good}, {true});
  test::write_bytes(truncated, full.substr(0, full.size() / 2));
  std::string msg = error_of([&] { host::read_verification_bin(truncated); });
  EXPECT_THAT(msg, HasSubstr(truncated));

  const std::string wrong = dir + "/wrong.bin";
  test::write_bytes(wrong, std::string("\x80\x02]q\x00(\x88\x89" "e.", 10));
  msg = error_of([&] { host::read_verification_bin(wrong); });
  EXPECT_THAT(msg, HasSubstr(wrong));
  EXPECT_THAT(msg, HasSubstr("not an insightface verification set"));
  EXPECT_THAT(msg, HasSubstr("list of 2"));

  const std::string counts = dir + "/counts.bin";
  test::write_bytes(counts, test::py2_bin_pickle({good, good, good}, {true}));
  msg = error_of([&] { host::read_verification_bin(counts); });
  EXPECT_THAT(msg, HasSubstr(counts));
  EXPECT_THAT(msg, HasSubstr("3 images for 1 pairs"));

  const std::string undecodable = dir + "/undecodable.bin";
  test::write_bytes(undecodable, test::py2_bin_pickle({good, good, good, "not a jpeg"}, {true, false}));
  msg = error_of([&] { host::read_verification_bin(undecodable); });
  EXPECT_THAT(msg, HasSubstr(undecodable + ": image 3"));
  EXPECT_THAT(msg, HasSubstr("cannot decode"));

  const std::string sizes = dir + "/sizes.bin";
  test::write_bytes(sizes, test::py2_bin_pickle({good, test::face_jpeg(2, 0, 20)}, {true}));
  msg = error_of([&] { host::read_verification_bin(sizes); });
  EXPECT_THAT(msg, HasSubstr(sizes + ": image 1"));
  EXPECT_THAT(msg, HasSubstr("20x20 differs from image 0's 16x16"));

  msg = error_of([&] { host::read_verification_bin(dir + "/absent.bin"); });
  EXPECT_THAT(msg, HasSubstr(dir + "/absent.bin: no such file"));
}
