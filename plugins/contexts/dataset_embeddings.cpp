// Contexts for generator training: one embedding per image of a labelled dataset, in the
// reader's order, as ADMIS precomputes ElasticFace embeddings of every CASIA-WebFace image
// (the `CASIA_file` dataset's elasticface_embeddings.npy + image_names.pkl). Here the
// dataset reader plugin supplies the images and a backbone plugin embeds them when the
// source is created, so train_generator pairs image i with context i without a names file.
//
// Images are embedded as image-folder does (ToTensor + Normalize(0.5, 0.5), resized to the
// backbone's input, eval mode, optional flip sum, L2 normalisation); images a reader only
// has encoded (JPEG/PNG bytes) are decoded first. `faces` are the images themselves.

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "contexts.h"
#include "npy.h"

namespace admis::contexts {
namespace {

const char* const kName = "context-source/dataset-embeddings";

// The sample's pixels, decoding its encoded file when the reader kept only that.
torch::Tensor pixels_of(const Sample& s, std::int64_t index) {
  if (s.image.defined()) return s.image;
  if (s.encoded.empty())
    throw Error(kName, "image " + std::to_string(index) + " (" + s.label_name + "/" + s.name +
                           ") has neither pixels nor an encoded file");
  const cv::Mat bytes(1, static_cast<int>(s.encoded.size()), CV_8UC1, const_cast<char*>(s.encoded.data()));
  const cv::Mat bgr = cv::imdecode(bytes, cv::IMREAD_COLOR);
  if (bgr.empty()) throw Error(kName, "cannot decode image " + s.label_name + "/" + s.name);
  torch::Tensor image = torch::empty({bgr.rows, bgr.cols, 3}, torch::kUInt8);
  cv::Mat rgb(bgr.rows, bgr.cols, CV_8UC3, image.data_ptr<std::uint8_t>());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return image;
}

class DatasetEmbeddings : public ContextSource {
 public:
  DatasetEmbeddings(const Params& p, Host& host) {
    reader_ = host.create_as<DatasetReader>(p.get_plugin("data"));
    reader_->open(p.get_path("data_path"));
    if (reader_->size() == 0) throw Error(kName, "the dataset '" + p.get_path("data_path") + "' holds no images");
    auto backbone = host.create_as<Backbone>(p.get_plugin("backbone"));
    const std::size_t n = static_cast<std::size_t>(reader_->size());
    embeddings_ = embed_faces(
        *backbone, host, n,
        [this](std::size_t i) {
          const auto index = static_cast<std::int64_t>(i);
          return pixels_of(reader_->read(index), index);
        },
        p.get_bool("flip_sum"), p.get_int("batch_size"));
    if (p.get_bool("normalize")) embeddings_ = l2_normalize(embeddings_);
    host.log(LogLevel::Info, kName,
             "embedded " + std::to_string(n) + " images of " + std::to_string(reader_->class_names().size()) +
                 " identities with backbone/" + p.get_plugin("backbone").name);
    if (!p.get_path("save_npy").empty()) write_npy(p.get_path("save_npy"), embeddings_);
  }

  std::int64_t size() const override { return embeddings_.size(0); }
  std::int64_t embedding_size() const override { return embeddings_.size(1); }

  IdentityContexts read(std::int64_t first, std::int64_t count) override {
    check_read_range(first, count, size(), kName);
    IdentityContexts out;
    out.embeddings = embeddings_.slice(0, first, first + count).clone();
    std::vector<torch::Tensor> faces;
    for (std::int64_t i = first; i < first + count; ++i) faces.push_back(pixels_of(reader_->read(i), i));
    if (!faces.empty()) out.faces = torch::stack(faces);
    return out;
  }

 private:
  std::shared_ptr<DatasetReader> reader_;
  torch::Tensor embeddings_;  // [N,D] float32, row i = image i of the reader
};

}  // namespace

void register_dataset_embeddings(FactoryList& registry) {
  registry.add(
      Kind::ContextSource, "dataset-embeddings", "1.0.0",
      "One context per image of a labelled dataset (reader order), embedded by a backbone: the per-image contexts "
      "IDiff-Face/ADMIS train the generator with",
      with_embedding_params(
          {ParamSpec::Plugin("data", "dataset-reader", "the dataset's reader, e.g. image-folder, tfrecord, toy-faces"),
           ParamSpec::Path("data_path", "", "what the reader opens")},
          false, "add the embedding of the horizontally flipped image (ADMIS's training contexts do not)"),
      [](const Params& p, Host& host) -> std::unique_ptr<Plugin> {
        return std::make_unique<DatasetEmbeddings>(p, host);
      });
}

}  // namespace admis::contexts
