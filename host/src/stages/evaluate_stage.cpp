// The `evaluate` stage: a backbone checkpoint on insightface verification sets, writing
// results.json, results.md and one ROC picture per set into the stage's folder. The
// `verification_pairs` stage makes such a set from any dataset (e.g. held-out toy faces).
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <atomic>
#include <exception>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "admis/host/data_loader.h"
#include "admis/host/manifest.h"
#include "admis/host/stages.h"
#include "admis/host/verification.h"

namespace fs = boost::filesystem;

namespace admis::host {

StageType evaluate_stage() {
  return StageType{
      "evaluate",
      "face verification on insightface .bin sets: 10-fold accuracy, TAR@FAR=1e-3, ROC curves",
      {
          ParamSpec::Plugin("backbone", "backbone",
                            "the backbone to evaluate: {plugin: NAME, params: {...}, weights: CHECKPOINT}"),
          ParamSpec::Path("data", "", "folder of .bin verification sets (lfw.bin, cfp_fp.bin, ...)").required_value(),
          ParamSpec::Int("batch_size", 64, "images per forward pass").at_least(1),
          ParamSpec::StringList("sets", {}, "only these sets, by file name without .bin (default: every .bin in data)"),
      },
      [](const Params& keys, StageContext& ctx) {
        const PluginSpec& spec = keys.get_plugin("backbone");
        if (spec.weights.empty())
          throw Error(ctx.stage_name, fmt::format("backbone/{} has no weights; give backbone.weights: CHECKPOINT", spec.name));
        const auto bins = find_verification_sets(keys.get_path("data"), keys.get_strings("sets"));
        auto plugin = ctx.runtime.create(spec);
        auto* backbone = dynamic_cast<Backbone*>(plugin.get());
        if (!backbone) throw Error("backbone/" + spec.name, "the plugin does not implement admis::Backbone");
        EvaluationOptions options;
        options.batch_size = keys.get_int("batch_size");
        options.json_path = (fs::path(ctx.output_dir) / "results.json").string();
        options.markdown_path = (fs::path(ctx.output_dir) / "results.md").string();
        options.roc_dir = ctx.output_dir;
        options.title = fmt::format("{}: backbone/{} ({})", ctx.stage_name, spec.name, fs::path(spec.weights).filename().string());
        const auto results = evaluate_backbone(*backbone, bins, options, std::cerr);
        std::cerr << results_table(results);
      }};
}

namespace {

// Runs body(i) for i in [0, n) on `threads` threads; the first exception is rethrown.
template <class Body>
void parallel_for(std::int64_t n, int threads, Body&& body) {
  threads = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(threads, n)));
  std::atomic<std::int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    try {
      for (std::int64_t i = next++; i < n; i = next++) body(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

bool has_format(const std::string& bytes, const std::string& format) {
  if (format == "png") return bytes.rfind("\x89PNG", 0) == 0;
  return bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xFF && static_cast<unsigned char>(bytes[1]) == 0xD8 &&
         static_cast<unsigned char>(bytes[2]) == 0xFF;
}

// A sample as an encoded file of `format` (OpenCV's BGR, as insightface's sets hold): its
// own file when it already is one, else its pixels encoded. `size` receives W x H.
std::string encoded_as(const Sample& s, const std::string& format, int jpeg_quality, cv::Size& size,
                       const std::string& where) {
  cv::Mat bgr;
  if (s.image.defined()) {
    const torch::Tensor rgb = s.image.contiguous();
    if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != torch::kUInt8)
      throw Error(where, "expected an [H,W,3] uint8 RGB image from the reader");
    cv::Mat view(static_cast<int>(rgb.size(0)), static_cast<int>(rgb.size(1)), CV_8UC3, rgb.data_ptr());
    cv::cvtColor(view, bgr, cv::COLOR_RGB2BGR);
  } else if (!s.encoded.empty()) {
    bgr = cv::imdecode(cv::Mat(1, static_cast<int>(s.encoded.size()), CV_8UC1, const_cast<char*>(s.encoded.data())),
                       cv::IMREAD_COLOR);
    if (bgr.empty()) throw Error(where, "cannot decode the sample's image");
  } else {
    throw Error(where, "the reader gave neither pixels nor an encoded image");
  }
  size = bgr.size();
  if (has_format(s.encoded, format)) return s.encoded;
  std::vector<unsigned char> out;
  const std::vector<int> options =
      format == "jpg" ? std::vector<int>{cv::IMWRITE_JPEG_QUALITY, jpeg_quality} : std::vector<int>{};
  if (!cv::imencode("." + format, bgr, out, options)) throw Error(where, "cannot encode the image as " + format);
  return std::string(out.begin(), out.end());
}

}  // namespace

StageType verification_pairs_stage() {
  return StageType{
      "verification_pairs",
      "an insightface .bin of same- and different-identity pairs drawn from a dataset (e.g. held-out identities)",
      {
          ParamSpec::Plugin("data", "dataset-reader", "the images' reader, e.g. toy-faces with held-out identities"),
          ParamSpec::Path("data_path", "", "what the reader opens (empty for readers that read nothing, e.g. toy-faces)"),
          ParamSpec::Int("pairs", 3000, "pairs to draw, an even number: half same-identity, half different").at_least(2),
          ParamSpec::String("set_name", "pairs",
                            "the set's name, as evaluate reports it: the stage writes <stage folder>/<set_name>.bin"),
          ParamSpec::String("image_format", "png", "how the images are stored in the .bin").one_of({"png", "jpg"}),
          ParamSpec::Int("jpeg_quality", 95, "JPEG quality with image_format jpg").range(1, 100),
      },
      [](const Params& keys, StageContext& ctx) {
        const std::int64_t pairs = keys.get_int("pairs");
        if (pairs % 2 != 0)
          throw Error(ctx.stage_name, fmt::format("pairs must be even (half same-identity, half different-identity "
                                                  "pairs, alternating); got {}", pairs));
        const std::string& name = keys.get_string("set_name");
        if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
          throw Error(ctx.stage_name, fmt::format("set_name must be a plain file name without .bin; got '{}'", name));
        const PluginSpec& data = keys.get_plugin("data");
        const std::string reader_name = "dataset-reader/" + data.name;
        auto plugin = ctx.runtime.create(data);
        auto* reader = dynamic_cast<DatasetReader*>(plugin.get());
        if (!reader) throw Error(reader_name, "the plugin does not implement admis::DatasetReader");
        const std::string& data_path = keys.get_path("data_path");
        reader->open(data_path);
        const std::int64_t n = reader->size();
        const std::string source = data_path.empty() ? reader_name : fmt::format("{} ({})", reader_name, data_path);
        if (n == 0) throw Error(ctx.stage_name, fmt::format("{} has no samples", source));
        const int threads = std::max(1, ctx.runtime.threads());

        // The identities and their images (every sample is read once for its label).
        std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
        parallel_for(n, threads, [&](std::int64_t i) { labels[static_cast<std::size_t>(i)] = reader->read(i).label; });
        std::map<std::int64_t, std::vector<std::int64_t>> images_of;
        for (std::int64_t i = 0; i < n; ++i) images_of[labels[static_cast<std::size_t>(i)]].push_back(i);
        const std::vector<std::string> class_names = reader->class_names();
        auto identity_name = [&](std::int64_t label) {
          return label >= 0 && label < static_cast<std::int64_t>(class_names.size())
                     ? class_names[static_cast<std::size_t>(label)]
                     : std::to_string(label);
        };
        std::vector<std::int64_t> ids;
        for (const auto& [label, indices] : images_of) ids.push_back(label);
        if (ids.size() < 2)
          throw Error(ctx.stage_name, fmt::format("{} has {} identit{}; different-identity pairs need at least 2",
                                                  source, ids.size(), ids.size() == 1 ? "y" : "ies"));
        for (const auto& [label, indices] : images_of)
          if (indices.size() < 2)
            throw Error(ctx.stage_name, fmt::format("identity '{}' of {} has {} image; same-identity pairs draw from "
                                                    "every identity and need at least 2 images each",
                                                    identity_name(label), source, indices.size()));

        // Pairs alternate same, different, same, ... (issame of pair p is p % 2 == 0), as LFW
        // lists them. Identities are taken in turn from seeded permutations, so each is used
        // about equally; images are drawn uniformly; a pair already drawn is redrawn.
        std::mt19937_64 gen(mix_seed(ctx.runtime.seed(), 0x7061697273ull /* "pairs" */));
        auto below = [&](std::size_t m) { return static_cast<std::size_t>(gen() % m); };
        struct Turns {
          std::vector<std::int64_t> order;
          std::size_t next = 0;
        } same_turns, different_turns;
        auto take = [&](Turns& t) {
          if (t.next == t.order.size()) {  // a fresh permutation (Fisher-Yates) each round
            t.order = ids;
            for (std::size_t i = t.order.size() - 1; i > 0; --i) std::swap(t.order[i], t.order[below(i + 1)]);
            t.next = 0;
          }
          return t.order[t.next++];
        };
        std::vector<std::int64_t> chosen;  // 2 dataset indices per pair
        std::vector<bool> issame;
        std::set<std::pair<std::int64_t, std::int64_t>> drawn;
        for (std::int64_t p = 0; p < pairs; ++p) {
          const bool same = p % 2 == 0;
          const std::int64_t a_id = take(same ? same_turns : different_turns);
          std::int64_t b_id = a_id;
          if (!same) {
            const std::size_t j = below(ids.size() - 1);
            b_id = ids[j] >= a_id ? ids[j + 1] : ids[j];  // uniform over the other identities (ids sorted)
          }
          const auto& as = images_of[a_id];
          const auto& bs = images_of[b_id];
          std::int64_t a = 0, b = 0;
          for (int attempt = 0; attempt < 20; ++attempt) {
            const std::size_t i = below(as.size());
            std::size_t j = below(same ? bs.size() - 1 : bs.size());
            if (same && j >= i) ++j;  // two different images of one identity
            a = as[i];
            b = bs[j];
            if (drawn.insert({std::min(a, b), std::max(a, b)}).second) break;
          }
          chosen.push_back(a);
          chosen.push_back(b);
          issame.push_back(same);
        }

        // Encode the chosen images (each once) and write the set.
        std::map<std::int64_t, std::string> encoded;
        for (std::int64_t index : chosen) encoded[index];
        std::vector<std::int64_t> unique;
        for (const auto& [index, bytes] : encoded) unique.push_back(index);
        std::vector<std::string> files(unique.size());
        std::vector<cv::Size> sizes(unique.size());
        const std::string& format = keys.get_string("image_format");
        const int quality = static_cast<int>(keys.get_int("jpeg_quality"));
        parallel_for(static_cast<std::int64_t>(unique.size()), threads, [&](std::int64_t u) {
          const auto k = static_cast<std::size_t>(u);
          const Sample s = reader->read(unique[k]);
          const std::string where = fmt::format("{}: sample {} ({}/{})", source, unique[k], s.label_name, s.name);
          files[k] = encoded_as(s, format, quality, sizes[k], where);
        });
        for (std::size_t k = 0; k < unique.size(); ++k) {
          if (sizes[k] != sizes[0])
            throw Error(ctx.stage_name, fmt::format("{}: sample {} is {}x{} but sample {} is {}x{}; a verification set "
                                                    "holds images of one size",
                                                    source, unique[k], sizes[k].width, sizes[k].height, unique[0],
                                                    sizes[0].width, sizes[0].height));
          encoded[unique[k]] = std::move(files[k]);
        }
        std::vector<std::string> bins;
        bins.reserve(chosen.size());
        std::uint64_t bytes = 0;
        for (std::int64_t index : chosen) {
          bins.push_back(encoded[index]);
          bytes += bins.back().size();
        }
        const std::string path = (fs::path(ctx.output_dir) / (name + ".bin")).string();
        write_verification_bin(path, bins, issame);
        std::cerr << fmt::format("[verification_pairs] {} pairs ({} same, {} different) over {} identities and {} "
                                 "distinct {}x{} images of {} -> {} ({:.1f} MB)",
                                 pairs, pairs / 2, pairs / 2, ids.size(), unique.size(), sizes[0].width,
                                 sizes[0].height, source, path, static_cast<double>(bytes) / 1e6)
                  << std::endl;
      }};
}

}  // namespace admis::host
