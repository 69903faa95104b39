// Context source `ddpm-faces` with a tiny seeded ADM UNet (32 px, 10 respaced steps) and a
// tiny seeded MobileFaceNet: N unit-norm contexts and N 112x112 faces in ADMIS's
// context_database layout, identical under a seed and different across seeds, resumed
// builds equal to uninterrupted ones, the quality controls (planted near-duplicates and
// low-norm candidates are rejected and reported), the FFHQ-to-ArcFace transform against
// the FFHQ alignment procedure, and the refusals.

#include <fstream>
#include <iostream>
#include <sstream>

#include "../../../plugins/contexts/face_alignment.h"
#include "contexts_test_util.h"

namespace admis::test::contexts {
namespace {

using ::testing::HasSubstr;

// A tiny ADM UNet: 32 px, two levels, attention at 16 px, learned variance.
const char* const kFaceModel = "adm-unet";
const bool kLearnSigma = true;
ParamMap denoiser_params() {
  return {{"image_size", Value(32)},
          {"num_channels", Value(32)},
          {"num_res_blocks", Value(1)},
          {"channel_mult", Value(std::vector<std::int64_t>{1, 2})},
          {"attention_resolutions", Value(std::vector<std::int64_t>{16})},
          {"num_head_channels", Value(16)}};
}

struct Models {
  std::string denoiser_weights, backbone_weights;
};

// Seeded weights for both networks, written once per test binary.
const Models& models() {
  static const Models m = [] {
    Models out;
    const std::string dir = temp_dir("ddpm-faces-models");
    runtime();
    torch::manual_seed(11);
    auto unet = create<Denoiser>(Kind::Denoiser, kFaceModel, denoiser_params());
    {
      // Perturb every parameter (the zero-initialised output layers too), so that the
      // network's eps is not zero and the faces depend on it.
      torch::NoGradGuard no_grad;
      for (auto& p : unet->module().parameters()) p.add_(torch::randn_like(p) * 0.02);
    }
    out.denoiser_weights = dir + "/adm.safetensors";
    host::write_safetensors(host::module_state_dict(unet->module()), out.denoiser_weights);
    torch::manual_seed(12);
    auto backbone = create<Backbone>(Kind::Backbone, "mobilefacenet", {{"embedding_size", Value(64)}});
    out.backbone_weights = dir + "/backbone.safetensors";
    host::write_safetensors(host::module_state_dict(backbone->module()), out.backbone_weights);
    return out;
  }();
  return m;
}

ParamMap base_params(const std::string& root, std::int64_t count) {
  return {{"root", Value(root)},
          {"count", Value(count)},
          {"denoiser", plugin_value("denoiser", kFaceModel, denoiser_params(), models().denoiser_weights)},
          {"scheduler", plugin_value("scheduler", "respaced-ddpm",
                             {{"learn_sigma", Value(kLearnSigma)}, {"timestep_respacing", Value(std::string("10"))}})},
          {"backbone", plugin_value("backbone", "mobilefacenet", {{"embedding_size", Value(64)}}, models().backbone_weights)},
          {"image_size", Value(32)},
          {"batch_size", Value(2)}};
}

std::shared_ptr<ContextSource> build(const ParamMap& params) { return make_source("ddpm-faces", params); }

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// selection.csv rows: candidate name -> (norm, nearest cosine or NaN, verdict).
struct Verdict {
  double norm = 0, nearest = 0;
  std::string verdict;
};
std::vector<Verdict> read_selection(const fs::path& root) {
  std::istringstream csv(file_bytes(root / "selection.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "candidate,norm,nearest_cosine,verdict");
  std::vector<Verdict> rows;
  while (std::getline(csv, line)) {
    std::vector<std::string> cells;
    std::stringstream fields(line);
    for (std::string cell; std::getline(fields, cell, ',');) cells.push_back(cell);
    if (cells.size() == 3) cells.push_back("");
    Verdict v;
    v.norm = std::stod(cells.at(1));
    v.nearest = cells.at(2).empty() ? std::nan("") : std::stod(cells.at(2));
    v.verdict = cells.at(3);
    rows.push_back(v);
  }
  return rows;
}

TEST(DdpmFaces, BuildsUnitNormContextsAndAlignedFacesInAdmisLayout) {
  const fs::path root = temp_dir("ddpm-faces-build") + "/context_database";
  auto source = build(base_params(root.string(), 5));
  ASSERT_EQ(source->size(), 5);
  ASSERT_EQ(source->embedding_size(), 64);
  const IdentityContexts all = source->read(0, 5);
  EXPECT_EQ(all.embeddings.sizes(), (std::vector<std::int64_t>{5, 64}));
  EXPECT_TRUE(torch::allclose(all.embeddings.norm(2, {1}), torch::ones({5}), 1e-5, 1e-5));
  EXPECT_EQ(all.faces.sizes(), (std::vector<std::int64_t>{5, 112, 112, 3}));
  EXPECT_GT(all.faces.to(torch::kFloat32).std().item<double>(), 1.0);  // not a constant image

  // The files ADMIS ships, readable by the `npy` source with its images folder.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(fs::exists(root / "images" / ("0000" + std::to_string(i) + ".png")));
  auto npy = make_source("npy", {{"path", Value((root / "elasticface_embeddings.npy").string())},
                                 {"images", Value((root / "images").string())}});
  const IdentityContexts again = npy->read(0, 5);
  EXPECT_TRUE(torch::allclose(again.embeddings, all.embeddings, 0, 1e-6));  // normalised once more on reading
  EXPECT_TRUE(torch::equal(again.faces, all.faces));
  // Distinct candidates give distinct faces.
  EXPECT_FALSE(torch::equal(all.faces[0], all.faces[1]));

  const auto rows = read_selection(root);
  ASSERT_EQ(rows.size(), 5u);
  for (std::size_t c = 0; c < rows.size(); ++c) EXPECT_EQ(rows[c].verdict, "accepted " + std::to_string(c));
}

TEST(DdpmFaces, SameSeedSameDatabaseOtherSeedOtherFaces) {
  const std::string dir = temp_dir("ddpm-faces-seed");
  auto a = build(base_params(dir + "/a", 3))->read(0, 3);
  auto b = build(base_params(dir + "/b", 3))->read(0, 3);
  EXPECT_TRUE(torch::equal(a.faces, b.faces));
  EXPECT_TRUE(torch::equal(a.embeddings, b.embeddings));
  EXPECT_EQ(file_bytes(dir + "/a/elasticface_embeddings.npy"), file_bytes(dir + "/b/elasticface_embeddings.npy"));
  ParamMap other = base_params(dir + "/c", 3);
  other["seed"] = Value(1);
  auto c = build(other)->read(0, 3);
  EXPECT_FALSE(torch::equal(a.faces[0], c.faces[0]));
}

TEST(DdpmFaces, ResumedBuildEqualsUninterruptedBuild) {
  const std::string dir = temp_dir("ddpm-faces-resume");
  const auto full = build(base_params(dir + "/full", 6))->read(0, 6);

  // A build stopped after 2 candidates (plus a killed write's partial file), then resumed.
  const fs::path root = dir + "/resumed";
  build(base_params(root.string(), 2));
  const auto first_written = fs::last_write_time(root / "candidates" / "00000.png");
  std::ofstream(root / "candidates" / ".00002.tmp.png") << "partial";
  const auto resumed = build(base_params(root.string(), 6))->read(0, 6);
  EXPECT_EQ(fs::last_write_time(root / "candidates" / "00000.png"), first_written);  // kept, not redrawn
  EXPECT_FALSE(fs::exists(root / "candidates" / ".00002.tmp.png"));
  EXPECT_TRUE(torch::equal(resumed.faces, full.faces));
  EXPECT_TRUE(torch::equal(resumed.embeddings, full.embeddings));
  EXPECT_EQ(file_bytes(root / "elasticface_embeddings.npy"), file_bytes(dir + "/full/elasticface_embeddings.npy"));
}

TEST(DdpmFaces, SimilarityFilterRemovesPlantedNearDuplicates) {
  const fs::path root = temp_dir("ddpm-faces-duplicates") + "/db";
  build(base_params(root.string(), 6));
  const auto distinct = read_selection(root);
  double most_similar = -1;
  for (const auto& r : distinct)
    if (!std::isnan(r.nearest)) most_similar = std::max(most_similar, r.nearest);
  std::cout << "[ddpm-faces] largest cosine between distinct candidates: " << most_similar << std::endl;

  // Plant near-duplicates: candidates 3 and 5 become candidate 1 with a little pixel noise.
  torch::manual_seed(5);
  const cv::Mat bgr = cv::imread((root / "candidates" / "00001.png").string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(bgr.empty());
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  const torch::Tensor face = torch::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, torch::kUInt8).clone();
  for (const char* name : {"00003.png", "00005.png"}) {
    const torch::Tensor noisy = (face.to(torch::kInt32) + torch::randint(-2, 3, face.sizes(), torch::kInt32))
                                    .clamp(0, 255)
                                    .to(torch::kUInt8);
    write_png(noisy, (root / "candidates" / name).string());
  }
  const double threshold = 0.995;
  ASSERT_LT(most_similar, threshold) << "distinct random faces are too similar for this test's threshold";
  ParamMap p = base_params(root.string(), 4);
  p["candidates"] = Value(6);
  p["max_similarity"] = Value(threshold);
  auto source = build(p);
  const auto rows = read_selection(root);
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_EQ(rows[3].verdict, "similar");
  EXPECT_EQ(rows[5].verdict, "not needed");  // four were accepted before it
  EXPECT_GT(rows[3].nearest, threshold);
  EXPECT_EQ(rows[4].verdict, "accepted 3");
  // Context 3 is candidate 4's face: the duplicate was skipped.
  EXPECT_EQ(file_bytes(root / "images" / "00003.png"), file_bytes(root / "candidates" / "00004.png"));

  // Needing five contexts from these six candidates is impossible: the error says why and what to do.
  p["count"] = Value(5);
  const std::string message = error_of([&] { build(p); });
  EXPECT_THAT(message, HasSubstr("6 candidates: 4 accepted"));
  EXPECT_THAT(message, HasSubstr("2 rejected as near-duplicates (cosine > 0.995)"));
  EXPECT_THAT(message, HasSubstr("raise `candidates`"));
}

TEST(DdpmFaces, NormQuantileRejectsLowNormCandidates) {
  const fs::path root = temp_dir("ddpm-faces-norm") + "/db";
  ParamMap p = base_params(root.string(), 4);
  p["candidates"] = Value(8);
  p["min_norm_quantile"] = Value(0.5);
  auto source = build(p);
  const auto rows = read_selection(root);
  ASSERT_EQ(rows.size(), 8u);
  std::vector<double> norms;
  for (const auto& r : rows) norms.push_back(r.norm);
  std::vector<double> sorted = norms;
  std::sort(sorted.begin(), sorted.end());
  const double median = (sorted[3] + sorted[4]) / 2;  // torch.quantile's linear interpolation at 0.5
  int accepted = 0;
  for (const auto& r : rows) {
    if (r.norm < median) {
      EXPECT_EQ(r.verdict, "low norm") << r.norm;
    }
    if (r.verdict.rfind("accepted", 0) == 0) {
      EXPECT_GE(r.norm, median);
      ++accepted;
    }
  }
  EXPECT_EQ(accepted, 4);
  // The contexts are the accepted candidates' embeddings, in candidate order.
  EXPECT_EQ(source->size(), 4);
}

TEST(DdpmFaces, RefusesMixedSettingsConditionalModelsAndTooFewCandidates) {
  const fs::path root = temp_dir("ddpm-faces-errors") + "/db";
  build(base_params(root.string(), 2));
  ParamMap other_seed = base_params(root.string(), 2);
  other_seed["seed"] = Value(7);
  const std::string mixed = error_of([&] { build(other_seed); });
  EXPECT_THAT(mixed, HasSubstr("holds candidates drawn with other settings"));
  EXPECT_THAT(mixed, HasSubstr("seed: 7"));
  EXPECT_THAT(mixed, HasSubstr("delete its candidates/ folder"));

  ParamMap few = base_params(temp_dir("ddpm-faces-few"), 4);
  few["candidates"] = Value(3);
  EXPECT_THAT(error_of([&] { build(few); }), HasSubstr("candidates = 3 is less than count = 4"));

  ParamMap conditional = base_params(temp_dir("ddpm-faces-conditional"), 1);
  conditional["denoiser"] =
      plugin_value("denoiser", "idiff-unet",
           {{"initial_channels", Value(32)},
            {"channel_multipliers", Value(std::vector<std::int64_t>{1})},
            {"is_attention", Value(std::vector<bool>{false})},
            {"n_blocks_per_resolution", Value(1)}});
  EXPECT_THAT(error_of([&] { build(conditional); }), HasSubstr("is context-conditional"));

  ParamMap variance = base_params(temp_dir("ddpm-faces-variance"), 1);
  variance["scheduler"] = plugin_value("scheduler", "respaced-ddpm", {{"timestep_respacing", Value(std::string("10"))}});
  EXPECT_THAT(error_of([&] { build(variance); }), HasSubstr("outputs 6 channels but scheduler/respaced-ddpm expects 3"));
}

// The closed-form crop against the FFHQ procedure run forwards: the ArcFace template's
// landmarks, mapped into the FFHQ image by the transform, must produce FFHQ's square
// exactly on the image's borders.
TEST(DdpmFaces, FfhqToArcFaceTransformInvertsTheFfhqAlignment) {
  for (std::int64_t ffhq_size : {256, 1024}) {
    const cv::Matx23d M = admis::contexts::ffhq_to_arcface_crop(ffhq_size, 112);
    auto to_ffhq = [&](const std::array<double, 2>& p) {
      return cv::Vec2d(M(0, 0) * p[0] + M(0, 1) * p[1] + M(0, 2), M(1, 0) * p[0] + M(1, 1) * p[1] + M(1, 2));
    };
    const auto& t = admis::contexts::kArcFaceTemplate;
    // recreate_aligned_images, in PIL's continuous coordinates (pixel index + 0.5).
    const cv::Vec2d half_pixel(0.5, 0.5);
    const cv::Vec2d eye_left = to_ffhq(t[0]) + half_pixel, eye_right = to_ffhq(t[1]) + half_pixel;
    const cv::Vec2d mouth_left = to_ffhq(t[3]) + half_pixel, mouth_right = to_ffhq(t[4]) + half_pixel;
    const cv::Vec2d eye_avg = (eye_left + eye_right) * 0.5, eye_to_eye = eye_right - eye_left;
    const cv::Vec2d eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg;
    cv::Vec2d x = eye_to_eye - cv::Vec2d(-eye_to_mouth[1], eye_to_mouth[0]);
    x /= std::hypot(x[0], x[1]);
    x *= std::max(std::hypot(eye_to_eye[0], eye_to_eye[1]) * 2.0, std::hypot(eye_to_mouth[0], eye_to_mouth[1]) * 1.8);
    const cv::Vec2d y(-x[1], x[0]);
    const cv::Vec2d c = eye_avg + eye_to_mouth * 0.1;
    const double S = static_cast<double>(ffhq_size);
    const std::array<cv::Vec2d, 4> quad = {c - x - y, c - x + y, c + x + y, c + x - y};
    const std::array<cv::Vec2d, 4> corners = {cv::Vec2d(0, 0), cv::Vec2d(0, S), cv::Vec2d(S, S), cv::Vec2d(S, 0)};
    for (int k = 0; k < 4; ++k) {
      EXPECT_NEAR(quad[k][0], corners[k][0], 1e-9 * S) << "corner " << k << " of the " << ffhq_size << " image";
      EXPECT_NEAR(quad[k][1], corners[k][1], 1e-9 * S) << "corner " << k << " of the " << ffhq_size << " image";
    }
    // A similarity: equal scales, orthogonal axes; the crop spans about 76.5% of the side.
    EXPECT_NEAR(M(0, 0), M(1, 1), 1e-12);
    EXPECT_NEAR(M(0, 1), -M(1, 0), 1e-12);
    EXPECT_NEAR(112 * std::hypot(M(0, 0), M(1, 0)) / S, 0.7647, 1e-3);
  }
}

}  // namespace
}  // namespace admis::test::contexts
