// The generative stages: `contexts` (build a context source's database once),
// `train_generator` (train_generator.h) and `sample` (generation.h, sample_identities),
// each building the plugins its manifest names.
#include <boost/algorithm/string.hpp>
#include <boost/filesystem.hpp>
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <map>

#include "admis/host/distributed.h"
#include "admis/host/manifest.h"
#include "admis/host/pickle.h"
#include "admis/host/stages.h"
#include "admis/host/train_generator.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

// A plugin key with a default plugin (created with its default parameters).
ParamSpec plugin_with_default(const std::string& key, const std::string& kind, const std::string& plugin,
                              const std::string& doc) {
  ParamSpec spec = ParamSpec::Plugin(key, kind, doc);
  auto value = std::make_shared<PluginSpec>();
  value->kind = kind;
  value->name = plugin;
  spec.default_value = Value(std::shared_ptr<const PluginSpec>(value));
  return spec;
}

// A plugin key that may be left out (its default names no plugin).
ParamSpec optional_plugin(const std::string& key, const std::string& kind, const std::string& doc) {
  return plugin_with_default(key, kind, "", doc);
}

template <class T>
std::shared_ptr<T> create_role(const Params& keys, const std::string& key, StageContext& ctx) {
  const PluginSpec& spec = keys.get_plugin(key);
  auto plugin = std::dynamic_pointer_cast<T>(ctx.runtime.create(spec));
  if (!plugin) throw Error(ctx.stage_name, fmt::format("'{}': {}/{} is not a {}", key, spec.kind, spec.name, spec.kind));
  return plugin;
}

// ADMIS's image_names.pkl (a pickled list of "label/name.jpg") or a text file with one name per line.
std::vector<std::string> read_image_names(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open the image names file");
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> names;
  if (!data.empty() && static_cast<unsigned char>(data[0]) == 0x80) {  // a pickle (protocol >= 2)
    const auto value = pickle::unpickle(data.data(), data.size(), {}, path);
    if (value->type != pickle::Type::List && value->type != pickle::Type::Tuple)
      throw Error(path, fmt::format("expected a pickled list of image names, found {}", value->describe()));
    for (const auto& item : value->as_sequence()) names.push_back(item->as_text());
  } else {
    std::istringstream lines(data);
    for (std::string line; std::getline(lines, line);) {
      boost::algorithm::trim(line);
      if (!line.empty()) names.push_back(line);
    }
  }
  return names;
}

// One context row per reader sample: rows in reader order, or matched by "label/name"
// through the image names list (ADMIS's CASIA_file dataset).
torch::Tensor contexts_for_reader(const DatasetReader& reader, const torch::Tensor& embeddings,
                                  const std::string& names_path, const std::string& where) {
  const std::int64_t n = reader.size();
  if (names_path.empty()) {
    if (embeddings.size(0) != n)
      throw Error(where, fmt::format("the context source has {} embeddings for {} training images; give image_names to "
                                     "match them by name, or one embedding per image in the reader's order",
                                     embeddings.size(0), n));
    return embeddings;
  }
  const auto names = read_image_names(names_path);
  if (static_cast<std::int64_t>(names.size()) != embeddings.size(0))
    throw Error(names_path, fmt::format("{} image names for {} embeddings: the two files must list the same images",
                                        names.size(), embeddings.size(0)));
  std::map<std::string, std::int64_t> row_of;
  for (std::size_t r = 0; r < names.size(); ++r) row_of[names[r]] = static_cast<std::int64_t>(r);
  std::vector<std::int64_t> rows(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const Sample s = reader.read(i);
    std::string key = s.label_name + "/" + s.name;
    auto it = row_of.find(key);
    if (it == row_of.end())
      throw Error(names_path, fmt::format("training image '{}' has no entry (and so no embedding)", key));
    rows[static_cast<std::size_t>(i)] = it->second;
  }
  return embeddings.index_select(0, torch::tensor(rows, torch::kInt64));
}

}  // namespace

StageType contexts_stage() {
  return StageType{
      "contexts",
      "build an identity context source once, e.g. ddpm-faces' context database, for later stages or other machines",
      {ParamSpec::Plugin("source", "context-source", "the context source, e.g. ddpm-faces with its root folder")},
      [](const Params& keys, StageContext& ctx) {
        auto source = create_role<ContextSource>(keys, "source", ctx);
        std::cerr << fmt::format("[{}] context-source/{}: {} contexts of size {}", ctx.stage_name,
                                 keys.get_plugin("source").name, source->size(), source->embedding_size())
                  << std::endl;
      }};
}

