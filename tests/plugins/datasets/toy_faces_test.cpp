// toy-faces: determinism (seed, read order, threads), sizes, labels and names, global
// identity indices, identities distinguishable under the default nuisances, nuisances off
// giving identical images, errors; and every reader refusing an empty data path clearly.
#include <fstream>
#include <sstream>
#include <thread>

#include <opencv2/imgproc.hpp>

#include "admis/host/conformance.h"
#include "admis/host/manifest.h"
#include "datasets_test_util.h"

namespace admis::test::datasets {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<DatasetReader> toy(const ParamMap& params = {}) {
  auto r = create<DatasetReader>(Kind::DatasetReader, "toy-faces", params);
  r->open("");
  return r;
}

const ParamMap kNoNuisances = {{"pose", 0.0},  {"lighting", 0.0},  {"expression", 0.0}, {"blur", 0.0},
                               {"noise", 0.0}, {"occlusion", 0.0}, {"background", 0.0}};

ParamMap with(ParamMap base, const ParamMap& more) {
  for (const auto& [k, v] : more) base[k] = v;
  return base;
}

// Mean absolute difference of two uint8 images, in grey levels.
double distance(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().mean().item<double>();
}

TEST(ToyFaces, SameSeedSamePixelsInAnyOrderOtherSeedOtherPixels) {
  const ParamMap params = {{"identities", 5}, {"images_per_identity", 4}, {"seed", 7}};
  auto a = toy(params), b = toy(params), c = toy(with(params, {{"seed", 8}}));
  ASSERT_EQ(a->size(), 20);
  std::vector<torch::Tensor> backwards(20);
  for (std::int64_t i = 19; i >= 0; --i) backwards[static_cast<std::size_t>(i)] = b->read(i).image;
  int differing = 0;
  for (std::int64_t i = 0; i < 20; ++i) {
    const torch::Tensor image = a->read(i).image;
    EXPECT_TRUE(torch::equal(image, backwards[static_cast<std::size_t>(i)])) << "sample " << i;
    EXPECT_TRUE(torch::equal(image, a->read(i).image)) << "sample " << i << " read twice";
    if (!torch::equal(image, c->read(i).image)) ++differing;
  }
  EXPECT_EQ(differing, 20) << "another seed must give other images";
}

TEST(ToyFaces, RendersAtAnySizeInTheArcFaceLayout) {
  for (std::int64_t size : {112, 32, 16, 200}) {
    const Sample s = toy({{"identities", 2}, {"images_per_identity", 2}, {"image_size", size}})->read(3);
    EXPECT_EQ(s.image.sizes(), (std::vector<std::int64_t>{size, size, 3})) << size;
    EXPECT_EQ(s.image.scalar_type(), torch::kUInt8);
    EXPECT_TRUE(s.image.is_contiguous());
    EXPECT_GT(s.image.to(torch::kFloat32).std().item<double>(), 10.0) << "a blank image at size " << size;
  }
  // The same face at two resolutions: the 224 px render, averaged down to 112, is close to
  // the 112 px render (coordinates scale with the size; nothing is cropped or moved).
  const ParamMap clean = with(kNoNuisances, {{"identities", 3}, {"images_per_identity", 1}});
  const torch::Tensor small = toy(clean)->read(2).image;
  const torch::Tensor large = toy(with(clean, {{"image_size", 224}}))->read(2).image;
  const torch::Tensor down = torch::avg_pool2d(large.permute({2, 0, 1}).to(torch::kFloat32).unsqueeze(0), 2)
                                 .squeeze(0)
                                 .permute({1, 2, 0});
  const double d = (down - small.to(torch::kFloat32)).abs().mean().item<double>();
  std::cout << "mean |render224 downsampled - render112| = " << d << " grey levels" << std::endl;
  EXPECT_LT(d, 6.0);
}

// render_size: the face drawn small and stored large is the small render, resized (so the
// 112 px images of a 16 px world carry 16 px of detail), and render_size = image_size is
// the plain render.
TEST(ToyFaces, RenderSizeDrawsSmallAndStoresAtImageSize) {
  const ParamMap params = {{"identities", 3}, {"images_per_identity", 2}};
  const torch::Tensor small = toy(with(params, {{"image_size", 16}}))->read(5).image;
  const torch::Tensor stored = toy(with(params, {{"render_size", 16}}))->read(5).image;
  ASSERT_EQ(stored.sizes(), (std::vector<std::int64_t>{112, 112, 3}));
  cv::Mat small_mat(16, 16, CV_8UC3, small.data_ptr<std::uint8_t>()), expected;
  cv::resize(small_mat, expected, cv::Size(112, 112), 0, 0, cv::INTER_LINEAR);
  const torch::Tensor expected_tensor = torch::from_blob(expected.data, {112, 112, 3}, torch::kUInt8).clone();
  EXPECT_EQ(distance(stored, expected_tensor), 0.0);
  // Little detail survives: far from the 112 px render of the same image.
  EXPECT_GT(distance(stored, toy(params)->read(5).image), 3.0);
  EXPECT_TRUE(torch::equal(toy(with(params, {{"render_size", 112}}))->read(5).image, toy(params)->read(5).image));
  // Drawn large and stored small: area averaging.
  EXPECT_EQ(toy(with(params, {{"image_size", 32}, {"render_size", 64}}))->read(1).image.sizes(),
            (std::vector<std::int64_t>{32, 32, 3}));
  EXPECT_THAT(error_of([&] { toy({{"render_size", 4}}); }),
              HasSubstr("render_size must be 0 (draw at image_size) or at least 8; got 4"));
}

TEST(ToyFaces, LabelsNamesAndGlobalIdentityIndices) {
  auto held_out = toy({{"identities", 3}, {"images_per_identity", 4}, {"first_identity", 100000}});
  EXPECT_EQ(held_out->size(), 12);
  EXPECT_EQ(held_out->class_names(), (std::vector<std::string>{"100000", "100001", "100002"}));
  const Sample s = held_out->read(5);
  EXPECT_EQ(s.label, 1);
  EXPECT_EQ(s.label_name, "100001");
  EXPECT_EQ(s.name, "1.png");
  EXPECT_TRUE(s.encoded.empty());
  EXPECT_EQ(toy({{"identities", 50}, {"first_identity", 42}})->class_names()[0], "00042");

  // Identity 7 is the same person whichever range it is read in: a reader starting at 7
  // renders what a reader starting at 0 renders for its label 7.
  auto from_zero = toy({{"identities", 10}, {"images_per_identity", 3}});
  auto from_seven = toy({{"identities", 2}, {"images_per_identity", 3}, {"first_identity", 7}});
  for (std::int64_t k = 0; k < 3; ++k)
    EXPECT_TRUE(torch::equal(from_seven->read(k).image, from_zero->read(7 * 3 + k).image)) << "image " << k;
  EXPECT_EQ(from_seven->read(0).label, 0);
  EXPECT_EQ(from_seven->read(0).label_name, "00007");
}

TEST(ToyFaces, ReadsFromSeveralThreadsGiveTheSerialPixels) {
  auto r = toy({{"identities", 8}, {"images_per_identity", 6}, {"image_size", 64}});
  const std::int64_t n = r->size();
  std::vector<torch::Tensor> serial;
  for (std::int64_t i = 0; i < n; ++i) serial.push_back(r->read(i).image);
  std::vector<torch::Tensor> forward(static_cast<std::size_t>(n)), backward(static_cast<std::size_t>(n));
  std::thread t1([&] {
    for (std::int64_t i = 0; i < n; ++i) forward[static_cast<std::size_t>(i)] = r->read(i).image;
  });
  std::thread t2([&] {
    for (std::int64_t i = n - 1; i >= 0; --i) backward[static_cast<std::size_t>(i)] = r->read(i).image;
  });
  t1.join();
  t2.join();
  for (std::size_t i = 0; i < serial.size(); ++i) {
    EXPECT_TRUE(torch::equal(forward[i], serial[i])) << "sample " << i;
    EXPECT_TRUE(torch::equal(backward[i], serial[i])) << "sample " << i;
  }
}

TEST(ToyFaces, IdentitiesAreDistinguishableUnderTheDefaultNuisances) {
  constexpr int kIdentities = 12, kImages = 6;
  auto r = toy({{"identities", kIdentities}, {"images_per_identity", kImages}});
  std::vector<torch::Tensor> images;
  for (std::int64_t i = 0; i < r->size(); ++i) images.push_back(r->read(i).image.to(torch::kFloat32).flatten());
  double within = 0, between = 0;
  int n_within = 0, n_between = 0, nearest_same = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    double best = 1e9;
    bool best_same = false;
    for (std::size_t j = 0; j < images.size(); ++j) {
      if (i == j) continue;
      const double d = (images[i] - images[j]).abs().mean().item<double>();
      const bool same = i / kImages == j / kImages;
      (same ? within : between) += d;
      ++(same ? n_within : n_between);
      if (d < best) best = d, best_same = same;
    }
    nearest_same += best_same;
  }
  within /= n_within;
  between /= n_between;
  std::cout << "mean pixel distance within identities " << within << ", between " << between
            << "; nearest neighbour of the same identity for " << nearest_same << "/" << images.size() << " images"
            << std::endl;
  EXPECT_LT(within, 0.8 * between);
  EXPECT_GT(nearest_same, static_cast<int>(images.size()) / 2);
}

