// The insightface .bin writer (round trip through read_verification_bin, and Python's own
// pickle.load) and the `verification_pairs` stage (toy-faces held-out identities -> a .bin
// whose pairs alternate same/different, checked against the reader's own labels).
#include <gtest/gtest.h>

#include <boost/filesystem.hpp>

#include <fstream>
#include <map>
#include <set>

#include "admis/host/manifest.h"
#include "admis/host/verification.h"
#include "eval_test_util.h"
#include "support/support.h"

using namespace admis;
using admis::test::error_of;
using ::testing::HasSubstr;
namespace fs = boost::filesystem;

namespace {

std::string file_text(const std::string& path) { return test::read_text(path); }

// Byte strings that exercise both length encodings (< 256: SHORT_BINBYTES, else BINBYTES)
// and every byte value; Python rebuilds the same pattern to compare.
std::string pattern(std::size_t i) {
  const std::size_t length = 1 + (i * 37) % 600;
  std::string s(length, '\0');
  for (std::size_t j = 0; j < length; ++j) s[j] = static_cast<char>((i * 7 + j) % 256);
  return s;
}

TEST(VerificationBinWriter, RoundTripsThroughTheReader) {
  const std::string dir = test::temp_dir("bin_writer");
  std::vector<std::string> images;
  std::vector<bool> issame;
  for (int p = 0; p < 5; ++p) {
    images.push_back(test::face_jpeg(p, 0, 20));
    images.push_back(test::face_jpeg(p % 2 == 0 ? p : p + 50, 3, 20));
    issame.push_back(p % 2 == 0);
  }
  const std::string path = dir + "/written.bin";
  host::write_verification_bin(path, images, issame);
  const std::string bytes = file_text(path);
  EXPECT_EQ(bytes.substr(0, 2), std::string("\x80\x04", 2)) << "protocol 4, as pickle.HIGHEST_PROTOCOL wrote the sets";
  EXPECT_EQ(bytes.back(), '.');
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename().string(), "written.bin") << "a temporary file was left behind";

  const host::VerificationSet set = host::read_verification_bin(path);
  EXPECT_EQ(set.name, "written");
  EXPECT_EQ(set.issame, issame);
  ASSERT_EQ(set.images.sizes(), (std::vector<std::int64_t>{10, 20, 20, 3}));
  for (std::size_t i = 0; i < images.size(); ++i) {
    cv::Mat bgr = cv::imdecode(cv::Mat(1, static_cast<int>(images[i].size()), CV_8UC1, images[i].data()), cv::IMREAD_COLOR);
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    const torch::Tensor expected = torch::from_blob(rgb.data, {20, 20, 3}, torch::kUInt8);
    EXPECT_TRUE(torch::equal(set.images[static_cast<std::int64_t>(i)], expected)) << "image " << i;
  }
}

TEST(VerificationBinWriter, PythonPickleLoadsWhatItWrites) {
  const char* python = "/usr/bin/python3";
  if (!fs::exists(python)) GTEST_SKIP() << python << " is not installed";
  const std::string dir = test::temp_dir("bin_python");
  // 1100 pairs: more than one 1000-item APPENDS batch in both lists.
  std::vector<std::string> images;
  std::vector<bool> issame;
  for (std::size_t p = 0; p < 1100; ++p) {
    images.push_back(pattern(2 * p));
    images.push_back(pattern(2 * p + 1));
    issame.push_back(p % 3 != 1);
  }
  host::write_verification_bin(dir + "/set.bin", images, issame);
  std::ofstream(dir + "/check.py") << R"(import pickle, sys
with open(sys.argv[1], 'rb') as f:
    data = pickle.load(f, encoding='bytes')
assert type(data) is tuple and len(data) == 2, type(data)
bins, issame = data
assert type(bins) is list and type(issame) is list
assert all(type(b) is bytes for b in bins) and all(type(s) is bool for s in issame)
def pattern(i):
    return bytes((i * 7 + j) % 256 for j in range(1 + (i * 37) % 600))
assert len(bins) == 2200 and len(issame) == 1100, (len(bins), len(issame))
assert all(bins[i] == pattern(i) for i in range(len(bins))), 'bytes differ'
assert issame == [p % 3 != 1 for p in range(1100)], 'issame differs'
print('python loaded', len(bins), 'images', len(issame), 'pairs', sum(issame), 'same')
)";
  const auto result = test::run_command(std::string(python) + " " + dir + "/check.py " + dir + "/set.bin 2>&1");
  std::cout << result.output;
  ASSERT_EQ(result.status, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("python loaded 2200 images 1100 pairs 733 same"));
}

