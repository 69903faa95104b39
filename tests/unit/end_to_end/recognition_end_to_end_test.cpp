// The recognition half end to end, through the `admis` executable as a user runs it: a small
// labelled image set -> `admis convert` to TFace TFRecord -> `admis run` of a manifest that
// trains MobileFaceNet + ArcFace on it and evaluates the result on a verification .bin made
// from identities held out of training. Chance is 50%; the test requires far better.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "support/support.h"
#include "unit/eval/eval_test_util.h"

using namespace admis;
namespace fs = std::filesystem;

namespace {

// A procedural "face" family. An identity is a parameter vector (background and blob
// colours, blob position and size, stripe angle and period); each image of it varies the
// nuisances (shift, brightness, pixel noise). Held-out identities come from the same family,
// so what the network learns about the parameters transfers to them.
struct Identity {
  cv::Scalar background, blob;
  double cx, cy, radius, angle, period;
};

Identity identity(int id) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + static_cast<std::uint64_t>(id));
  auto u = [&] { return torch::rand({1}, gen).item<double>(); };
  Identity p;
  p.background = cv::Scalar(40 + 180 * u(), 40 + 180 * u(), 40 + 180 * u());
  p.blob = cv::Scalar(255 * u(), 255 * u(), 255 * u());
  p.cx = 30 + 52 * u();
  p.cy = 30 + 52 * u();
  p.radius = 12 + 14 * u();
  p.angle = M_PI * u();
  p.period = 10 + 16 * u();
  return p;
}

cv::Mat render(int id, int variant) {
  const Identity p = identity(id);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5000000 + 1000 * static_cast<std::uint64_t>(id) + variant);
  auto u = [&] { return torch::rand({1}, gen).item<double>(); };
  const double dx = 10 * u() - 5, dy = 10 * u() - 5, gain = 0.8 + 0.4 * u();
  cv::Mat img(112, 112, CV_8UC3, p.background);
  for (int y = 0; y < 112; ++y)
    for (int x = 0; x < 112; ++x) {
      const double s = std::cos(((x - dx) * std::cos(p.angle) + (y - dy) * std::sin(p.angle)) / p.period * 2 * M_PI);
      if (s > 0.6) img.at<cv::Vec3b>(y, x) = cv::Vec3b(255 - img.at<cv::Vec3b>(y, x)[0], 200, 60);
    }
  cv::circle(img, cv::Point(static_cast<int>(p.cx + dx), static_cast<int>(p.cy + dy)), static_cast<int>(p.radius), p.blob,
             -1, cv::LINE_AA);
  img.convertTo(img, CV_8UC3, gain);
  cv::Mat noise(112, 112, CV_8UC3);
  cv::randn(noise, cv::Scalar::all(0), cv::Scalar::all(8));
  cv::Mat noisy;
  cv::add(img, noise, noisy, cv::noArray(), CV_8UC3);
  return noisy;
}

