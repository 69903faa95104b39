// Context source `dataset-embeddings`: one context per image of a labelled dataset (here an
// image-folder dataset of PNGs), equal to a direct backbone computation in the
// reader's order, with the images as faces, save_npy readable by `npy`, and refusals.

#include <fstream>

#include "contexts_test_util.h"

namespace admis::test::contexts {
namespace {

using ::testing::HasSubstr;

TEST(DatasetEmbeddings, OneContextPerImageInReaderOrderEqualToTheBackbone) {
  const std::string dir = temp_dir("dataset-embeddings");
  // Two identities, three images each: a.png, b.png, c.png.
  std::vector<torch::Tensor> faces;
  for (int id = 0; id < 2; ++id) {
    fs::create_directories(dir + "/faces/" + std::to_string(id));
    for (int k = 0; k < 3; ++k) {
      faces.push_back(test_face(10 * id + k));
      write_png(faces.back(), dir + "/faces/" + std::to_string(id) + "/" + std::string(1, static_cast<char>('a' + k)) +
                                  ".png");
    }
  }
  runtime();
  torch::manual_seed(4);
  auto backbone = create<Backbone>(Kind::Backbone, "mobilefacenet", {{"embedding_size", Value(32)}});
  backbone->module().eval();
  const std::string weights = dir + "/backbone.safetensors";
  host::write_safetensors(host::module_state_dict(backbone->module()), weights);

  const std::string npy = dir + "/contexts.npy";
  auto source = make_source(
      "dataset-embeddings",
      {{"data", plugin_value("dataset-reader", "image-folder", {})},
       {"data_path", Value(dir + "/faces")},
       {"backbone", plugin_value("backbone", "mobilefacenet", {{"embedding_size", Value(32)}}, weights)},
       {"save_npy", Value(npy)}});
  ASSERT_EQ(source->size(), 6);
  ASSERT_EQ(source->embedding_size(), 32);
  const IdentityContexts all = source->read(0, 6);

  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> batch;
  for (const auto& f : faces) batch.push_back(f.permute({2, 0, 1}).to(torch::kFloat32) / 127.5 - 1);
  torch::Tensor expected = backbone->forward(torch::stack(batch));
  expected = expected / expected.norm(2, {1}, true);
  const double diff = (all.embeddings - expected).abs().max().item<double>();
  std::cout << "[dataset-embeddings] max abs diff to the direct computation: " << diff << std::endl;
  EXPECT_LT(diff, 1e-5);
  EXPECT_TRUE(torch::equal(all.faces, torch::stack(faces)));

  auto reread = make_source("npy", {{"path", Value(npy)}});
  EXPECT_TRUE(torch::allclose(reread->read(0, 6).embeddings, all.embeddings, 0, 1e-6));

  const std::string empty = dir + "/empty";
  fs::create_directories(empty);
  const std::string error = error_of([&] {
    make_source("dataset-embeddings",
                {{"data", plugin_value("dataset-reader", "image-folder", {})},
                 {"data_path", Value(empty)},
                 {"backbone", plugin_value("backbone", "mobilefacenet", {{"embedding_size", Value(32)}}, weights)}});
  });
  EXPECT_THAT(error, HasSubstr(empty));
}

}  // namespace
}  // namespace admis::test::contexts
