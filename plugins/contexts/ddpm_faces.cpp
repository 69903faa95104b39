// `ddpm-faces`: ADMIS's context-enhanced sampling. Instead of IDiff-Face's random Gaussian
// contexts, new faces are drawn from an unconditional diffusion model trained on FFHQ
// (DCFace's stage1/unconditional_generation: the ADM UNet ffhq_10m.pt, 100 respaced DDPM
// steps), aligned to the 112x112 ArcFace layout, and embedded by a recognition network
// (ElasticFace in ADMIS's extract_embed.py). The faces are kept for DCFace oversampling.
//
// The database is built when the source is created, in the layout ADMIS ships
// (context_database/), so other runs reuse it through the `npy` source:
//   <root>/candidates/<c>.png           every face drawn, candidate c from (seed, c) alone
//   <root>/images/<i>.png               the accepted faces, context i (hard links)
//   <root>/<embeddings_file>            [count, D] float32, row i = context i, L2-normalised
//   <root>/selection.csv                each candidate's embedding norm and verdict
//   <root>/ddpm-faces.settings          what the candidates were drawn with
// File names are zero-padded so that name order is index order, as ADMIS sorts them.
// Candidates already on disk are kept, so an interrupted build resumes where it stopped;
// embeddings are always computed from the saved 8-bit faces, so a resumed build gives the
// same database as an uninterrupted one.
//
// Identity quality controls (beyond the reference; off by default):
//   min_norm_quantile  reject candidates whose embedding norm (before normalisation) lies
//                      below this quantile of all candidates' norms. Recognition networks
//                      give low-quality faces small feature norms (MagFace, AdaFace).
//   max_similarity     reject a candidate whose cosine similarity to an already accepted
//                      context exceeds this, so that the contexts are distinct identities.
// Candidates are considered in index order and the first `count` that pass are accepted.

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "contexts.h"
#include "face_alignment.h"
#include "npy.h"

namespace admis::contexts {
namespace {

namespace fs = std::filesystem;

const char* const kName = "context-source/ddpm-faces";

std::string padded(std::int64_t index) {
  std::ostringstream name;
  name << std::setw(5) << std::setfill('0') << index << ".png";
  return name.str();
}

// A parameter value as text, for the settings file.
std::string describe(const Value& v) {
  std::ostringstream out;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) {
          out << "~";
        } else if constexpr (std::is_same_v<T, std::shared_ptr<const PluginSpec>>) {
          out << x->kind << "/" << x->name << " {";
          for (const auto& [key, value] : x->params) out << key << ": " << describe(value) << ", ";
          out << "weights: " << x->weights << "}";
        } else if constexpr (std::is_same_v<T, std::vector<bool>> || std::is_same_v<T, std::vector<std::int64_t>> ||
                             std::is_same_v<T, std::vector<double>> || std::is_same_v<T, std::vector<std::string>>) {
          out << "[";
          for (std::size_t i = 0; i < x.size(); ++i) out << (i ? ", " : "") << x[i];
          out << "]";
        } else if constexpr (std::is_same_v<T, double>) {
          out << std::setprecision(17) << x;
        } else {
          out << x;
        }
      },
      v.storage());
  return out.str();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_text_atomic(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.parent_path() / ("." + path.filename().string() + ".tmp");
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) throw Error(temporary.string(), "cannot write the file");
  }
  std::error_code ec;
  fs::rename(temporary, path, ec);
  if (ec) throw Error(path.string(), "cannot publish the file: " + ec.message());
}