std::string jpeg(const cv::Mat& img) {
  std::vector<unsigned char> bytes;
  cv::imencode(".jpg", img, bytes, {cv::IMWRITE_JPEG_QUALITY, 92});
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace

TEST(RecognitionEndToEnd, TfrecordTrainEvaluateBeatsChanceOnHeldOutIdentities) {
  const std::string root = test::temp_dir("recognition_e2e");
  constexpr int kTrainIdentities = 16, kImagesPerIdentity = 24, kHeldOutIdentities = 20, kPairs = 120;

  // 1. A labelled image folder <root>/faces/<identity>/<k>.jpg.
  for (int id = 0; id < kTrainIdentities; ++id) {
    const fs::path dir = fs::path(root) / "faces" / std::to_string(id);
    fs::create_directories(dir);
    for (int k = 0; k < kImagesPerIdentity; ++k)
      test::write_bytes((dir / (std::to_string(k) + ".jpg")).string(), jpeg(render(id, k)));
  }
  // Verification pairs from identities 1000.. (never trained on): same, different, ...
  std::vector<std::string> images;
  std::vector<bool> issame;
  for (int i = 0; i < kPairs; ++i) {
    const int a = 1000 + i % kHeldOutIdentities;
    const bool same = i % 2 == 0;
    const int b = same ? a : 1000 + (i % kHeldOutIdentities + 1 + (i / 2) % (kHeldOutIdentities - 1)) % kHeldOutIdentities;
    images.push_back(jpeg(render(a, 100 + i)));
    images.push_back(jpeg(render(b, 200 + i)));
    issame.push_back(same);
  }
  fs::create_directories(fs::path(root) / "bins");
  test::write_bytes(root + "/bins/toy.bin", test::py2_bin_pickle(images, issame));

  // 2. To TFace TFRecord shards + index.
  const auto convert = test::run_command(test::admis_exe() + " convert --from image-folder:" + root +
                                         "/faces --to tfrecord:" + root + "/data/Toy");
  ASSERT_EQ(convert.status, 0) << convert.output;
  EXPECT_THAT(convert.output, ::testing::HasSubstr("384 images"));
  EXPECT_THAT(convert.output, ::testing::HasSubstr("16 identities"));
  ASSERT_TRUE(fs::exists(root + "/data/Toy.index"));

  // 3. Train and evaluate from one manifest.
  std::ofstream(root + "/e2e.yaml") << R"(version: 1
output_dir: runs
seed: 0
stages:
  - name: train
    stage: train_recognition
    backbone: {plugin: mobilefacenet, params: {embedding_size: 128}}
    head: {plugin: arcface, params: {in_features: 128, out_features: 16, scale: 32, margin: 0.3}}
    data: {plugin: tfrecord}
    data_path: data/Toy
    augmenters: [flip]
    epochs: 5
    batch_size: 16
    lr: 0.1
    stages: [4]
    warmup_steps: 20
    workers: 2
    log_every: 12
  - name: eval
    stage: evaluate
    backbone: {plugin: mobilefacenet, params: {embedding_size: 128}, weights: runs/train/backbone.safetensors}
    data: bins
)";
  const auto run = test::run_command(test::admis_exe() + " --threads 2 run " + root + "/e2e.yaml");
  ASSERT_EQ(run.status, 0) << run.output;

  // Training learned: the loss fell and the last logged top-1 is well above 1/16.
  std::ifstream csv(root + "/runs/train/metrics.csv");
  std::string header, line, first, last;
  std::getline(csv, header);
  while (std::getline(csv, line))
    if (!line.empty()) (first.empty() ? first : last) = line;
  ASSERT_FALSE(last.empty()) << "metrics.csv has fewer than two rows";
  auto column = [&](const std::string& row, const std::string& name) {
    std::vector<std::string> names, values;
    std::stringstream h(header), r(row);
    for (std::string c; std::getline(h, c, ',');) names.push_back(c);
    for (std::string c; std::getline(r, c, ',');) values.push_back(c);
    const auto it = std::find(names.begin(), names.end(), name);
    if (it == names.end()) throw std::runtime_error("metrics.csv has no column " + name);
    return std::stod(values.at(static_cast<std::size_t>(it - names.begin())));
  };
  std::cout << "train loss " << column(first, "loss") << " -> " << column(last, "loss") << ", top-1 "
            << column(last, "top1") << std::endl;
  EXPECT_LT(column(last, "loss"), 0.5 * column(first, "loss"));

  // 4. Verification on the held-out identities.
  const auto results = nlohmann::json::parse(test::read_text(root + "/runs/eval/results.json"));
  const double accuracy = results.at("sets").at("toy").at("accuracy").get<double>();
  std::cout << "held-out verification accuracy " << accuracy << " over " << kPairs << " pairs" << std::endl;
  EXPECT_GT(accuracy, 0.75);
  EXPECT_TRUE(fs::exists(root + "/runs/eval/toy_roc.png"));
}