TEST(ToyFaces, NuisancesOffGiveIdenticalImagesPerIdentity) {
  auto r = toy(with(kNoNuisances, {{"identities", 4}, {"images_per_identity", 3}}));
  for (std::int64_t id = 0; id < 4; ++id) {
    EXPECT_TRUE(torch::equal(r->read(id * 3).image, r->read(id * 3 + 1).image)) << "identity " << id;
    EXPECT_TRUE(torch::equal(r->read(id * 3).image, r->read(id * 3 + 2).image)) << "identity " << id;
    if (id > 0) {
      EXPECT_GT(distance(r->read(id * 3).image, r->read(0).image), 5.0) << "identity " << id << " vs 0";
    }
  }
  // Each nuisance alone makes the images of one identity differ.
  for (const char* nuisance : {"pose", "lighting", "expression", "blur", "noise", "background"}) {
    auto one = toy(with(kNoNuisances, {{"identities", 1}, {"images_per_identity", 4}, {nuisance, 1.0}}));
    int differing = 0;
    for (std::int64_t k = 1; k < 4; ++k) differing += !torch::equal(one->read(0).image, one->read(k).image);
    EXPECT_GE(differing, 2) << nuisance;
  }
  auto occluded = toy(with(kNoNuisances, {{"identities", 1}, {"images_per_identity", 2}, {"occlusion", 1.0}}));
  EXPECT_FALSE(torch::equal(occluded->read(0).image, r->read(0).image)) << "occlusion 1 always occludes";
}