StageType train_generator_stage() {
  return StageType{
      "train_generator",
      "train an identity-conditioned (latent) diffusion model as IDiff-Face/ADMIS do",
      {
          ParamSpec::Plugin("denoiser", "denoiser", "the noise-prediction network, e.g. idiff-unet"),
          ParamSpec::Plugin("codec", "codec", "images <-> latents: vq-f4 (latent diffusion) or pixel"),
          plugin_with_default("scheduler", "scheduler", "ddpm", "the training noise schedule (q(x_t | x_0))"),
          plugin_with_default("sampler", "scheduler", "ddim-admis", "the sampler of the preview grids"),
          ParamSpec::Plugin("data", "dataset-reader", "the training images' reader"),
          ParamSpec::Path("data_path", "", "what the reader opens (empty for readers that read nothing, e.g. toy-faces)"),
          optional_plugin("contexts", "context-source",
                          "the training images' identity embeddings (e.g. npy of ElasticFace embeddings); not for an "
                          "unconditional denoiser"),
          ParamSpec::Path("image_names", "",
                          "match contexts to images by \"label/name\": ADMIS's image_names.pkl or a text file, one per "
                          "line (default: one context per image in the reader's order)"),
          ParamSpec::StringList("augmenters", {"flip"}, "image augmenters after resizing, each \"NAME key=value ...\""),
          ParamSpec::Int("image_size", 128, "images are resized to this (bilinear) before encoding").at_least(8),
          ParamSpec::Int("steps", 900000, "optimizer steps").at_least(1),
          ParamSpec::Int("batch_size", 64, "images per step").at_least(1),
          ParamSpec::Float("lr", 1e-4, "Adam learning rate").at_least(0),
          ParamSpec::Int("t_0", 10000, "CosineAnnealingWarmRestarts T_0 in steps; 0: constant lr").at_least(0),
          ParamSpec::Int("t_mult", 2, "CosineAnnealingWarmRestarts T_mult").at_least(1),
          ParamSpec::Float("context_dropout", 0.25,
                           "probability that a sample's context is replaced by the empty context (CPD)")
              .range(0, 1),
          ParamSpec::Float("ema_inv_gamma", 1.0, "EMA warm-up: inverse gamma").at_least(1e-12),
          ParamSpec::Float("ema_power", 0.75, "EMA warm-up: power").at_least(0),
          ParamSpec::Float("ema_min", 0.0, "smallest EMA decay").range(0, 1),
          ParamSpec::Float("ema_max", 0.9999, "largest EMA decay").range(0, 1),
          ParamSpec::Float("grad_clip", 0.0, "clip the gradients' global L2 norm to this; 0: off").at_least(0),
          ParamSpec::String("precision", "32",
                            "32; 16: float16 autocast with dynamic loss scaling on CUDA (the reference's precision "
                            "16); bf16: bfloat16 autocast (CPU or CUDA)")
              .one_of({"32", "16", "bf16"}),
          ParamSpec::IntList("checkpoint_steps", {},
                             "steps at which ema_averaged_model_<N>.ckpt, model_<N>.ckpt and optimization.ckpt are "
                             "written in the reference's layout (the last step always is)"),
          ParamSpec::Int("save_every", 1000, "steps between resumable checkpoints").at_least(1),
          ParamSpec::Int("sample_every", 0, "steps between preview grids (samples/); 0: only at the end").at_least(0),
          ParamSpec::Int("preview_count", 4, "contexts in the preview grid; 0: no previews").at_least(0),
          ParamSpec::Int("workers", 4, "background decoding threads").range(0, 256),
          ParamSpec::Int("prefetch", 8, "batches prepared ahead").at_least(1),
          ParamSpec::Int("log_every", 50, "steps between progress lines and metric rows").at_least(1),
          ParamSpec::Bool("resume", true, "continue from the newest checkpoint; false or --force starts over"),
          ParamSpec::Path("resume_from_reference", "",
                          "a reference run's checkpoints folder (optimization.ckpt, model_<N>.ckpt, "
                          "ema_averaged_model_<N>.ckpt) to continue from when this stage has no checkpoint yet"),
      },
      [](const Params& keys, StageContext& ctx) {
        auto denoiser = create_role<Denoiser>(keys, "denoiser", ctx);
        auto codec = create_role<Codec>(keys, "codec", ctx);
        auto scheduler = create_role<Scheduler>(keys, "scheduler", ctx);
        std::shared_ptr<Scheduler> sampler;
        if (keys.get_int("preview_count") > 0) sampler = create_role<Scheduler>(keys, "sampler", ctx);
        auto reader = create_role<DatasetReader>(keys, "data", ctx);
        reader->open(keys.get_path("data_path"));

        torch::Tensor contexts;
        const PluginSpec& contexts_spec = keys.get_plugin("contexts");
        if (denoiser->context_size() > 0) {
          if (contexts_spec.name.empty())
            throw Error(ctx.stage_name, fmt::format("denoiser/{} is context-conditional; give `contexts` (e.g. {{plugin: "
                                                    "npy, params: {{path: embeddings.npy}}}})",
                                                    keys.get_plugin("denoiser").name));
          auto source = create_role<ContextSource>(keys, "contexts", ctx);
          contexts = contexts_for_reader(*reader, source->read(0, source->size()).embeddings.to(torch::kFloat32),
                                         keys.get_path("image_names"), ctx.stage_name);
        } else if (!contexts_spec.name.empty()) {
          std::cerr << fmt::format("[{}] denoiser/{} is unconditional: `contexts` is not used", ctx.stage_name,
                                   keys.get_plugin("denoiser").name)
                    << std::endl;
        }

        const AugmenterList augmenters = create_augmenters(keys.get_strings("augmenters"), ctx.runtime, ctx.stage_name);

        GeneratorTrainOptions o;
        o.steps = keys.get_int("steps");
        o.batch_size = keys.get_int("batch_size");
        o.image_size = keys.get_int("image_size");
        o.lr = keys.get_float("lr");
        o.t_0 = keys.get_int("t_0");
        o.t_mult = keys.get_int("t_mult");
        o.context_dropout = keys.get_float("context_dropout");
        o.ema.inv_gamma = keys.get_float("ema_inv_gamma");
        o.ema.power = keys.get_float("ema_power");
        o.ema.min_value = keys.get_float("ema_min");
        o.ema.max_value = keys.get_float("ema_max");
        o.grad_clip = keys.get_float("grad_clip");
        o.precision = keys.get_string("precision");
        o.checkpoint_steps = keys.get_ints("checkpoint_steps");
        o.save_every = keys.get_int("save_every");
        o.sample_every = keys.get_int("sample_every");
        o.preview_count = keys.get_int("preview_count");
        o.workers = static_cast<int>(keys.get_int("workers"));
        o.prefetch_batches = static_cast<int>(keys.get_int("prefetch"));
        o.log_every = keys.get_int("log_every");
        o.resume = keys.get_bool("resume") && !ctx.force;
        o.resume_from_reference = keys.get_path("resume_from_reference");
        o.seed = ctx.runtime.seed();
        o.progress = &std::cerr;
        o.distributed = world(ctx.runtime.device());
        const auto summary = train_generator(*denoiser, *codec, *scheduler, *reader, augmenters.augmenters, contexts, sampler.get(),
                                             o, ctx.output_dir);
        if (!o.distributed->is_main()) return;
        std::cerr << fmt::format("[{}] {} steps ({:.2f} steps/s), loss {:.5f} -> {:.5f}; EMA weights in {}",
                                 ctx.stage_name, summary.steps, summary.steps_per_second, summary.first_loss,
                                 summary.last_loss, (fs::path(ctx.output_dir) / "denoiser.safetensors").string())
                  << std::endl;
      },
      /*all_ranks=*/true};
}

