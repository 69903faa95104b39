// Context source `image-folder`: a small generated face folder embedded by a tiny seeded
// MobileFaceNet whose weights travel through the nested plugin's `weights:` file. The
// embeddings equal a direct backbone computation (flip sum, L2 normalisation, resize to
// the input size), save_npy round-trips through the `npy` source, and bad folders are
// refused naming the folder or the file.

#include <fstream>
#include <iostream>

#include "contexts_test_util.h"

namespace admis::test::contexts {
namespace {

using ::testing::HasSubstr;

constexpr std::int64_t kEmbedding = 64;

struct Fixture {
  std::string root;       // face folder
  std::string weights;    // the seeded backbone's state dict (safetensors)
  std::shared_ptr<Backbone> backbone;  // the same network, for the direct computation
  std::vector<torch::Tensor> faces;    // as written, in file-name order
};

// `n` faces of `side` px named 0.png.. (n <= 10, so name order is numeric order).
Fixture make_fixture(const std::string& tag, int n, std::int64_t side) {
  Fixture f;
  const std::string dir = temp_dir(tag);
  f.root = dir + "/faces";
  fs::create_directories(f.root);
  for (int i = 0; i < n; ++i) {
    f.faces.push_back(test_face(i, side, side));
    write_png(f.faces.back(), f.root + "/" + std::to_string(i) + ".png");
  }
  runtime();
  torch::manual_seed(3);
  f.backbone = create<Backbone>(Kind::Backbone, "mobilefacenet", {{"embedding_size", kEmbedding}});
  {
    torch::NoGradGuard no_grad;
    // Non-trivial BatchNorm statistics, so that eval mode matters.
    for (const auto& [key, t] : host::module_state_dict(f.backbone->module())) {
      if (key.size() > 12 && key.compare(key.size() - 12, 12, "running_mean") == 0) t.uniform_(-0.1, 0.1);
      if (key.size() > 11 && key.compare(key.size() - 11, 11, "running_var") == 0) t.uniform_(0.5, 1.5);
    }
  }
  f.backbone->module().eval();
  f.weights = dir + "/backbone.safetensors";
  host::write_safetensors(host::module_state_dict(f.backbone->module()), f.weights);
  return f;
}

Value backbone_spec(const Fixture& f) {
  auto spec = std::make_shared<PluginSpec>();
  spec->kind = "backbone";
  spec->name = "mobilefacenet";
  spec->params = {{"embedding_size", Value(kEmbedding)}};
  spec->weights = f.weights;
  return Value(std::shared_ptr<const PluginSpec>(spec));
}

std::shared_ptr<ContextSource> make_folder_source(const Fixture& f, ParamMap extra = {}) {
  extra["root"] = Value(f.root);
  extra["backbone"] = backbone_spec(f);
  torch::manual_seed(99);  // the nested backbone's own initialisation differs from the weights file
  return make_source("image-folder", extra);
}

// The reference computation: [-1,1] RGB, resized to 112, f(x) (+ f(flip x)), L2-normalised.
torch::Tensor direct_embeddings(const Fixture& f, bool flip_sum, bool normalize) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> batch;
  for (const auto& face : f.faces) batch.push_back(face.permute({2, 0, 1}).to(torch::kFloat32) / 127.5 - 1);
  torch::Tensor x = torch::stack(batch);
  if (x.size(2) != 112) x = at::upsample_bilinear2d(x, {112, 112}, false);
  torch::Tensor e = f.backbone->forward(x);
  if (flip_sum) e = e + f.backbone->forward(x.flip({3}));
  if (normalize) e = e / e.norm(2, {1}, true);
  return e;
}

TEST(ImageFolder, EmbeddingsEqualTheDirectBackboneComputation) {
  const Fixture f = make_fixture("image-folder-direct", 5, 112);
  for (const auto& [flip_sum, normalize] : std::vector<std::pair<bool, bool>>{{true, true}, {false, false}, {true, false}}) {
    auto source = make_folder_source(f, {{"flip_sum", flip_sum}, {"normalize", normalize}, {"batch_size", 2}});
    EXPECT_EQ(source->size(), 5);
    EXPECT_EQ(source->embedding_size(), kEmbedding);
    const IdentityContexts c = source->read(0, 5);
    const torch::Tensor want = direct_embeddings(f, flip_sum, normalize);
    const double diff = (c.embeddings - want).abs().max().item<double>();
    std::cout << "flip_sum " << flip_sum << " normalize " << normalize << ": max abs diff " << diff
              << " (tolerance 1e-5)" << std::endl;
    EXPECT_TRUE(all_close(c.embeddings, want, 1e-5));
    // The faces come back as stored.
    ASSERT_TRUE(c.faces.defined());
    EXPECT_EQ(c.faces.sizes(), (std::vector<std::int64_t>{5, 112, 112, 3}));
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(torch::equal(c.faces[i], f.faces[i])) << i;
    EXPECT_TRUE(torch::equal(source->read(2, 2).embeddings, c.embeddings.slice(0, 2, 4)));
  }
}

TEST(ImageFolder, ResizesFacesToTheBackboneInputAndReturnsThemAsStored) {
  const Fixture f = make_fixture("image-folder-resize", 3, 128);
  auto source = make_folder_source(f, {{"batch_size", 64}});
  const IdentityContexts c = source->read(0, 3);
  const torch::Tensor want = direct_embeddings(f, true, true);
  std::cout << "128 px faces: max abs diff " << (c.embeddings - want).abs().max().item<double>() << " (tolerance 1e-5)"
            << std::endl;
  EXPECT_TRUE(all_close(c.embeddings, want, 1e-5));
  EXPECT_EQ(c.faces.sizes(), (std::vector<std::int64_t>{3, 128, 128, 3}));
}

TEST(ImageFolder, SaveNpyRoundTripsThroughTheNpySource) {
  const Fixture f = make_fixture("image-folder-save", 4, 112);
  const std::string npy = fs::path(f.root).parent_path().string() + "/embeddings.npy";
  auto source = make_folder_source(f, {{"save_npy", npy}});
  ASSERT_TRUE(fs::exists(npy));
  // No temporary file is left next to it.
  for (const auto& e : fs::directory_iterator(fs::path(npy).parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  // NumPy's layout: magic, version 1.0, a 64-byte aligned header describing (4, 64) float32.
  std::ifstream in(npy, std::ios::binary);
  std::string head(128, '\0');
  in.read(head.data(), 128);
  EXPECT_EQ(head.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_length = static_cast<unsigned char>(head[8]) | (static_cast<unsigned char>(head[9]) << 8);
  EXPECT_EQ((10 + header_length) % 64, 0u);
  EXPECT_THAT(head.substr(10, header_length), HasSubstr("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64), }"));
  EXPECT_EQ(head[10 + header_length - 1], '\n');
  EXPECT_EQ(fs::file_size(npy), 10 + header_length + 4 * 64 * 4);

  auto reread = make_source("npy", {{"path", npy}, {"normalize", false}});
  EXPECT_TRUE(torch::equal(reread->read(0, 4).embeddings, source->read(0, 4).embeddings));
  // Writing again replaces the file in place.
  make_folder_source(f, {{"save_npy", npy}, {"normalize", false}});
  EXPECT_TRUE(all_close(make_source("npy", {{"path", npy}, {"normalize", false}})->read(0, 4).embeddings,
                        direct_embeddings(f, true, false), 1e-5));
}

TEST(ImageFolder, RefusesAnEmptyFolderAndAnUnreadableImageNamingThem) {
  Fixture f = make_fixture("image-folder-errors", 2, 112);
  const std::string empty = fs::path(f.root).parent_path().string() + "/empty";
  fs::create_directories(empty + "/identity0");
  Fixture e = f;
  e.root = empty;
  std::string msg = error_of([&] { make_folder_source(e); });
  EXPECT_THAT(msg, HasSubstr("context-source/image-folder"));
  EXPECT_THAT(msg, HasSubstr("no face images"));
  EXPECT_THAT(msg, HasSubstr(empty));

  e.root = fs::path(f.root).parent_path().string() + "/nowhere";
  EXPECT_THAT(error_of([&] { make_folder_source(e); }), HasSubstr("is not a folder"));

  const std::string broken = f.root + "/1.png";
  std::ofstream(broken, std::ios::trunc) << "not a png";
  msg = error_of([&] { make_folder_source(f); });
  EXPECT_THAT(msg, HasSubstr(broken));
  EXPECT_THAT(msg, HasSubstr("cannot read the image"));
}

}  // namespace
}  // namespace admis::test::contexts
