#pragma once
// The identity context sources and what they share: the range check of read(), the face
// folders ADMIS keeps next to its embeddings (context_database/images), image decoding
// and encoding, embedding faces with a backbone, and the L2 normalisation of embeddings.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::contexts {

void register_gaussian(FactoryList& registry);
void register_npy(FactoryList& registry);
void register_image_folder(FactoryList& registry);
void register_ddpm_faces(FactoryList& registry);
void register_dataset_embeddings(FactoryList& registry);

// SplitMix64's finaliser: consecutive inputs give unrelated outputs. Seeds per-index
// generators, so that context i depends on (seed, i) alone.
inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Throws unless 0 <= first, 0 <= count and first + count <= size.
void check_read_range(std::int64_t first, std::int64_t count, std::int64_t size, const std::string& plugin);

// The face images (.png, .jpg, .jpeg, any case) directly inside `folder`, sorted by file
// name as strings, as ADMIS sorts context_database/images (so "10.png" precedes "2.png").
// Throws naming the folder when it does not exist.
std::vector<std::string> list_face_images(const std::string& folder, const std::string& plugin);

// Decodes one image file to [H,W,3] uint8 RGB; throws naming the file when it cannot.
torch::Tensor read_face(const std::string& path);

// Decodes `paths` and stacks them to [K,H,W,3] uint8; all must share one size (the error
// names the first file that differs).
torch::Tensor read_faces(const std::vector<std::string>& paths);

// Writes [H,W,3] uint8 RGB as a PNG file that appears atomically (a hidden temporary file
// in the same folder, then a rename).
void write_face_png(const std::string& path, const torch::Tensor& face);

// Embeds `count` faces with `backbone` (eval mode, no gradients), as ADMIS extract_embed.py
// does: face_at(i) gives [H,W,3] uint8 RGB, which becomes ToTensor + Normalize(0.5, 0.5),
// i.e. [-1,1], resized to the network's input (bilinear, as torchvision's tensor resize).
// With flip_sum the horizontally flipped face's embedding is added, as verification does.
// Returns [count,D] float32 on the CPU, not normalised.
torch::Tensor embed_faces(Backbone& backbone, Host& host, std::size_t count,
                          const std::function<torch::Tensor(std::size_t)>& face_at, bool flip_sum,
                          std::int64_t batch_size);

// The parameters of a source that embeds images with a backbone plugin: `own` followed by
// backbone, flip_sum (default and doc given, as sources differ in what the reference
// does), normalize, batch_size and save_npy.
std::vector<ParamSpec> with_embedding_params(std::vector<ParamSpec> own, bool flip_sum_default,
                                             const std::string& flip_sum_doc);

// Rows divided by their L2 norm (clamped at 1e-12, as torch.nn.functional.normalize), in
// the tensor's own dtype.
torch::Tensor l2_normalize(const torch::Tensor& rows);

}  // namespace admis::contexts
