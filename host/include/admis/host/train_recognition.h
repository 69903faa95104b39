#pragma once
// Recognition training as TFace trains (torchkit/task/base_task.py, tface_train.py):
// backbone -> margin head -> cross-entropy, SGD with momentum and weight decay split by
// batch norm, a multistep learning rate with optional linear warm-up, checkpoints that
// resume bit for bit, and progress on stderr, in metrics.csv and in a TensorBoard file.

#include <torch/torch.h>

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "admis/host/data_loader.h"
#include "admis/sdk/host.h"
#include "admis/sdk/kinds.h"

namespace admis::host {

class Distributed;        // distributed.h
class ShardedMarginHead;  // distributed_head.h

// Which parameters are exempt from weight decay.
//   "batchnorm-modules": every parameter of a BatchNorm module (TFace's
//       separate_irse_bn_paras: layers whose class is a batch norm; convolution and linear
//       biases and PReLU slopes keep their decay).
//   "bn-in-name": parameters whose name contains "bn" (TFace's separate_resnet_bn_paras,
//       which the ADMIS recipe's base_task.py uses; note that for TFace's IR-50, whose
//       batch norms sit in Sequentials, no name contains "bn", so every parameter decays).
// The head's parameters always decay (TFace builds the head optimizer with weight_decay).
inline const std::vector<std::string>& decay_split_choices() {
  static const std::vector<std::string> c = {"batchnorm-modules", "bn-in-name"};
  return c;
}

struct ParamGroup {
  std::string name;  // "decay" or "no_decay"
  double weight_decay = 0;
  std::vector<std::string> names;  // "backbone.<key>" / "head.<key>", the checkpoint keys
  std::vector<torch::Tensor> params;
};
std::vector<ParamGroup> tface_param_groups(torch::nn::Module& backbone, torch::nn::Module& head, double weight_decay,
                                           const std::string& decay_split = "batchnorm-modules");

// PyTorch's SGD (dampening 0, no Nesterov): g = grad + wd p; buf = g on the first step,
// else momentum buf + g; p -= lr buf. Own implementation so the momentum buffers can be
// saved and restored by parameter name.
class SgdMomentum {
 public:
  SgdMomentum(std::vector<ParamGroup> groups, double momentum);
  void zero_grad();
  void step(double lr);
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // "momentum_buffer.<param name>" for every parameter that has one.
  StateDict state() const;
  void load_state(const StateDict& state, const std::string& source);

 private:
  std::vector<ParamGroup> groups_;
  double momentum_;
  std::vector<std::vector<torch::Tensor>> buffers_;  // parallel to groups_[g].params
};

// TFace's LearningRateHook: before each epoch lr = base * gamma^(number of stages <= epoch)
// (bisect_right on 0-based epochs); while global_step <= warmup_steps (warm-up on)
// lr = global_step * base / warmup_steps, global_step counting from 0.
struct LrSchedule {
  double base_lr = 0.1;
  std::vector<std::int64_t> stages;
  double gamma = 0.1;
  std::int64_t warmup_steps = 0;
  double at(std::int64_t epoch, std::int64_t global_step) const;
};

struct TrainOptions {
  std::int64_t epochs = 40;
  std::int64_t batch_size = 64;
  double lr = 0.1;
  std::vector<std::int64_t> stages = {22, 28, 32};
  double gamma = 0.1;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  std::string decay_split = "batchnorm-modules";
  std::int64_t warmup_steps = 0;
  std::int64_t warmup_epochs = 0;  // converted to steps; at most one of the two is non-zero
  double label_smoothing = 0;
  std::int64_t save_every = 1;  // epochs between checkpoints; the last epoch is always saved
  int workers = 2;
  int prefetch_batches = 4;
  std::uint64_t seed = 0;
  bool resume = true;            // continue from the newest checkpoint in the output folder
  std::int64_t log_every = 20;   // steps between progress lines / metric rows
  std::ostream* progress = nullptr;  // progress lines; null: silent
  // Data parallelism: the process group this rank trains in; null takes world() (from the
  // environment admis launch, torchrun or Slurm set; one process when none is set).
  // batch_size stays the global batch, split across the ranks; only rank 0 writes files
  // and progress.
  std::shared_ptr<Distributed> distributed;
  std::int64_t bucket_bytes = 25 * 1024 * 1024;  // gradient all-reduce bucket size
  // Batch norm over the global batch (SyncBatchNorm) instead of per rank (TFace's default).
  // The backbone must build its batch norms as admis::BatchNorm1d/2d (admis/sdk/batch_norm.h).
  bool sync_batch_norm = false;
  // Class-sharded classification (TFace's DIST_FC): when set, this head (made on every rank
  // with `distributed`, and the margin of `head`) classifies instead of `head`. `head` then
  // only gives the initial weights and receives the final ones, on rank 0 (the other ranks
  // may pass none, and never hold the whole classifier); checkpoints and head.safetensors
  // keep the single-process layout, so any world size resumes them.
  std::shared_ptr<ShardedMarginHead> sharded_head;
};

struct TrainSummary {
  std::int64_t start_epoch = 0;  // 0, or the epochs a resumed checkpoint had finished
  std::int64_t epochs = 0;
  std::int64_t steps = 0;        // optimizer steps taken in this call
  double last_loss = 0;          // mean over the last logging window
  double last_top1 = 0;          // fraction, over the last logging window
  double images_per_second = 0;  // over this call
  double data_wait_fraction = 0; // share of this call's wall time spent waiting for batches
  std::string events_file;
  int world_size = 1;
  double allreduce_wait_seconds = 0;  // per step: gradient communication backward did not hide
};

// Trains `backbone` + `head` on the open `reader`. With several ranks every rank calls this
// with the same options; rank 0's initial weights are broadcast, each rank takes its share
// of every batch, and gradients are averaged (GradientReducer); batch norm statistics stay
// per rank as in TFace, or are over the global batch with sync_batch_norm. Writes to `output_dir` (rank 0 only):
//   checkpoints/epoch-<N>/{backbone,head,training_state}.safetensors (atomically, as a folder)
//   backbone.safetensors, head.safetensors   the final weights, the modules' own key names
//   metrics.csv, events.out.tfevents.*        the logged scalars
// Throws admis::Error on a class-count or embedding-size mismatch, an empty dataset, or a
// checkpoint that does not fit.
TrainSummary train_recognition(Backbone& backbone, Head& head, const DatasetReader& reader,
                               const std::vector<Augmenter*>& augmenters, const TrainOptions& options,
                               const std::string& output_dir);
// The same, where the ranks other than 0 of a class-sharded run (options.sharded_head) pass
// no head: only rank 0 needs the whole classifier, for its initial and final values.
TrainSummary train_recognition(Backbone& backbone, Head* head, const DatasetReader& reader,
                               const std::vector<Augmenter*>& augmenters, const TrainOptions& options,
                               const std::string& output_dir);

// The newest complete checkpoint folder <output_dir>/checkpoints/<prefix><N> (largest N, also
// stored in `number`), or "" when there is none.
std::string latest_checkpoint(const std::string& output_dir, const std::string& prefix = "epoch-",
                              std::int64_t* number = nullptr);

}  // namespace admis::host
