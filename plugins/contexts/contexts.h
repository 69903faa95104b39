#pragma once
// The identity context sources and what they share: the range check of read(), the face
// folders ADMIS keeps next to its embeddings (context_database/images), image decoding
// and the L2 normalisation of embeddings.

#include <cstdint>
#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::contexts {

void register_gaussian(FactoryList& registry);
void register_npy(FactoryList& registry);
void register_image_folder(FactoryList& registry);

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

// Rows divided by their L2 norm (clamped at 1e-12, as torch.nn.functional.normalize), in
// the tensor's own dtype.
torch::Tensor l2_normalize(const torch::Tensor& rows);

}  // namespace admis::contexts