TEST(VerificationBinWriter, RefusesInconsistentSets) {
  const std::string dir = test::temp_dir("bin_bad");
  EXPECT_THAT(error_of([&] { host::write_verification_bin(dir + "/a.bin", {"x", "y", "z"}, {true}); }),
              HasSubstr("2 images per pair: got 3 images for 1 pairs"));
  EXPECT_THAT(error_of([&] { host::write_verification_bin(dir + "/b.bin", {}, {}); }), HasSubstr("without pairs"));
  EXPECT_THAT(error_of([&] { host::write_verification_bin(dir + "/c.bin", {"x", ""}, {false}); }),
              HasSubstr("image 1 is empty"));
  EXPECT_FALSE(fs::exists(dir + "/a.bin"));
}

// Runs a one-stage manifest and returns the error message, or "" on success.
std::string run_pairs_manifest(const std::string& dir, const std::string& stage_keys, host::Runtime& runtime) {
  const std::string path = dir + "/pairs.yaml";
  std::ofstream(path) << "version: 1\noutput_dir: runs\nstages:\n  - name: heldout\n    stage: verification_pairs\n" +
                             stage_keys;
  try {
    const host::Manifest m = host::resolve_manifest(host::load_manifest_yaml(path, {}), path, test::registry());
    host::run_manifest(m, runtime, /*force=*/true);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* kToyKeys = R"(    data: {plugin: toy-faces, params: {identities: 6, first_identity: 100000, images_per_identity: 4, image_size: 48}}
    pairs: 40
    set_name: toy
)";

TEST(VerificationPairsStage, ToyFacesHeldOutPairsAlternateAndMatchTheReadersLabels) {
  const std::string dir = test::temp_dir("pairs_stage");
  ASSERT_EQ(run_pairs_manifest(dir, kToyKeys, test::runtime()), "");
  const std::string bin = dir + "/runs/heldout/toy.bin";
  EXPECT_EQ(host::find_verification_sets(dir + "/runs/heldout"), std::vector<std::string>{bin})
      << "the evaluate stage finds the set in the stage folder";
  const host::VerificationSet set = host::read_verification_bin(bin);
  ASSERT_EQ(set.pairs(), 40);
  ASSERT_EQ(set.images.sizes(), (std::vector<std::int64_t>{80, 48, 48, 3}));
  for (std::int64_t p = 0; p < 40; ++p) EXPECT_EQ(set.issame[static_cast<std::size_t>(p)], p % 2 == 0) << "pair " << p;

  // Which toy-faces sample is each image? PNG is lossless, so the pixels match exactly.
  auto reader = test::create<DatasetReader>(Kind::DatasetReader, "toy-faces",
                                            {{"identities", 6}, {"first_identity", 100000}, {"images_per_identity", 4},
                                             {"image_size", 48}});
  std::vector<torch::Tensor> samples;
  for (std::int64_t i = 0; i < reader->size(); ++i) samples.push_back(reader->read(i).image);
  auto sample_of = [&](std::int64_t image) {
    for (std::size_t i = 0; i < samples.size(); ++i)
      if (torch::equal(samples[i], set.images[image])) return static_cast<std::int64_t>(i);
    ADD_FAILURE() << "image " << image << " is none of the reader's samples";
    return std::int64_t{-1};
  };
  std::map<std::int64_t, int> same_pairs_of;
  std::set<std::pair<std::int64_t, std::int64_t>> distinct;
  for (std::int64_t p = 0; p < 40; ++p) {
    const std::int64_t a = sample_of(2 * p), b = sample_of(2 * p + 1);
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    distinct.insert({std::min(a, b), std::max(a, b)});
    const std::int64_t la = reader->read(a).label, lb = reader->read(b).label;
    if (p % 2 == 0) {
      EXPECT_EQ(la, lb) << "same pair " << p;
      EXPECT_NE(a, b) << "same pair " << p << " must show two different images";
      ++same_pairs_of[la];
    } else {
      EXPECT_NE(la, lb) << "different pair " << p;
    }
  }
  EXPECT_EQ(distinct.size(), 40u) << "no pair is drawn twice";
  // Identities take turns: 20 same pairs over 6 identities is 3 or 4 each.
  ASSERT_EQ(same_pairs_of.size(), 6u);
  for (const auto& [label, count] : same_pairs_of) EXPECT_TRUE(count == 3 || count == 4) << label << ": " << count;

  // Deterministic from the run seed: the same seed rewrites the same bytes, another seed
  // draws other pairs.
  const std::string again = test::temp_dir("pairs_again");
  ASSERT_EQ(run_pairs_manifest(again, kToyKeys, test::runtime()), "");
  EXPECT_EQ(file_text(again + "/runs/heldout/toy.bin"), file_text(bin));
  host::RunSettings settings;
  settings.quiet = true;
  settings.seed = 1;
  host::Runtime seeded(test::registry(), settings);
  const std::string other = test::temp_dir("pairs_other");
  ASSERT_EQ(run_pairs_manifest(other, kToyKeys, seeded), "");
  const host::VerificationSet reseeded = host::read_verification_bin(other + "/runs/heldout/toy.bin");
  EXPECT_EQ(reseeded.issame, set.issame);
  EXPECT_FALSE(torch::equal(reseeded.images, set.images)) << "seed 1 drew the same pairs as seed 0";

  // image_format jpg stores JPEG files of the same pairs.
  const std::string jpg_dir = test::temp_dir("pairs_jpg");
  ASSERT_EQ(run_pairs_manifest(jpg_dir, std::string(kToyKeys) + "    image_format: jpg\n", test::runtime()), "");
  const std::string jpg_bytes = file_text(jpg_dir + "/runs/heldout/toy.bin");
  EXPECT_NE(jpg_bytes.find(std::string("\xFF\xD8\xFF", 3)), std::string::npos);
  EXPECT_EQ(jpg_bytes.find("\x89PNG"), std::string::npos);
  const host::VerificationSet jpg = host::read_verification_bin(jpg_dir + "/runs/heldout/toy.bin");
  ASSERT_EQ(jpg.images.sizes(), set.images.sizes());
  const double jpeg_error = (jpg.images.to(torch::kFloat32) - set.images.to(torch::kFloat32)).abs().mean().item<double>();
  std::cout << "jpg vs png pixels: mean |diff| " << jpeg_error << std::endl;
  EXPECT_LT(jpeg_error, 6.0);  // another image would differ by ~40
}

TEST(VerificationPairsStage, ErrorsNameTheProblem) {
  const std::string dir = test::temp_dir("pairs_errors");
  EXPECT_THAT(run_pairs_manifest(dir, "    data: {plugin: toy-faces}\n    pairs: 41\n", test::runtime()),
              HasSubstr("pairs must be even"));
  EXPECT_THAT(run_pairs_manifest(dir, "    data: {plugin: toy-faces, params: {identities: 1}}\n    pairs: 4\n",
                                 test::runtime()),
              HasSubstr("has 1 identity; different-identity pairs need at least 2"));
  EXPECT_THAT(run_pairs_manifest(dir,
                                 "    data: {plugin: toy-faces, params: {identities: 3, images_per_identity: 1}}\n"
                                 "    pairs: 4\n",
                                 test::runtime()),
              HasSubstr("identity '00000' of dataset-reader/toy-faces has 1 image"));
  EXPECT_THAT(run_pairs_manifest(dir, "    data: {plugin: toy-faces}\n    data_path: faces\n    pairs: 4\n",
                                 test::runtime()),
              HasSubstr("toy-faces renders its images and reads no data"));
  EXPECT_THAT(run_pairs_manifest(dir, "    data: {plugin: toy-faces}\n    set_name: a/b\n    pairs: 4\n", test::runtime()),
              HasSubstr("set_name must be a plain file name"));
  EXPECT_THAT(run_pairs_manifest(dir, "    data: {plugin: image-folder}\n    pairs: 4\n", test::runtime()),
              HasSubstr("no data path given"));
}

}  // namespace