TEST(ToyFaces, RefusesADataPathAndBadParameters) {
  auto r = create<DatasetReader>(Kind::DatasetReader, "toy-faces");
  EXPECT_THAT(error_of([&] { r->open("data/faces"); }),
              HasSubstr("toy-faces renders its images and reads no data; leave data_path empty (got 'data/faces')"));
  EXPECT_THAT(error_of([&] { toy({{"identities", 2}, {"images_per_identity", 2}})->read(4); }),
              HasSubstr("index 4 out of range [0, 4)"));
  EXPECT_THAT(error_of([&] { toy({{"image_size", 8}}); }), HasSubstr("image_size"));
  EXPECT_THAT(error_of([&] { toy({{"identities", 0}}); }), HasSubstr("identities"));
  EXPECT_THAT(error_of([&] { toy({{"pose", 1.5}}); }), HasSubstr("pose"));
  EXPECT_THAT(error_of([&] { toy({{"nose", 0.5}}); }), HasSubstr("nose"));
}

TEST(DatasetReaders, AnEmptyDataPathIsNamedAsTheProblem) {
  for (const char* format : {"image-folder", "tfrecord", "recordio"}) {
    auto r = create<DatasetReader>(Kind::DatasetReader, format);
    const std::string message = error_of([&] { r->open(""); });
    EXPECT_THAT(message, HasSubstr(std::string("dataset-reader/") + format)) << message;
    EXPECT_THAT(message, HasSubstr("no data path given: set data_path to")) << message;
  }
}

TEST(ToyFaces, TrainingStagesTakeItWithoutADataPath) {
  const std::string dir = temp_dir("toy_manifest");
  const std::string path = dir + "/m.yaml";
  std::ofstream(path) << R"(version: 1
stages:
  - name: train
    stage: train_recognition
    backbone: {plugin: mobilefacenet}
    head: {plugin: arcface, params: {out_features: 100}}
    data: {plugin: toy-faces}
  - name: generator
    stage: train_generator
    denoiser: {plugin: idiff-unet, params: {is_context_conditional: false}}
    codec: {plugin: pixel}
    data: {plugin: toy-faces, params: {image_size: 32}}
)";
  const host::Manifest m = host::resolve_manifest(host::load_manifest_yaml(path, {}), path, registry());
  ASSERT_EQ(m.stages.size(), 2u);
  for (const auto& stage : m.stages) EXPECT_EQ(stage.keys.get_path("data_path"), "") << stage.name;
}

TEST(ToyFaces, PassesTheDatasetsConformanceChecks) {
  const host::LoadedLibrary* library = nullptr;
  for (const auto& lib : registry().libraries())
    if (lib->name == "admis_datasets") library = lib.get();
  ASSERT_NE(library, nullptr);
  const auto report = host::check_plugins(registry(), library->path, runtime());
  std::ostringstream text;
  host::print_report(report, text);
  EXPECT_FALSE(report.failed()) << text.str();
  int toy_checks = 0;
  for (const auto& r : report.results)
    if (r.plugin == "dataset-reader/toy-faces") toy_checks += r.passed;
  EXPECT_GE(toy_checks, 3) << text.str();  // schema, unknown parameter, creation with defaults
}

}  // namespace
}  // namespace admis::test::datasets