class DdpmFaces : public ContextSource {
 public:
  DdpmFaces(const Params& p, Host& host)
      : host_(host),
        root_(p.get_path("root")),
        count_(p.get_int("count")),
        candidates_(p.get_int("candidates") == 0 ? p.get_int("count") : p.get_int("candidates")),
        seed_(static_cast<std::uint64_t>(p.get_int("seed"))),
        image_size_(p.get_int("image_size")),
        face_size_(p.get_int("face_size")),
        alignment_(p.get_string("alignment")),
        batch_size_(p.get_int("batch_size")) {
    if (candidates_ < count_)
      throw Error(kName, "candidates = " + std::to_string(candidates_) + " is less than count = " +
                             std::to_string(count_) + "; draw at least as many candidates as contexts");
    fs::create_directories(root_ / "candidates");
    check_settings(p);

    draw_candidates(p);

    auto backbone = host.create_as<Backbone>(p.get_plugin("backbone"));
    const torch::Tensor raw = embed_faces(
        *backbone, host, static_cast<std::size_t>(candidates_),
        [this](std::size_t c) { return read_face(candidate_path(static_cast<std::int64_t>(c)).string()); },
        p.get_bool("flip_sum"), p.get_int("embed_batch_size"));
    select(raw, p.get_float("min_norm_quantile"), p.get_float("max_similarity"), p.get_bool("normalize"));
    publish(p.get_string("embeddings_file"));
  }

  std::int64_t size() const override { return count_; }
  std::int64_t embedding_size() const override { return embeddings_.size(1); }

  IdentityContexts read(std::int64_t first, std::int64_t count) override {
    check_read_range(first, count, size(), kName);
    IdentityContexts out;
    out.embeddings = embeddings_.slice(0, first, first + count).clone();
    std::vector<std::string> paths;
    for (std::int64_t i = first; i < first + count; ++i) paths.push_back((root_ / "images" / padded(i)).string());
    out.faces = read_faces(paths);
    return out;
  }

 private:
  fs::path candidate_path(std::int64_t c) const { return root_ / "candidates" / padded(c); }

  // Candidates on disk must come from the same model, sampler, seed and alignment as the
  // ones this run would draw; otherwise the database would mix two distributions.
  void check_settings(const Params& p) {
    std::ostringstream settings;
    for (const char* key : {"denoiser", "scheduler", "seed", "image_size", "alignment", "face_size"})
      settings << key << ": " << describe(p.values().at(key)) << "\n";
    const fs::path file = root_ / "ddpm-faces.settings";
    if (fs::exists(file)) {
      const std::string before = read_text(file);
      if (before != settings.str())
        throw Error(kName, "'" + root_.string() + "' holds candidates drawn with other settings.\n  before:\n" +
                               before + "  now:\n" + settings.str() +
                               "Give another `root`, or delete its candidates/ folder and ddpm-faces.settings to "
                               "draw them again.");
      return;
    }
    write_text_atomic(file, settings.str());
  }

