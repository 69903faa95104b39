// admis_contexts: identity context sources, the identity embeddings a conditional
// denoiser samples from.
//   gaussian      IDiff-Face's synthetic identities: normalised N(0, I) vectors
//   npy           an (N, D) .npy of embeddings, as ADMIS reads elasticface_embeddings.npy
//   image-folder  a folder of faces embedded by a backbone plugin (ADMIS extract_embed.py)
//   ddpm-faces    faces drawn from an unconditional diffusion model, aligned and embedded
//                 (ADMIS's context-enhanced sampling)
//   dataset-embeddings  one embedding per image of a labelled dataset (generator training)

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "admis/sdk/plugin.h"
#include "contexts.h"

namespace admis::contexts {

namespace fs = std::filesystem;

void check_read_range(std::int64_t first, std::int64_t count, std::int64_t size, const std::string& plugin) {
  if (first < 0 || count < 0 || first > size || count > size - first)
    throw Error(plugin, "read(" + std::to_string(first) + ", " + std::to_string(count) + ") is outside the " +
                            std::to_string(size) + " contexts available (indices 0.." + std::to_string(size - 1) + ")");
}

std::vector<std::string> list_face_images(const std::string& folder, const std::string& plugin) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) throw Error(plugin, "'" + folder + "' is not a folder");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (!entry.is_regular_file()) continue;
    std::string ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (ext == ".png" || ext == ".jpg" || ext == ".jpeg") names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> paths;
  for (const auto& n : names) paths.push_back((fs::path(folder) / n).string());
  return paths;
}

torch::Tensor read_face(const std::string& path) {
  cv::Mat bgr;
  try {
    bgr = cv::imread(path, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    throw Error(path, std::string("cannot read the image: ") + e.what());
  }
  if (bgr.empty()) throw Error(path, "cannot read the image (missing, unreadable, or not a PNG/JPEG file)");
  auto image = torch::empty({bgr.rows, bgr.cols, 3}, torch::kUInt8);
  cv::Mat rgb(bgr.rows, bgr.cols, CV_8UC3, image.data_ptr<std::uint8_t>());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return image;
}

torch::Tensor read_faces(const std::vector<std::string>& paths) {
  std::vector<torch::Tensor> faces;
  for (const auto& p : paths) {
    faces.push_back(read_face(p));
    if (faces.back().sizes() != faces.front().sizes())
      throw Error(p, "the face is " + std::to_string(faces.back().size(0)) + "x" + std::to_string(faces.back().size(1)) +
                         " but " + paths.front() + " is " + std::to_string(faces.front().size(0)) + "x" +
                         std::to_string(faces.front().size(1)) + "; the faces of one read must share a size");
  }
  if (faces.empty()) return torch::empty({0, 0, 0, 3}, torch::kUInt8);
  return torch::stack(faces);
}

void write_face_png(const std::string& path, const torch::Tensor& face) {
  if (face.dim() != 3 || face.size(2) != 3 || face.scalar_type() != torch::kUInt8)
    throw Error(path, "expected an [H,W,3] uint8 RGB face, got " + c10::str(face.sizes()) + " " +
                          std::string(c10::toString(face.scalar_type())));
  const torch::Tensor rgb = face.contiguous();
  cv::Mat bgr;
  cv::cvtColor(cv::Mat(static_cast<int>(rgb.size(0)), static_cast<int>(rgb.size(1)), CV_8UC3,
                       const_cast<std::uint8_t*>(rgb.data_ptr<std::uint8_t>())),
               bgr, cv::COLOR_RGB2BGR);
  const fs::path target(path);
  const fs::path temporary = target.parent_path() / ("." + target.stem().string() + ".tmp.png");
  if (!cv::imwrite(temporary.string(), bgr)) throw Error(temporary.string(), "cannot write the PNG image");
  std::error_code ec;
  fs::rename(temporary, target, ec);
  if (ec) throw Error(path, "cannot publish the PNG image: " + ec.message());
}

torch::Tensor embed_faces(Backbone& backbone, Host& host, std::size_t count,
                          const std::function<torch::Tensor(std::size_t)>& face_at, bool flip_sum,
                          std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  backbone.module().eval();
  const std::int64_t side = backbone.input_size();
  std::vector<torch::Tensor> parts;
  for (std::size_t start = 0; start < count; start += static_cast<std::size_t>(batch_size)) {
    const std::size_t end = std::min(count, start + static_cast<std::size_t>(batch_size));
    std::vector<torch::Tensor> batch;
    for (std::size_t i = start; i < end; ++i) {
      torch::Tensor x = face_at(i).permute({2, 0, 1}).to(torch::kFloat32).div(255).sub(0.5).div(0.5);
      if (x.size(1) != side || x.size(2) != side)
        x = at::upsample_bilinear2d(x.unsqueeze(0), {side, side}, /*align_corners=*/false).squeeze(0);
      batch.push_back(x.contiguous());
    }
    const torch::Tensor images = torch::stack(batch).to(host.device());
    torch::Tensor e = backbone.forward(images);
    if (flip_sum) e = e + backbone.forward(images.flip({3}));
    parts.push_back(e.to(torch::kCPU, torch::kFloat32));
  }
  if (parts.empty()) return torch::empty({0, backbone.embedding_size()}, torch::kFloat32);
  return torch::cat(parts).contiguous();
}

std::vector<ParamSpec> with_embedding_params(std::vector<ParamSpec> own, bool flip_sum_default,
                                             const std::string& flip_sum_doc) {
  own.push_back(
      ParamSpec::Plugin("backbone", "backbone", "the recognition network that embeds the images (give its weights)"));
  own.push_back(ParamSpec::Bool("flip_sum", flip_sum_default, flip_sum_doc));
  own.push_back(ParamSpec::Bool("normalize", true, "divide each embedding by its L2 norm, as ADMIS does"));
  own.push_back(ParamSpec::Int("batch_size", 64, "images embedded per forward pass").at_least(1));
  own.push_back(ParamSpec::Path("save_npy", "", "optional: also write the embeddings to this .npy file (atomically)"));
  return own;
}

torch::Tensor l2_normalize(const torch::Tensor& rows) {
  return rows / rows.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
}

}  // namespace admis::contexts

ADMIS_PLUGIN("admis_contexts", "1.0.0") {
  admis::contexts::register_gaussian(registry);
  admis::contexts::register_npy(registry);
  admis::contexts::register_image_folder(registry);
  admis::contexts::register_ddpm_faces(registry);
  admis::contexts::register_dataset_embeddings(registry);
}
