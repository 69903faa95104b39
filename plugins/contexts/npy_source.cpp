// Contexts from an (N, D) .npy of embeddings, as ADMIS sample.py reads
// context_database/elasticface_embeddings.npy: np.load, the first 10000 rows, each row
// divided by its L2 norm, then torch.from_numpy(...).float(). The faces the embeddings came
// from (context_database/images, sorted by file name as id_augment.py and extract_embed.py
// sort them) can be returned with them.

#include "contexts.h"
#include "npy.h"

namespace admis::contexts {
namespace {

const char* const kName = "context-source/npy";

class NpySource : public ContextSource {
 public:
  explicit NpySource(const Params& p) : path_(p.get_path("path")) {
    torch::Tensor all = read_npy(path_);
    if (all.dim() != 2)
      throw Error(path_, "expected a 2-D (N, D) array of embeddings, got shape " + c10::str(all.sizes()));
    const std::int64_t rows = all.size(0), count = p.get_int("count");
    if (count > rows)
      throw Error(path_, "count = " + std::to_string(count) + " but the file holds only " + std::to_string(rows) +
                             " embeddings");
    if (all.size(1) == 0) throw Error(path_, "the embeddings have size 0");
    all = all.slice(0, 0, count == 0 ? rows : count);
    // Normalised in the file's dtype, then cast, as sample.py does in NumPy before .float().
    if (p.get_bool("normalize")) all = l2_normalize(all);
    embeddings_ = all.to(torch::kFloat32).contiguous();
    if (!p.get_path("images").empty()) {
      faces_ = list_face_images(p.get_path("images"), kName);
      if (static_cast<std::int64_t>(faces_.size()) < embeddings_.size(0))
        throw Error(kName, "the images folder '" + p.get_path("images") + "' holds " + std::to_string(faces_.size()) +
                               " faces but " + std::to_string(embeddings_.size(0)) + " embeddings are read from " +
                               path_ + "; face i must be the one embedding i came from");
    }
  }

  std::int64_t size() const override { return embeddings_.size(0); }
  std::int64_t embedding_size() const override { return embeddings_.size(1); }

  IdentityContexts read(std::int64_t first, std::int64_t count) override {
    check_read_range(first, count, size(), kName);
    IdentityContexts out;
    out.embeddings = embeddings_.slice(0, first, first + count).clone();
    if (!faces_.empty())
      out.faces = read_faces(std::vector<std::string>(faces_.begin() + first, faces_.begin() + first + count));
    return out;
  }

 private:
  std::string path_;
  torch::Tensor embeddings_;        // [K,D] float32
  std::vector<std::string> faces_;  // face file of each row, when an images folder is given
};

}  // namespace

void register_npy(FactoryList& registry) {
  registry.add(
      Kind::ContextSource, "npy", "1.0.0",
      "Embeddings from an (N, D) .npy file (ADMIS elasticface_embeddings.npy), optionally with their faces",
      {ParamSpec::Path("path", "", "the .npy file: (N, D) float32 or float64, C or Fortran order").required_value(),
       ParamSpec::Int("count", 0, "use the first `count` rows; 0: all (ADMIS uses the first 10000)").at_least(0),
       ParamSpec::Bool("normalize", true, "divide each row by its L2 norm, as ADMIS sample.py does"),
       ParamSpec::Path("images", "",
                       "optional folder of the faces the embeddings came from; row i is the i-th file in name order")},
      [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<NpySource>(p); });
}

}  // namespace admis::contexts