  // Draws the candidates not yet on disk: x_T and every step's noise for candidate c come
  // from generators seeded by (seed, c), so a face does not depend on its batch.
  void draw_candidates(const Params& p) {
    for (const auto& entry : fs::directory_iterator(root_ / "candidates")) {  // a killed run's partial files
      const std::string name = entry.path().filename().string();
      if (name.rfind(".", 0) == 0 && name.size() > 8 && name.substr(name.size() - 8) == ".tmp.png")
        fs::remove(entry.path());
    }
    std::vector<std::int64_t> missing;
    for (std::int64_t c = 0; c < candidates_; ++c)
      if (!fs::exists(candidate_path(c))) missing.push_back(c);
    if (missing.empty()) return;

    auto denoiser = host_.create_as<Denoiser>(p.get_plugin("denoiser"));
    auto scheduler = host_.create_as<Scheduler>(p.get_plugin("scheduler"));
    check_models(*denoiser, *scheduler, p);
    denoiser->module().eval();
    torch::NoGradGuard no_grad;

    host_.log(LogLevel::Info, kName,
              "drawing " + std::to_string(missing.size()) + " of " + std::to_string(candidates_) +
                  " candidate faces (" + std::to_string(scheduler->num_steps()) + " steps each) into " +
                  (root_ / "candidates").string());
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t first = 0; first < missing.size(); first += static_cast<std::size_t>(batch_size_)) {
      const std::size_t last = std::min(missing.size(), first + static_cast<std::size_t>(batch_size_));
      const std::vector<std::int64_t> batch(missing.begin() + first, missing.begin() + last);
      const torch::Tensor images = sample_faces(*denoiser, *scheduler, batch);
      for (std::size_t j = 0; j < batch.size(); ++j)
        write_face_png(candidate_path(batch[j]).string(), align(images[static_cast<std::int64_t>(j)]));
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = static_cast<double>(last) / std::max(seconds, 1e-9);
      std::ostringstream line;
      line << std::fixed << std::setprecision(2) << last << "/" << missing.size() << " faces, " << rate
           << " faces/s, ETA " << std::setprecision(0) << static_cast<double>(missing.size() - last) / rate << " s";
      host_.log(LogLevel::Info, kName, line.str());
    }
  }

  void check_models(const Denoiser& denoiser, const Scheduler& scheduler, const Params& p) const {
    const std::string denoiser_name = "denoiser/" + p.get_plugin("denoiser").name;
    if (denoiser.context_size() != 0)
      throw Error(kName, denoiser_name +
                             " is context-conditional; ddpm-faces draws faces from an unconditional "
                             "model (e.g. adm-unet with ffhq_10m.pt)");
    if (denoiser.in_channels() != 3)
      throw Error(kName, denoiser_name + " works on " + std::to_string(denoiser.in_channels()) +
                             " channels; ddpm-faces samples RGB pixels (3 channels)");
    const std::int64_t expected = scheduler.expects_learned_variance() ? 6 : 3;
    if (denoiser.out_channels() != expected)
      throw Error(kName, denoiser_name + " outputs " + std::to_string(denoiser.out_channels()) +
                             " channels but scheduler/" + p.get_plugin("scheduler").name + " expects " +
                             std::to_string(expected) +
                             (scheduler.expects_learned_variance() ? " (eps and the learned variance)" : " (eps)") +
                             "; set the scheduler's learn_sigma to match the model");
  }

  // The reverse process for a batch of candidates: [B,S,S,3] uint8 images, mapped from
  // [-1,1] as guided-diffusion's image_sample.py does ((x + 1) * 127.5, clamped, truncated).
  torch::Tensor sample_faces(Denoiser& denoiser, const Scheduler& scheduler, const std::vector<std::int64_t>& batch) {
    const std::int64_t B = static_cast<std::int64_t>(batch.size()), S = image_size_;
    std::vector<at::Generator> step_noise;
    std::vector<torch::Tensor> x_T;
    for (std::int64_t c : batch) {
      auto start = at::detail::createCPUGenerator(splitmix64(splitmix64(seed_) ^ static_cast<std::uint64_t>(c)));
      x_T.push_back(at::randn({3, S, S}, start, torch::kFloat32));
      step_noise.push_back(at::detail::createCPUGenerator(
          splitmix64(splitmix64(seed_ ^ 0x7374657073ULL /* "steps" */) ^ static_cast<std::uint64_t>(c))));
    }
    const torch::Device device = host_.device();
    torch::Tensor x = torch::stack(x_T).to(device);
    for (std::int64_t i = 0; i < scheduler.num_steps(); ++i) {
      const torch::Tensor t = torch::full({B}, scheduler.model_timestep(i), torch::kInt64).to(device);
      const torch::Tensor model_output = denoiser.forward(x, t);
      torch::Tensor z;
      if (scheduler.uses_noise(i)) {
        std::vector<torch::Tensor> rows;
        for (auto& g : step_noise) rows.push_back(at::randn({3, S, S}, g, torch::kFloat32));
        z = torch::stack(rows).to(device);
      }
      x = scheduler.step(model_output, i, x, z).prev_sample;
    }
    return ((x + 1) * 127.5).clamp(0, 255).to(torch::kCPU, torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
  }

  // [S,S,3] uint8 generated face -> [face_size, face_size, 3] in the ArcFace layout.
  torch::Tensor align(const torch::Tensor& image) const {
    const torch::Tensor src = image.contiguous();
    const cv::Mat in(static_cast<int>(src.size(0)), static_cast<int>(src.size(1)), CV_8UC3,
                     const_cast<std::uint8_t*>(src.data_ptr<std::uint8_t>()));
    torch::Tensor face = torch::empty({face_size_, face_size_, 3}, torch::kUInt8);
    cv::Mat out(static_cast<int>(face_size_), static_cast<int>(face_size_), CV_8UC3, face.data_ptr<std::uint8_t>());
    const cv::Size size(static_cast<int>(face_size_), static_cast<int>(face_size_));
    if (alignment_ == "ffhq") {
      cv::warpAffine(in, out, cv::Mat(ffhq_to_arcface_crop(image_size_, face_size_)), size,
                     cv::INTER_LINEAR | cv::WARP_INVERSE_MAP, cv::BORDER_REPLICATE);
    } else {  // resize: the whole image, for models that already generate aligned crops
      cv::resize(in, out, size, 0, 0, image_size_ > face_size_ ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
    return face;
  }

  // The quality controls, then the first `count_` candidates that pass.
  void select(const torch::Tensor& raw, double min_norm_quantile, double max_similarity, bool normalize) {
    const torch::Tensor norms = raw.norm(2, {1});
    const torch::Tensor unit = l2_normalize(raw);
    double norm_threshold = -1;
    if (min_norm_quantile > 0)
      norm_threshold = torch::quantile(norms.to(torch::kFloat64), min_norm_quantile).item<double>();

    std::vector<std::int64_t> accepted;
    std::vector<std::string> verdict(static_cast<std::size_t>(candidates_), "not needed");
    std::vector<double> nearest(static_cast<std::size_t>(candidates_), std::nan(""));
    std::int64_t low_norm = 0, similar = 0;
    for (std::int64_t c = 0; c < candidates_ && static_cast<std::int64_t>(accepted.size()) < count_; ++c) {
      auto& v = verdict[static_cast<std::size_t>(c)];
      if (norms[c].item<double>() < norm_threshold) {
        v = "low norm";
        ++low_norm;
        continue;
      }
      if (!accepted.empty()) {
        const double cosine =
            unit.index_select(0, torch::tensor(accepted, torch::kInt64)).matmul(unit[c]).max().item<double>();
        nearest[static_cast<std::size_t>(c)] = cosine;
        if (cosine > max_similarity) {
          v = "similar";
          ++similar;
          continue;
        }
      }
      v = "accepted " + std::to_string(accepted.size());
      accepted.push_back(c);
    }

    std::ostringstream csv;
    csv << "candidate,norm,nearest_cosine,verdict\n" << std::setprecision(8);
    for (std::int64_t c = 0; c < candidates_; ++c) {
      csv << padded(c) << "," << norms[c].item<double>() << ",";
      if (!std::isnan(nearest[static_cast<std::size_t>(c)])) csv << nearest[static_cast<std::size_t>(c)];
      csv << "," << verdict[static_cast<std::size_t>(c)] << "\n";
    }
    write_text_atomic(root_ / "selection.csv", csv.str());

    std::ostringstream report;
    report << candidates_ << " candidates: " << accepted.size() << " accepted";
    if (min_norm_quantile > 0)
      report << ", " << low_norm << " rejected for an embedding norm below the " << min_norm_quantile << " quantile ("
             << std::setprecision(4) << norm_threshold << ")";
    if (max_similarity < 1)
      report << ", " << similar << " rejected as near-duplicates (cosine > " << max_similarity << ")";
    host_.log(LogLevel::Info, kName, report.str());
    if (static_cast<std::int64_t>(accepted.size()) < count_)
      throw Error(kName, report.str() + "; " + std::to_string(count_) +
                             " contexts are needed: raise `candidates` (drawn faces are kept, so only the new ones are "
                             "drawn), or relax min_norm_quantile / max_similarity");

    accepted_ = accepted;
    const torch::Tensor rows = torch::tensor(accepted, torch::kInt64);
    embeddings_ = (normalize ? unit : raw).index_select(0, rows).contiguous();
  }

  // images/ (hard links to the accepted candidates) and the embeddings file, each replaced
  // as a whole so a reader never sees a mixture of two selections.
  void publish(const std::string& embeddings_file) {
    const fs::path images = root_ / "images", staging = root_ / ".images.tmp";
    fs::remove_all(staging);
    fs::create_directories(staging);
    for (std::size_t i = 0; i < accepted_.size(); ++i) {
      const fs::path from = candidate_path(accepted_[i]), to = staging / padded(static_cast<std::int64_t>(i));
      std::error_code ec;
      fs::create_hard_link(from, to, ec);
      if (ec) fs::copy_file(from, to);  // file systems without hard links
    }
    fs::remove_all(images);
    fs::rename(staging, images);
    write_npy((root_ / embeddings_file).string(), embeddings_);
  }

  Host& host_;
  fs::path root_;
  std::int64_t count_, candidates_;
  std::uint64_t seed_;
  std::int64_t image_size_, face_size_;
  std::string alignment_;
  std::int64_t batch_size_;
  std::vector<std::int64_t> accepted_;  // candidate index of each context
  torch::Tensor embeddings_;            // [count, D] float32
};

}  // namespace

void register_ddpm_faces(FactoryList& registry) {
  registry.add(
      Kind::ContextSource, "ddpm-faces", "1.0.0",
      "ADMIS context-enhanced sampling: faces drawn from an unconditional diffusion model (DCFace's FFHQ ADM), "
      "aligned to the ArcFace layout and embedded by a backbone; kept as a resumable context database",
      {
          ParamSpec::Plugin("denoiser", "denoiser",
                            "the unconditional face model with its weights, e.g. adm-unet with ffhq_10m.pt"),
          ParamSpec::Plugin("scheduler", "scheduler",
                            "its sampler, e.g. respaced-ddpm {learn_sigma: true, timestep_respacing: \"100\"}"),
          ParamSpec::Plugin("backbone", "backbone",
                            "the recognition network that embeds the faces (ElasticFace: iresnet)"),
          ParamSpec::Path("root", "", "the context database folder (candidates/, images/, embeddings)")
              .required_value(),
          ParamSpec::Int("count", 10000, "contexts (identities) to provide").at_least(1),
          ParamSpec::Int("candidates", 0,
                         "faces to draw; 0: count. More than count when the quality controls reject some")
              .at_least(0),
          ParamSpec::Int("seed", 0, "candidate c depends only on (seed, c)").at_least(0),
          ParamSpec::Int("image_size", 256, "the generated images' side (ffhq_10m.pt: 256)").at_least(8),
          ParamSpec::String("alignment", "ffhq",
                            "ffhq: the fixed FFHQ-to-ArcFace similarity transform; resize: scale the whole image")
              .one_of({"ffhq", "resize"}),
          ParamSpec::Int("face_size", 112, "side of the aligned faces written and embedded").at_least(8),
          ParamSpec::Int("batch_size", 8, "faces per reverse-process batch").at_least(1),
          ParamSpec::Int("embed_batch_size", 64, "faces per backbone forward pass").at_least(1),
          ParamSpec::Bool(
              "flip_sum", true,
              "add the embedding of the horizontally flipped face (ADMIS extract_embed.py does not: false)"),
          ParamSpec::Bool("normalize", true, "divide each embedding by its L2 norm, as ADMIS does"),
          ParamSpec::Float("min_norm_quantile", 0.0,
                           "reject candidates whose embedding norm is below this quantile of all candidates' norms "
                           "(a face-quality proxy); 0: off")
              .range(0, 0.99),
          ParamSpec::Float("max_similarity", 1.0,
                           "reject a candidate whose cosine similarity to an accepted context exceeds this "
                           "(distinct identities); 1: off")
              .range(-1, 1),
          ParamSpec::String("embeddings_file", "elasticface_embeddings.npy", "name of the embeddings file in root"),
      },
      [](const Params& p, Host& host) -> std::unique_ptr<Plugin> { return std::make_unique<DdpmFaces>(p, host); });
}

}  // namespace admis::contexts