StageType sample_stage() {
  return StageType{
      "sample",
      "sample K synthetic identities x M images from identity contexts (resumable, shardable)",
      {
          ParamSpec::Plugin("denoiser", "denoiser", "the trained denoiser with its weights"),
          ParamSpec::Plugin("codec", "codec", "decodes latents to images (vq-f4 or pixel)"),
          plugin_with_default("scheduler", "scheduler", "ddim-admis", "the sampler (default: ddim-admis, 50 steps, eta 0)"),
          ParamSpec::Plugin("contexts", "context-source", "one identity per context: gaussian, npy, image-folder, ..."),
          ParamSpec::Int("identities", 0, "identities to sample (0: all the context source has)").at_least(0),
          ParamSpec::Int("first_identity", 0, "index of the first identity").at_least(0),
          ParamSpec::Int("images_per_identity", 50, "M images per identity").at_least(1),
          ParamSpec::Int("batch_size", 50, "images per reverse-process batch").at_least(1),
          ParamSpec::Int("generation_size", 128, "decoded image size (sets the latent size through the codec)").at_least(8),
          ParamSpec::Int("image_size", 112, "saved image size (bilinear resize)").at_least(8),
          ParamSpec::Float("guidance_scale", 1.0,
                           "classifier-free guidance w: eps = (1-w) eps_uncond + w eps_cond; 1: conditional only"),
          ParamSpec::StringList("augmenters", {},
                                "identity augmenters applied before writing, e.g. \"id-oversample copies=5\""),
          ParamSpec::String("shard", "0/1", "INDEX/COUNT: take identities with i mod COUNT == INDEX"),
          optional_plugin("writer", "dataset-writer",
                          "also write the finished set through this writer (e.g. tfrecord) to dataset_path"),
          ParamSpec::Path("dataset_path", "", "the writer's destination (default <stage folder>/dataset)"),
          ParamSpec::Int("preview_identities", 8, "identities in preview.png; 0: none").at_least(0),
      },
      [](const Params& keys, StageContext& ctx) {
        auto denoiser = create_role<Denoiser>(keys, "denoiser", ctx);
        if (keys.get_plugin("denoiser").weights.empty())
          std::cerr << fmt::format("[{}] warning: denoiser/{} has no weights: sampling an untrained network",
                                   ctx.stage_name, keys.get_plugin("denoiser").name)
                    << std::endl;
        auto codec = create_role<Codec>(keys, "codec", ctx);
        auto scheduler = create_role<Scheduler>(keys, "scheduler", ctx);
        auto contexts = create_role<ContextSource>(keys, "contexts", ctx);
        const AugmenterList augmenters = create_augmenters(keys.get_strings("augmenters"), ctx.runtime, ctx.stage_name);
        IdentitySamplingOptions o;
        o.first_identity = keys.get_int("first_identity");
        o.identities = keys.get_int("identities");
        o.images_per_identity = keys.get_int("images_per_identity");
        o.batch_size = keys.get_int("batch_size");
        o.generation_size = keys.get_int("generation_size");
        o.output_size = keys.get_int("image_size");
        o.guidance_scale = keys.get_float("guidance_scale");
        o.seed = ctx.runtime.seed();
        const auto [job_index, job_count] = parse_shard(keys.get_string("shard"), ctx.stage_name);
        // In a distributed run the ranks split this job's shard among themselves: rank r of W
        // takes i mod (COUNT W) == INDEX + COUNT r, so together they cover i mod COUNT == INDEX.
        const std::shared_ptr<Distributed> dist = world(ctx.runtime.device());
        o.shard_index = job_index + job_count * dist->rank();
        o.shard_count = job_count * dist->world_size();
        const std::string shard = fmt::format("{}/{}", o.shard_index, o.shard_count);
        o.preview_identities = dist->is_main() ? keys.get_int("preview_identities") : 0;  // one preview.png
        o.progress = &std::cerr;
        const std::string images_dir = (fs::path(ctx.output_dir) / "images").string();
        if (ctx.force && dist->is_main()) fs::remove_all(images_dir);
        // No rank writes identities before rank 0 has cleared the folder.
        if (ctx.force) dist->wait_for_all(ctx.stage_name + "/cleared", "rank 0 to clear " + images_dir);
        const auto summary = sample_identities(*denoiser, *codec, *scheduler, *contexts, augmenters.augmenters, o, images_dir);
        std::cerr << fmt::format("[{}] shard {}: {} identities ({} sampled, {} already complete) in {:.1f} s -> {}",
                                 ctx.stage_name, shard, summary.identities, summary.generated, summary.skipped,
                                 summary.seconds, images_dir)
                  << std::endl;

        const PluginSpec& writer_spec = keys.get_plugin("writer");
        if (writer_spec.name.empty()) return;
        // The ranks' shares together are this job's shard: rank 0 writes it once all are in
        // the (shared) images folder.
        dist->wait_for_all(ctx.stage_name + "/sampled", "the other ranks' identities of " + ctx.stage_name);
        if (!dist->is_main()) return;
        if (job_count > 1) {
          std::cerr << fmt::format("[{}] shard {} holds part of the set: not writing it through {} (gather the "
                                   "shards' images folders, then convert them with `admis convert`)",
                                   ctx.stage_name, keys.get_string("shard"), writer_spec.name)
                    << std::endl;
          return;
        }
        auto writer = create_role<DatasetWriter>(keys, "writer", ctx);
        auto reader = std::dynamic_pointer_cast<DatasetReader>(
            ctx.runtime.create(Kind::DatasetReader, "image-folder", {}, "", {}, "", ctx.stage_name));
        reader->open(images_dir);
        const std::string destination = keys.get_path("dataset_path").empty()
                                            ? (fs::path(ctx.output_dir) / "dataset").string()
                                            : keys.get_path("dataset_path");
        writer->open(destination);
        for (std::int64_t i = 0; i < reader->size(); ++i) writer->write(reader->read(i));
        writer->commit();
        std::cerr << fmt::format("[{}] wrote {} images of {} identities through {} to {}", ctx.stage_name,
                                 reader->size(), reader->class_names().size(), writer_spec.name, destination)
                  << std::endl;
      },
      /*all_ranks=*/true};
}

}  // namespace admis::host
