// Contexts from a folder of face images embedded by a backbone plugin, as ADMIS
// utils/extract_embed.py builds context_database/elasticface_embeddings.npy: the .png/.jpg
// files of the folder in sorted name order, ToTensor + Normalize(0.5, 0.5) to [-1,1] RGB,
// resized to the network's input (bilinear, as torchvision's tensor resize), embedded in
// eval mode without gradients, each row divided by its L2 norm. With flip_sum the image's
// horizontally flipped embedding is added first, as face verification does.
//
// All embeddings are computed when the source is created (and optionally saved as .npy),
// so read() is cheap and returns the same rows however it is called.

#include <algorithm>

#include "contexts.h"
#include "npy.h"

namespace admis::contexts {
namespace {

const char* const kName = "context-source/image-folder";

class ImageFolderSource : public ContextSource {
 public:
  ImageFolderSource(const Params& p, Host& host) : root_(p.get_path("root")) {
    files_ = list_face_images(root_, kName);
    if (files_.empty())
      throw Error(kName, "no face images (.png, .jpg, .jpeg) directly inside '" + root_ +
                             "' (the faces must be files of that folder, not of subfolders)");
    auto backbone = host.create_as<Backbone>(p.get_plugin("backbone"));
    embeddings_ = embed_faces(*backbone, host, files_.size(), [this](std::size_t i) { return read_face(files_[i]); },
                              p.get_bool("flip_sum"), p.get_int("batch_size"));
    if (p.get_bool("normalize")) embeddings_ = l2_normalize(embeddings_);
    host.log(LogLevel::Info, kName,
             "embedded " + std::to_string(files_.size()) + " faces from " + root_ + " with " +
                 p.get_plugin("backbone").name);
    if (!p.get_path("save_npy").empty()) write_npy(p.get_path("save_npy"), embeddings_);
  }

  std::int64_t size() const override { return embeddings_.size(0); }
  std::int64_t embedding_size() const override { return embeddings_.size(1); }

  // The faces come back as stored in the files (not resized to the backbone's input), so
  // that an identity's context face is copied as ADMIS id_augment.py copies the file.
  IdentityContexts read(std::int64_t first, std::int64_t count) override {
    check_read_range(first, count, size(), kName);
    IdentityContexts out;
    out.embeddings = embeddings_.slice(0, first, first + count).clone();
    out.faces = read_faces(std::vector<std::string>(files_.begin() + first, files_.begin() + first + count));
    return out;
  }

 private:
  std::string root_;
  std::vector<std::string> files_;
  torch::Tensor embeddings_;  // [K,D] float32 on the CPU
};

}  // namespace

void register_image_folder(FactoryList& registry) {
  registry.add(
      Kind::ContextSource, "image-folder", "1.0.0",
      "Faces in a folder (sorted by name) embedded by a backbone plugin, as ADMIS extract_embed.py",
      with_embedding_params(
          {ParamSpec::Path("root", "", "folder of face images (.png/.jpg/.jpeg files, no subfolders)").required_value()},
          true, "add the embedding of the horizontally flipped face (ADMIS extract_embed.py does not: false)"),
      [](const Params& p, Host& host) -> std::unique_ptr<Plugin> {
        return std::make_unique<ImageFolderSource>(p, host);
      });
}

}  // namespace admis::contexts
