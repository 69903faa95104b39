// Recognition training, after TFace's TrainTask (tface_train.py) and BaseTask
// (torchkit/task/base_task.py): see train_recognition.h.
#include "admis/host/train_recognition.h"

#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <ostream>
#include <sstream>

#include "admis/host/distributed.h"
#include "admis/host/distributed_head.h"
#include "admis/host/distributed_reducer.h"
#include "admis/host/event_writer.h"
#include "admis/host/manifest.h"
#include "admis/host/weights.h"
#include "admis/host/text.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

constexpr const char* kWho = "train_recognition";

bool is_batchnorm(const torch::nn::Module& module) {
  // TFace tests 'batchnorm' in str(layer.__class__); LibTorch's name() is the class name
  // ("torch::nn::BatchNorm2d"), so match it case-insensitively.
  std::string name = module.name();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name.find("batchnorm") != std::string::npos;
}

std::string join_key(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

}  // namespace

std::vector<ParamGroup> tface_param_groups(torch::nn::Module& backbone, torch::nn::Module& head, double weight_decay,
                                           const std::string& decay_split) {
  const auto& choices = decay_split_choices();
  if (std::find(choices.begin(), choices.end(), decay_split) == choices.end())
    throw Error(kWho, fmt::format("unknown decay_split '{}'; choices are: {}", decay_split, fmt::join(choices, ", ")));
  ParamGroup decay{"decay", weight_decay, {}, {}};
  ParamGroup no_decay{"no_decay", 0.0, {}, {}};
  auto add = [](ParamGroup& g, std::string name, const torch::Tensor& p) {
    g.names.push_back(std::move(name));
    g.params.push_back(p);
  };
  if (decay_split == "batchnorm-modules") {
    for (const auto& item : backbone.named_modules()) {
      const bool bn = is_batchnorm(*item.value());
      for (const auto& p : item.value()->named_parameters(/*recurse=*/false))
        add(bn ? no_decay : decay, "backbone." + join_key(item.key(), p.key()), p.value());
    }
  } else {  // bn-in-name
    for (const auto& p : backbone.named_parameters())
      add(p.key().find("bn") != std::string::npos ? no_decay : decay, "backbone." + p.key(), p.value());
  }
  for (const auto& p : head.named_parameters()) add(decay, "head." + p.key(), p.value());
  return {decay, no_decay};
}

SgdMomentum::SgdMomentum(std::vector<ParamGroup> groups, double momentum)
    : groups_(std::move(groups)), momentum_(momentum) {
  for (const auto& g : groups_) buffers_.emplace_back(g.params.size());
}

void SgdMomentum::zero_grad() {
  for (auto& g : groups_)
    for (auto& p : g.params)
      if (p.grad().defined()) p.mutable_grad().zero_();
}

void SgdMomentum::step(double lr) {
  torch::NoGradGuard no_grad;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    for (std::size_t i = 0; i < g.params.size(); ++i) {
      torch::Tensor p = g.params[i];
      if (!p.grad().defined()) continue;  // unused this step, as PyTorch skips grad None
      torch::Tensor d_p = p.grad();
      if (g.weight_decay != 0) d_p = d_p.add(p, g.weight_decay);
      torch::Tensor& buf = buffers_[gi][i];
      if (momentum_ != 0) {
        if (!buf.defined()) buf = d_p.clone().detach();
        else buf.mul_(momentum_).add_(d_p);
        d_p = buf;
      }
      p.add_(d_p, -lr);
    }
  }
}

StateDict SgdMomentum::state() const {
  StateDict out;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi)
    for (std::size_t i = 0; i < groups_[gi].params.size(); ++i)
      if (buffers_[gi][i].defined())
        out["momentum_buffer." + groups_[gi].names[i]] = buffers_[gi][i].detach().to(torch::kCPU).contiguous();
  return out;
}

