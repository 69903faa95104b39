// The `train_recognition` stage: builds the backbone, head, dataset reader and augmenters
// a manifest names and runs TFace-style training (train_recognition.h) into the stage folder.
#include <fmt/format.h>

#include <algorithm>
#include <iostream>

#include "admis/host/distributed.h"
#include "admis/host/distributed_head.h"
#include "admis/host/manifest.h"
#include "admis/host/stages.h"
#include "admis/host/text.h"
#include "admis/host/train_recognition.h"

namespace admis::host {

namespace {

// The class-sharded counterpart of the manifest's head plugin, with its margin parameters.
std::shared_ptr<ShardedMarginHead> sharded_head_for(const PluginSpec& spec, std::int64_t in_features,
                                                    std::int64_t classes, const TrainOptions& o) {
  const ShardedHeadOptions h = sharded_head_options(spec.name, spec.params, "shard_head");
  if (o.label_smoothing != 0)
    throw Error("shard_head", "label_smoothing is not available with the sharded head; set label_smoothing: 0 or "
                              "shard_head: false");
  return std::make_shared<ShardedMarginHead>(o.distributed, in_features, classes, h);
}

}  // namespace

StageType train_recognition_stage() {
  return StageType{
      "train_recognition",
      "train a face recognizer (backbone + margin head) with TFace's recipe; checkpoints resume automatically",
      {
          ParamSpec::Plugin("backbone", "backbone", "the network: images [N,3,112,112] -> embeddings"),
          ParamSpec::Plugin("head", "head", "the margin head; out_features must equal the dataset's class count"),
          ParamSpec::Plugin("data", "dataset-reader", "the training set's reader"),
          ParamSpec::Path("data_path", "", "what the reader opens (folder or file; empty for readers that read "
                                                "nothing, e.g. toy-faces)"),
          ParamSpec::StringList("augmenters", {"flip"},
                                "image augmenters applied in order, each \"NAME\" or \"NAME key=value ...\" "
                                "(values as YAML), e.g. [flip, \"random-resized-crop probability=0.2\"]"),
          ParamSpec::Int("epochs", 40, "training epochs").at_least(1),
          ParamSpec::Int("batch_size", 64, "images per step").at_least(1),
          ParamSpec::Float("lr", 0.1, "initial learning rate").at_least(0),
          ParamSpec::IntList("stages", {22, 28, 32}, "epochs (0-based starts) at which the lr is multiplied by gamma"),
          ParamSpec::Float("gamma", 0.1, "lr factor at each stage").range(0, 1),
          ParamSpec::Float("momentum", 0.9, "SGD momentum").range(0, 1),
          ParamSpec::Float("weight_decay", 5e-4, "L2 weight decay (not on batch-norm parameters, see decay_split)")
              .at_least(0),
          ParamSpec::String("decay_split", "batchnorm-modules",
                            "parameters without weight decay: batchnorm-modules (TFace separate_irse_bn_paras) "
                            "or bn-in-name (separate_resnet_bn_paras)")
              .one_of(decay_split_choices()),
          ParamSpec::Int("warmup_steps", 0, "linear lr warm-up over this many steps (TFace WARMUP_STEP); 0: off")
              .at_least(0),
          ParamSpec::Int("warmup_epochs", 0, "the same in epochs (give one of the two)").at_least(0),
          ParamSpec::Float("label_smoothing", 0.0, "cross-entropy label smoothing; 0: off").range(0, 1),
          ParamSpec::Int("save_every", 1, "epochs between checkpoints (the last epoch is always saved)").at_least(1),
          ParamSpec::Int("workers", 4, "background decoding threads; 0: decode on the training thread").range(0, 256),
          ParamSpec::Int("prefetch", 8, "batches prepared ahead of the training loop").at_least(1),
          ParamSpec::Int("log_every", 50, "steps between progress lines and metric rows").at_least(1),
          ParamSpec::Bool("resume", true,
                          "continue from the newest checkpoint in the stage folder when there is one (false, or "
                          "--force: start over)"),
          ParamSpec::Bool("sync_batch_norm", false,
                          "in a distributed run, normalise with the statistics of the global batch (PyTorch's "
                          "SyncBatchNorm) instead of each rank's share (TFace's default); costs two small "
                          "all-reduces per batch norm layer, forward and backward. The bundled backbones support "
                          "it. One process: the same result as false"),
          ParamSpec::Bool("shard_head", false,
                          "split the head's classifier columns across the ranks of a distributed run (TFace's "
                          "DIST_FC), for class counts too large for one device; arcface, cosface and "
                          "curricularface; label_smoothing must be 0. Checkpoints keep the whole head, so any "
                          "number of ranks resumes them. One process holds all columns (same result as false)"),
      },
      [](const Params& keys, StageContext& ctx) {
        const std::string where;  // the runner already names the manifest line and the stage
        const std::shared_ptr<Distributed> dist = world(ctx.runtime.device());
        const bool shard_head = keys.get_bool("shard_head");
        auto backbone_plugin = ctx.runtime.create(keys.get_plugin("backbone"));
        // A class-sharded run builds the plugin head (the whole classifier) on rank 0 only,
        // for its initial and final values, and keeps it on the CPU: the device holds the
        // rank's columns alone.
        std::shared_ptr<Plugin> head_plugin;
        Head* head = nullptr;
        if (!shard_head || dist->is_main()) {
          head_plugin = ctx.runtime.create(keys.get_plugin("head"));
          head = &dynamic_cast<Head&>(*head_plugin);
          if (shard_head && dist->active()) head->module().to(torch::kCPU);
        }
        auto reader_plugin = ctx.runtime.create(keys.get_plugin("data"));
        auto& backbone = dynamic_cast<Backbone&>(*backbone_plugin);
        auto& reader = dynamic_cast<DatasetReader&>(*reader_plugin);
        const std::string& data_path = keys.get_path("data_path");
        reader.open(data_path);
        if (reader.size() == 0)
          throw Error(where, fmt::format("dataset-reader/{} found no samples in {}", keys.get_plugin("data").name,
                                         data_path));
        const auto classes = static_cast<std::int64_t>(reader.class_names().size());
        if (head && head->out_features() != classes)
          throw Error(where, fmt::format("head/{} has out_features {} but {} has {} classes; set "
                                         "head.params.out_features: {}",
                                         keys.get_plugin("head").name, head->out_features(), data_path, classes,
                                         classes));

        const AugmenterList augmenters = create_augmenters(keys.get_strings("augmenters"), ctx.runtime, where);

        TrainOptions o;
        o.epochs = keys.get_int("epochs");
        o.batch_size = keys.get_int("batch_size");
        o.lr = keys.get_float("lr");
        o.stages = keys.get_ints("stages");
        o.gamma = keys.get_float("gamma");
        o.momentum = keys.get_float("momentum");
        o.weight_decay = keys.get_float("weight_decay");
        o.decay_split = keys.get_string("decay_split");
        o.warmup_steps = keys.get_int("warmup_steps");
        o.warmup_epochs = keys.get_int("warmup_epochs");
        o.label_smoothing = keys.get_float("label_smoothing");
        o.save_every = keys.get_int("save_every");
        o.workers = static_cast<int>(keys.get_int("workers"));
        o.prefetch_batches = static_cast<int>(keys.get_int("prefetch"));
        o.log_every = keys.get_int("log_every");
        o.seed = ctx.runtime.seed();
        o.resume = keys.get_bool("resume") && !ctx.force;
        o.progress = &std::cerr;
        o.distributed = dist;
        o.sync_batch_norm = keys.get_bool("sync_batch_norm");
        if (shard_head) {
          o.sharded_head = sharded_head_for(keys.get_plugin("head"), backbone.embedding_size(), classes, o);
          if (o.distributed->is_main())
            std::cerr << fmt::format("[{}] class-sharded head/{}: {} classes over {} rank(s), rank 0 holding {}", ctx.stage_name,
                                     keys.get_plugin("head").name, classes, o.distributed->world_size(),
                                     o.sharded_head->class_end() - o.sharded_head->class_begin())
                      << std::endl;
        }
        const TrainSummary s = train_recognition(backbone, head, reader, augmenters.augmenters, o, ctx.output_dir);
        if (!o.distributed->is_main()) return;
        std::cerr << fmt::format("  {} steps, {:.1f} img/s, data-wait {:.1f}%, last top1 {:.1f}% -> {}", s.steps,
                                 s.images_per_second, 100 * s.data_wait_fraction, 100 * s.last_top1, ctx.output_dir)
                  << std::endl;
      },
      /*all_ranks=*/true};
}

}  // namespace admis::host
