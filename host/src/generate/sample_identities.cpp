// Identity sampling: see generation.h (sample_identities).
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <ostream>
#include <set>

#include "admis/host/data_loader.h"
#include "admis/host/generation.h"
#include "admis/host/text.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

constexpr const char* kWho = "sample";

// [H,W,3] uint8 RGB from a PNG/JPEG file.
torch::Tensor read_rgb(const std::string& path) {
  cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
  if (bgr.empty()) throw Error(path, "cannot read the image");
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return torch::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, torch::kUInt8).clone();
}

}  // namespace

std::pair<std::int64_t, std::int64_t> parse_shard(const std::string& text, const std::string& where) {
  const auto slash = text.find('/');
  try {
    if (slash != std::string::npos) {
      std::size_t used_i = 0, used_n = 0;
      const std::int64_t i = std::stoll(text.substr(0, slash), &used_i);
      const std::int64_t n = std::stoll(text.substr(slash + 1), &used_n);
      if (used_i == slash && used_n == text.size() - slash - 1 && n >= 1 && i >= 0 && i < n) return {i, n};
    }
  } catch (const std::exception&) {
  }
  throw Error(where, fmt::format("shard '{}': give INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4", text));
}

IdentitySamplingSummary sample_identities(Denoiser& denoiser, Codec& codec, const Scheduler& scheduler,
                                          ContextSource& contexts, const std::vector<Augmenter*>& identity_augmenters,
                                          const IdentitySamplingOptions& o, const std::string& images_dir) {
  for (Augmenter* a : identity_augmenters)
    if (a->scope() != AugmenterScope::Identity)
      throw Error(kWho, "augmenters of the sample stage edit identities (e.g. id-oversample); image augmenters belong "
                        "to training");
  if (o.images_per_identity < 1 || o.batch_size < 1 || o.output_size < 1 || o.generation_size < 1)
    throw Error(kWho, "images_per_identity, batch_size, image_size and generation_size must be at least 1");
  const std::int64_t available = contexts.size();
  if (o.first_identity < 0 || o.first_identity >= available)
    throw Error(kWho, fmt::format("first_identity {} is outside the context source's {} identities", o.first_identity,
                                  available));
  const std::int64_t end = o.identities > 0 ? o.first_identity + o.identities : available;
  if (end > available)
    throw Error(kWho, fmt::format("{} identities from {} requested, the context source has {}", end - o.first_identity,
                                  o.first_identity, available));
  if (denoiser.context_size() > 0 && contexts.embedding_size() != denoiser.context_size())
    throw Error(kWho, fmt::format("the context source gives {}-dimensional embeddings, the denoiser expects {}",
                                  contexts.embedding_size(), denoiser.context_size()));

  torch::Device device(torch::kCPU);
  for (const auto& p : denoiser.module().parameters()) {
    device = p.device();
    break;
  }
  denoiser.module().eval();
  codec.module().eval();
  std::vector<std::int64_t> latent_shape;
  {
    torch::InferenceMode guard;
    const torch::Tensor probe = codec.encode(torch::zeros({1, 3, o.generation_size, o.generation_size}, device));
    latent_shape = probe.sizes().vec();
  }
  if (latent_shape.size() != 4 || latent_shape[1] != denoiser.in_channels())
    throw Error(kWho, fmt::format("the codec makes latents [{}] from {}x{} images, the denoiser takes {} channels",
                                  fmt::join(latent_shape, ","), o.generation_size, o.generation_size,
                                  denoiser.in_channels()));

  std::vector<std::int64_t> mine;
  for (std::int64_t i = o.first_identity; i < end; ++i)
    if (i % o.shard_count == o.shard_index) mine.push_back(i);
  fs::create_directories(images_dir);
  // Partial identities left by a killed run of this shard (hidden .<id>.tmp-<pid> folders)
  // are removed; they are redone below. Other shards' identities are not touched.
  const std::set<std::int64_t> my_ids(mine.begin(), mine.end());
  for (const auto& entry : fs::directory_iterator(images_dir)) {
    const std::string name = entry.path().filename().string();
    const auto mark = name.find(".tmp-");
    if (name.size() < 2 || name[0] != '.' || mark == std::string::npos) continue;
    const std::string digits = name.substr(1, mark - 1);
    if (!digits.empty() && std::all_of(digits.begin(), digits.end(), ::isdigit) && my_ids.count(std::stoll(digits)))
      fs::remove_all(entry.path());
  }

  IdentitySamplingSummary summary;
  summary.identities = static_cast<std::int64_t>(mine.size());
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const std::int64_t M = o.images_per_identity;
  for (std::size_t n = 0; n < mine.size(); ++n) {
    const std::int64_t id = mine[n];
    const fs::path folder = fs::path(images_dir) / std::to_string(id);
    if (fs::is_directory(folder)) {
      ++summary.skipped;
      continue;
    }
    const IdentityContexts ctx = contexts.read(id, 1);
    torch::Tensor context;
    if (denoiser.context_size() > 0) context = ctx.embeddings.to(torch::kFloat32).to(device);

    // Image k's starting noise depends on (seed, id, k) alone.
    std::vector<torch::Tensor> noises;
    std::vector<std::int64_t> one(latent_shape.begin() + 1, latent_shape.end());
    for (std::int64_t k = 0; k < M; ++k) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(
          mix_seed(o.seed, static_cast<std::uint64_t>(id), static_cast<std::uint64_t>(k)));
      noises.push_back(at::randn(one, gen, torch::TensorOptions(torch::kFloat32)));
    }
    const torch::Tensor x_T = torch::stack(noises).to(device);

    std::vector<torch::Tensor> images;
    for (std::int64_t b = 0; b < M; b += o.batch_size) {
      const std::int64_t size = std::min(o.batch_size, M - b);
      auto step_noise = at::make_generator<at::CPUGeneratorImpl>(
          mix_seed(o.seed ^ 0x6e6f697365ULL /* "noise" */, static_cast<std::uint64_t>(id), static_cast<std::uint64_t>(b)));
      const torch::Tensor batch_context = context.defined() ? context.expand({size, context.size(1)}) : torch::Tensor();
      const torch::Tensor latents =
          sample_reverse(denoiser, scheduler, x_T.slice(0, b, b + size), batch_context, o.guidance_scale, step_noise);
      torch::InferenceMode guard;
      torch::Tensor decoded = codec.decode(latents).add(1).mul(0.5);  // [-1,1] -> [0,1]
      if (decoded.size(2) != o.output_size || decoded.size(3) != o.output_size)
        decoded = torch::nn::functional::interpolate(decoded, torch::nn::functional::InterpolateFuncOptions()
                                                                  .size(std::vector<std::int64_t>{o.output_size, o.output_size})
                                                                  .mode(torch::kBilinear)
                                                                  .align_corners(false));
      for (std::int64_t k = 0; k < size; ++k) images.push_back(to_uint8_image(decoded[k]));
    }

    IdentitySamples identity;
    identity.label_name = std::to_string(id);
    for (std::int64_t k = 0; k < M; ++k) {
      Sample s;
      s.image = images[static_cast<std::size_t>(k)];
      s.label = id;
      s.label_name = identity.label_name;
      s.name = fmt::format("{}.png", k);
      identity.samples.push_back(std::move(s));
    }
    if (ctx.faces.defined()) identity.context_face = ctx.faces[0];
    for (Augmenter* a : identity_augmenters) a->augment_identity(identity);

    const fs::path tmp = fs::path(images_dir) / fmt::format(".{}.tmp-{}", id, ::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    for (const Sample& s : identity.samples) {
      const std::string path = (tmp / s.name).string();
      if (s.image.defined()) {
        write_png(s.image, path);
      } else {
        std::ofstream out(path, std::ios::binary);
        out.write(s.encoded.data(), static_cast<std::streamsize>(s.encoded.size()));
        if (!out) throw Error(path, "cannot write the image");
      }
    }
    fs::rename(tmp, folder);
    ++summary.generated;

    if (o.progress) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const double rate = static_cast<double>(summary.generated) / std::max(elapsed, 1e-9);
      const auto remaining = static_cast<double>(mine.size() - n - 1);
      *o.progress << fmt::format("[{}] identity {} ({}/{}) {:.3f} identities/s {:.1f} images/s ETA {}", kWho, id, n + 1,
                                 mine.size(), rate, rate * static_cast<double>(M), format_duration(remaining / rate))
                  << std::endl;
    }
  }

  // preview.png: the first identities of this shard, up to 8 images each, one row per identity.
  const std::int64_t rows = std::min<std::int64_t>(o.preview_identities, summary.identities);
  if (rows > 0) {
    const std::int64_t per_row = std::min<std::int64_t>(8, M);
    std::vector<torch::Tensor> tiles;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t k = 0; k < per_row; ++k) {
        const torch::Tensor rgb =
            read_rgb((fs::path(images_dir) / std::to_string(mine[static_cast<std::size_t>(r)]) / fmt::format("{}.png", k)).string());
        tiles.push_back(rgb.permute({2, 0, 1}).to(torch::kFloat32).div(255));
      }
    save_image_grid(torch::stack(tiles), per_row, (fs::path(images_dir).parent_path() / "preview.png").string());
  }
  summary.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return summary;
}

}  // namespace admis::host