void SgdMomentum::load_state(const StateDict& state, const std::string& source) {
  std::size_t used = 0;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi)
    for (std::size_t i = 0; i < groups_[gi].params.size(); ++i) {
      auto it = state.find("momentum_buffer." + groups_[gi].names[i]);
      if (it == state.end()) {
        buffers_[gi][i] = torch::Tensor();
        continue;
      }
      const torch::Tensor& p = groups_[gi].params[i];
      if (!it->second.sizes().equals(p.sizes()))
        throw Error(source, fmt::format("momentum buffer of {} has shape [{}], the parameter [{}]", groups_[gi].names[i],
                                        fmt::join(it->second.sizes(), ","), fmt::join(p.sizes(), ",")));
      buffers_[gi][i] = it->second.to(p.device(), p.scalar_type()).clone();
      ++used;
    }
  std::size_t saved = 0;
  for (const auto& item : state) saved += item.first.rfind("momentum_buffer.", 0) == 0 ? 1 : 0;
  if (saved != used)
    throw Error(source, fmt::format("{} momentum buffers are for parameters the model does not have (a different "
                                    "backbone or head?)",
                                    saved - used));
}

double LrSchedule::at(std::int64_t epoch, std::int64_t global_step) const {
  if (warmup_steps > 0 && global_step <= warmup_steps)
    return static_cast<double>(global_step) * base_lr / static_cast<double>(warmup_steps);
  const auto passed = std::upper_bound(stages.begin(), stages.end(), epoch) - stages.begin();
  double lr = base_lr;
  for (std::int64_t k = 0; k < passed; ++k) lr *= gamma;
  return lr;
}

std::string latest_checkpoint(const std::string& output_dir, const std::string& prefix, std::int64_t* number) {
  const fs::path dir = fs::path(output_dir) / "checkpoints";
  std::int64_t best = -1;
  std::string best_path;
  if (fs::is_directory(dir))
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(prefix, 0) != 0 || !fs::is_directory(entry.path())) continue;
      const std::string digits = name.substr(prefix.size());
      if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
      if (std::stoll(digits) > best) {
        best = std::stoll(digits);
        best_path = entry.path().string();
      }
    }
  if (number) *number = best;
  return best_path;
}

namespace {

struct CheckpointMeta {
  std::int64_t epoch = 0;        // epochs finished
  std::int64_t global_step = 0;  // optimizer steps taken
};

std::map<std::string, std::string> run_identity(const TrainOptions& o, std::int64_t dataset_size,
                                                std::int64_t classes) {
  return {{"seed", std::to_string(o.seed)},
          {"batch_size", std::to_string(o.batch_size)},
          {"dataset_size", std::to_string(dataset_size)},
          {"classes", std::to_string(classes)}};
}

// Writes the three files into a temporary folder and renames it into place, so a
// checkpoint folder is either complete or absent.
void save_checkpoint(const std::string& output_dir, const CheckpointMeta& meta, Backbone& backbone,
                     const StateDict& head_state, StateDict state, std::map<std::string, std::string> identity) {
  const fs::path dir = fs::path(output_dir) / "checkpoints";
  const fs::path final_dir = dir / fmt::format("epoch-{}", meta.epoch);
  const fs::path tmp = dir / fmt::format(".epoch-{}.tmp-{}", meta.epoch, ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_safetensors(cpu_state_dict(backbone.module()), (tmp / "backbone.safetensors").string());
  write_safetensors(head_state, (tmp / "head.safetensors").string());
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    state["rng_state"] = at::Tensor(gen.get_state()).clone();
  }
  identity["epoch"] = std::to_string(meta.epoch);
  identity["global_step"] = std::to_string(meta.global_step);
  write_safetensors(state, (tmp / "training_state.safetensors").string(), identity);
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
}

// With a sharded head, each rank takes its columns of the saved head and of its momentum.
CheckpointMeta load_checkpoint(const std::string& folder, Backbone& backbone, Head* head, ShardedMarginHead* sharded,
                               SgdMomentum& optimizer, const std::map<std::string, std::string>& identity) {
  const std::string state_path = (fs::path(folder) / "training_state.safetensors").string();
  std::map<std::string, std::string> meta;
  StateDict state = read_safetensors(state_path, &meta);
  for (const auto& [key, value] : identity) {
    auto it = meta.find(key);
    if (it == meta.end() || it->second != value)
      throw Error(state_path, fmt::format("this checkpoint was written with {} {}, this run has {}; resuming would not "
                                          "continue the same training (set resume: false or run with --force to "
                                          "start over)",
                                          key, it == meta.end() ? "(unset)" : it->second, value));
  }
  const LoadOptions strict;
  const std::string bb = (fs::path(folder) / "backbone.safetensors").string();
  const std::string hd = (fs::path(folder) / "head.safetensors").string();
  load_state_dict(backbone.module(), read_safetensors(bb), strict, bb);
  if (sharded) {
    sharded->load_full_state(read_safetensors(hd), hd);
    auto momentum = state.find("momentum_buffer.head.kernel");
    if (momentum != state.end()) momentum->second = sharded->own_columns(momentum->second);
  } else {
    load_state_dict(head->module(), read_safetensors(hd), strict, hd);
  }
  auto rng = state.find("rng_state");
  if (rng == state.end()) throw Error(state_path, "no rng_state");
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng->second);
  }
  state.erase(rng);
  optimizer.load_state(state, state_path);
  CheckpointMeta m;
  m.epoch = std::stoll(meta.at("epoch"));
  m.global_step = std::stoll(meta.at("global_step"));
  return m;
}

// metrics.csv rows of an earlier run, up to (and including) `global_step`.
std::vector<std::string> earlier_metric_rows(const std::string& path, std::int64_t global_step) {
  std::vector<std::string> rows;
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return rows;  // header
  while (std::getline(in, line)) {
    // global_step is the third column.
    std::istringstream fields(line);
    std::string epoch, step, gs;
    if (std::getline(fields, epoch, ',') && std::getline(fields, step, ',') && std::getline(fields, gs, ',') &&
        !gs.empty() && std::all_of(gs.begin(), gs.end(), ::isdigit) && std::stoll(gs) <= global_step)
      rows.push_back(line);
  }
  return rows;
}

}  // namespace

TrainSummary train_recognition(Backbone& backbone, Head& head, const DatasetReader& reader,
                               const std::vector<Augmenter*>& augmenters, const TrainOptions& options,
                               const std::string& output_dir) {
  return train_recognition(backbone, &head, reader, augmenters, options, output_dir);
}

TrainSummary train_recognition(Backbone& backbone, Head* head, const DatasetReader& reader,
                               const std::vector<Augmenter*>& augmenters, const TrainOptions& options,
                               const std::string& output_dir) {
  // Checks first, so that a mistake costs nothing.
  const std::int64_t dataset_size = reader.size();
  const auto classes = static_cast<std::int64_t>(reader.class_names().size());
  if (dataset_size == 0) throw Error(kWho, "the dataset is empty: the reader found no samples to train on");
  if (head && head->out_features() != classes)
    throw Error(kWho, fmt::format("the head has out_features {} but the dataset has {} classes; set the head's "
                                  "out_features to {}",
                                  head->out_features(), classes, classes));
  if (head && head->in_features() != backbone.embedding_size())
    throw Error(kWho, fmt::format("the head has in_features {} but the backbone gives {}-dimensional embeddings",
                                  head->in_features(), backbone.embedding_size()));
  if (options.epochs < 1 || options.batch_size < 1 || options.save_every < 1 || options.log_every < 1)
    throw Error(kWho, "epochs, batch_size, save_every and log_every must be at least 1");
  if (options.warmup_steps > 0 && options.warmup_epochs > 0)
    throw Error(kWho, "give warmup_steps or warmup_epochs, not both");
  if (!std::is_sorted(options.stages.begin(), options.stages.end()))
    throw Error(kWho, fmt::format("stages must be in increasing order, got [{}]", fmt::join(options.stages, ", ")));

  torch::Device device(torch::kCPU);
  for (const auto& p : backbone.module().parameters()) {
    device = p.device();
    break;
  }
  const std::shared_ptr<Distributed> dist = options.distributed ? options.distributed : world(device);
  const bool main_rank = dist->is_main();
  std::ostream* const progress = main_rank ? options.progress : nullptr;
  ShardedMarginHead* const sharded = options.sharded_head.get();
  if (!head && !(sharded && !main_rank))
    throw Error(kWho, "no head was given; only the ranks other than 0 of a class-sharded run train without one");
  if (sharded) {
    if (sharded->classes() != classes || sharded->in_features() != backbone.embedding_size())
      throw Error(kWho, fmt::format("the sharded head is for {} classes of {}-dimensional embeddings; the dataset has {} "
                                    "classes and the backbone gives {}",
                                    sharded->classes(), sharded->in_features(), classes, backbone.embedding_size()));
    if (options.label_smoothing != 0)
      throw Error(kWho, "label_smoothing is not available with the sharded head; set it to 0");
    sharded->module().to(device);  // this rank's columns, where the backbone computes
  }
  // Synchronised batch norm (SyncBatchNorm): every batch norm of the backbone normalises
  // with the global batch's statistics for as long as this run lasts.
  SynchronisedBatchNorm sync_batch_norm;
  if (options.sync_batch_norm) sync_batch_norm.attach(dist, backbone.module());
  if (progress && sync_batch_norm.active())
    *progress << fmt::format("[{}] synchronised batch norm: {} layers over {} ranks", kWho, sync_batch_norm.layers(),
                             dist->world_size())
              << std::endl;
  // The classifier whose parameters are trained here: this rank's columns when sharded.
  torch::nn::Module& head_module = sharded ? sharded->module() : head->module();

  fs::create_directories(output_dir);
  LoaderOptions lo;
  lo.rank = dist->rank();
  lo.world_size = dist->world_size();
  lo.batch_size = options.batch_size;
  lo.workers = options.workers;
  lo.prefetch_batches = options.prefetch_batches;
  lo.seed = options.seed;
  lo.image_size = backbone.input_size();
  DataLoader loader(reader, augmenters, lo);
  const std::int64_t steps_per_epoch = loader.batches_per_epoch();
  const std::int64_t total_steps = steps_per_epoch * options.epochs;
  const LrSchedule schedule{options.lr, options.stages, options.gamma,
                            options.warmup_steps + options.warmup_epochs * steps_per_epoch};

  SgdMomentum optimizer(tface_param_groups(backbone.module(), head_module, options.weight_decay, options.decay_split),
                        options.momentum);
  const auto identity = run_identity(options, dataset_size, classes);

  // Rank 0 decides where to resume from, so that all ranks continue the same checkpoint
  // even if another rank sees the shared folder differently.
  CheckpointMeta at;
  std::int64_t resume_epoch = -1;
  if (options.resume && main_rank) latest_checkpoint(output_dir, "epoch-", &resume_epoch);
  resume_epoch = rank0_value(*dist, resume_epoch, "the checkpoint to resume from");
  const std::string resume_from =
      resume_epoch < 0 ? "" : (fs::path(output_dir) / "checkpoints" / fmt::format("epoch-{}", resume_epoch)).string();
  if (!resume_from.empty()) {
    at = load_checkpoint(resume_from, backbone, head, sharded, optimizer, identity);
    if (progress)
      *progress << fmt::format("[{}] resuming from {} (epoch {}, step {})", kWho, resume_from, at.epoch,
                                       at.global_step)
                        << std::endl;
  } else {
    if (main_rank) fs::remove_all(fs::path(output_dir) / "checkpoints");
    // Dropout and any other draw from the global generator start from the run's seed.
    torch::manual_seed(mix_seed(options.seed, 0x747261696eULL /* "train" */));
  }

  const std::string csv_path = (fs::path(output_dir) / "metrics.csv").string();
  std::vector<std::string> csv_rows = resume_from.empty() || !main_rank ? std::vector<std::string>{}
                                                                        : earlier_metric_rows(csv_path, at.global_step);
  const std::string csv_header = "epoch,step,global_step,loss,top1,lr,images_per_s,data_wait,eta_s\n";
  std::unique_ptr<EventWriter> events = main_rank ? std::make_unique<EventWriter>(output_dir) : nullptr;

  backbone.module().train();
  if (head) head->module().train();
  torch::nn::functional::CrossEntropyFuncOptions ce;
  ce.label_smoothing(options.label_smoothing);

  // Every rank starts from rank 0's weights (and, on resume, its checkpoint); gradients are
  // averaged in buckets, the backbone's last layers first. A sharded head's columns are
  // each rank's own: not averaged, and its loss is already the mean over all ranks'
  // samples, so the backbone's gradients are summed.
  broadcast_module(*dist, backbone.module(), "backbone");
  if (!sharded) {
    broadcast_module(*dist, head->module(), "head");
  } else if (resume_from.empty()) {
    // Rank 0's initial classifier, each rank receiving only its columns.
    sharded->scatter_full_state(main_rank ? cpu_state_dict(head->module()) : StateDict{}, "the initial head");
  }
  head_module.train();
  std::vector<torch::Tensor> model_params = backbone.module().parameters();
  if (!sharded)
    for (const auto& p : head->module().parameters()) model_params.push_back(p);
  GradientReducer reducer(dist, model_params, options.bucket_bytes, /*average=*/!sharded);
  // The head and optimizer states in the single-process layout (collective when sharded,
  // and then complete on rank 0 only).
  auto head_state = [&] { return sharded ? sharded->full_state() : cpu_state_dict(head->module()); };
  auto optimizer_state = [&] {
    StateDict state = optimizer.state();
    auto momentum = state.find("momentum_buffer.head.kernel");
    if (sharded && momentum != state.end()) momentum->second = sharded->gather_columns(momentum->second);
    return state;
  };

  TrainSummary summary;
  summary.start_epoch = at.epoch;
  summary.epochs = options.epochs;
  summary.events_file = events ? events->path() : "";
  summary.world_size = dist->world_size();
  using Clock = std::chrono::steady_clock;
  const auto run_start = Clock::now();
  auto window_start = run_start;
  double window_wait_start = loader.wait_seconds();
  double window_loss = 0, window_correct = 0, window_images = 0;
  std::int64_t images_total = 0;
  std::int64_t global_step = at.global_step;

  for (std::int64_t epoch = at.epoch; epoch < options.epochs; ++epoch) {
    loader.start_epoch(epoch);
    Batch batch;
    while (loader.next(batch)) {
      const double lr = schedule.at(epoch, global_step);
      const torch::Tensor images = batch.images.to(device);
      const torch::Tensor labels = batch.labels.to(device);
      optimizer.zero_grad();
      // A rank with an empty share has no head in its backward; its bucket all-reduces must
      // not interleave differently with the batch-norm statistics' (see prepare()).
      reducer.prepare(/*overlap=*/!(sync_batch_norm.active() && batch.global_size < dist->world_size()));
      if (sharded) {
        // Every rank takes part in the head's collectives, also with an empty share (whose
        // embeddings still need a gradient, so that this rank joins the backward gather).
        const torch::Tensor embeddings =
            labels.size(0) > 0 || sync_batch_norm.active() ? backbone.forward(images)
                               : torch::zeros({0, backbone.embedding_size()}, torch::TensorOptions().device(device))
                                     .requires_grad_(true);
        const ShardedMarginHead::Output out = sharded->forward(embeddings, labels);
        out.loss.backward();
        // The loss and accuracy are already over the global batch: counted once, on rank 0.
        if (main_rank) {
          window_loss += out.loss.item<double>() * static_cast<double>(out.rows);
          window_correct += static_cast<double>(out.correct);
          window_images += static_cast<double>(out.rows);
        }
        images_total += labels.size(0);
      } else if (labels.size(0) > 0) {
        // A rank whose share of a short last batch is empty only takes part in the averaging.
        const torch::Tensor embeddings = backbone.forward(images);
        const HeadOutput out = head->forward(embeddings, labels);
        const torch::Tensor loss = torch::nn::functional::cross_entropy(out.logits, labels, ce);
        // The reducer takes the mean over ranks of the ranks' gradients; weighting each by
        // its share of the batch makes that the gradient of the mean over the whole batch,
        // also when the shares differ by one.
        const double share = static_cast<double>(labels.size(0) * dist->world_size()) /
                             static_cast<double>(batch.global_size);
        (share == 1.0 ? loss : loss * share).backward();

        // TFace's top-1 is measured on the logits without margin.
        const auto n = static_cast<double>(labels.size(0));
        window_loss += loss.item<double>() * n;
        window_correct += out.original_logits.detach().argmax(1).eq(labels).sum().item<double>();
        window_images += n;
        images_total += labels.size(0);
      } else if (sync_batch_norm.active()) {
        // An empty share still takes part in the batch-norm statistics' sums, forward and
        // backward, contributing nothing to them.
        (backbone.forward(images).sum() * 0).backward();
      }
      reducer.finish();
      optimizer.step(lr);
      ++global_step;
      ++summary.steps;

      const bool epoch_end = batch.index + 1 == steps_per_epoch;
      if (global_step % options.log_every != 0 && !epoch_end) continue;
      if (dist->active()) {  // the window's figures over all ranks
        torch::Tensor sums = torch::tensor({window_loss, window_correct, window_images}, torch::kFloat64);
        dist->all_reduce_sum(sums, "the sum of the logged loss and accuracy");
        window_loss = sums[0].item<double>();
        window_correct = sums[1].item<double>();
        window_images = sums[2].item<double>();
      }
      const auto now = Clock::now();
      const double window_seconds = std::max(1e-9, std::chrono::duration<double>(now - window_start).count());
      const double elapsed = std::chrono::duration<double>(now - run_start).count();
      const double mean_loss = window_loss / window_images, top1 = window_correct / window_images;
      const double images_per_s = window_images / window_seconds;
      const double wait = std::min(1.0, (loader.wait_seconds() - window_wait_start) / window_seconds);
      const double eta = elapsed / static_cast<double>(summary.steps) * static_cast<double>(total_steps - global_step);
      const std::int64_t step_in_epoch = batch.index + 1;
      if (progress)
        *progress << fmt::format("[{}] epoch {}/{} step {}/{} loss {:.4f} top1 {:.1f}% lr {:.6g} {:.1f} img/s "
                                         "data-wait {:.1f}% ETA {}",
                                         kWho, epoch + 1, options.epochs, step_in_epoch, steps_per_epoch, mean_loss,
                                         100 * top1, lr, images_per_s, 100 * wait, format_duration(eta))
                          << std::endl;
      if (main_rank) {
        csv_rows.push_back(fmt::format("{},{},{},{:.6f},{:.6f},{:.9g},{:.2f},{:.4f},{:.0f}", epoch + 1, step_in_epoch,
                                       global_step, mean_loss, top1, lr, images_per_s, wait, eta));
        write_file_atomic(csv_path, csv_header + fmt::format("{}\n", fmt::join(csv_rows, "\n")));
        const double wall = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        events->add_scalar("train/loss", static_cast<float>(mean_loss), global_step, wall);
        events->add_scalar("train/top1", static_cast<float>(top1), global_step, wall);
        events->add_scalar("train/lr", static_cast<float>(lr), global_step, wall);
        events->add_scalar("train/images_per_s", static_cast<float>(images_per_s), global_step, wall);
        events->add_scalar("train/data_wait", static_cast<float>(wait), global_step, wall);
      }
      summary.last_loss = mean_loss;
      summary.last_top1 = top1;
      window_start = now;
      window_wait_start = loader.wait_seconds();
      window_loss = window_correct = window_images = 0;
    }
    const std::int64_t finished = epoch + 1;
    if ((finished % options.save_every == 0 || finished == options.epochs) && (main_rank || sharded)) {
      const StateDict head_now = head_state(), optimizer_now = optimizer_state();
      if (main_rank)
        save_checkpoint(output_dir, {finished, global_step}, backbone, head_now, optimizer_now, identity);
    }
  }

  const StateDict final_head = main_rank || sharded ? head_state() : StateDict{};
  // Rank 0's head ends with the trained weights, as without sharding.
  if (sharded && main_rank) load_state_dict(head->module(), final_head, LoadOptions{}, "the sharded head");
  if (main_rank) {
    write_safetensors(cpu_state_dict(backbone.module()), (fs::path(output_dir) / "backbone.safetensors").string());
    write_safetensors(final_head, (fs::path(output_dir) / "head.safetensors").string());
  }
  // No rank returns before rank 0's files are complete (a caller may read them next).
  torch::Tensor images_all = torch::tensor({static_cast<double>(images_total)}, torch::kFloat64);
  dist->all_reduce_sum(images_all, "the end-of-training sum of images");
  images_total = static_cast<std::int64_t>(images_all.item<double>());
  summary.allreduce_wait_seconds = reducer.steps() > 0 ? reducer.wait_seconds() / reducer.steps() : 0;
  const double seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
  summary.images_per_second = seconds > 0 ? static_cast<double>(images_total) / seconds : 0;
  summary.data_wait_fraction = seconds > 0 ? std::min(1.0, loader.wait_seconds() / seconds) : 0;
  if (progress && dist->active())
    *progress << fmt::format("[{}] data-parallel over {} ranks: {:.1f} img/s in all, {} gradient bucket(s), "
                             "all-reduce wait after backward {:.1f} ms/step",
                             kWho, dist->world_size(), summary.images_per_second, reducer.bucket_count(),
                             1000 * summary.allreduce_wait_seconds)
              << std::endl;
  return summary;
}

}  // namespace admis::host
