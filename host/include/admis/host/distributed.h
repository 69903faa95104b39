#pragma once
// Scale-out on PyTorch's distributed engine (c10d): where a worker learns its rank (the
// variables torchrun and Slurm set), the process group it then joins (TCPStore rendezvous,
// Gloo on CPU, NCCL under a CUDA build with ADMIS_WITH_NCCL), and the collectives training
// uses. A world of one is an ordinary single process with no process group at all.

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace admis::host {

// Where this worker sits in the job, as the environment describes it.
struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string origin;  // "torchrun variables", "Slurm variables", or "" (no variables: one process)
  bool distributed() const { return world_size > 1; }
};

// A variable's value, or nullopt when it is unset (or empty).
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT take precedence (a
// torchrun inside a Slurm job); otherwise Slurm's SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID, with MASTER_ADDR defaulting to the first host of SLURM_NODELIST (or
// SLURM_JOB_NODELIST) and MASTER_PORT to 29500. Throws admis::Error naming the variable
// that is missing, not a number, out of range, or inconsistent with the others.
DistEnv parse_dist_env(const EnvLookup& lookup);
DistEnv dist_env_from_environment();

// The first host of a Slurm node list: "node[01-04,07],gpu5" -> "node01", "a[3]b[1-2]" ->
// "a3b1". Throws admis::Error (naming `variable`) for an empty or malformed list.
std::string slurm_first_host(const std::string& nodelist, const std::string& variable = "SLURM_NODELIST");

// The device a worker computes on: "cuda" without an index means the GPU of this worker's
// local rank ("cuda:LOCAL_RANK", as torchrun scripts set it), so the workers of one machine
// take one GPU each; an explicit "cuda:N" or "cpu" is kept.
std::string rank_device(const std::string& requested, const DistEnv& env);

// ADMIS_DIST_TIMEOUT (seconds; default 300): how long the rendezvous and every collective
// may wait for the other ranks before the run stops with an error.
std::chrono::milliseconds dist_timeout_from_environment();

// This worker's place in a process group and the collectives on it. All ranks must call
// the same collectives in the same order. Errors (a peer that died, a timeout) surface as
// admis::Error naming the rank and the operation.
class Distributed {
 public:
  // One process: every collective is the identity.
  Distributed() = default;
  // Joins the group through `store` (a TCPStore in production, a shared HashStore for
  // in-process tests). `device` picks the backend: Gloo for CPU tensors, NCCL for CUDA.
  // `rendezvous` describes the store for error messages.
  Distributed(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size, std::chrono::milliseconds timeout,
              const torch::Device& device = torch::kCPU, const std::string& gloo_hostname = "127.0.0.1",
              const std::string& rendezvous = "");
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  // The TCPStore rendezvous at env.master_addr:master_port (rank 0 serves it), then the
  // process group; a world of one returns a single-process Distributed.
  static std::shared_ptr<Distributed> connect(const DistEnv& env, std::chrono::milliseconds timeout,
                                              const torch::Device& device = torch::kCPU);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool is_main() const { return rank_ == 0; }
  bool active() const { return world_size_ > 1; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // In place, element-wise sum over the ranks.
  void all_reduce_sum(torch::Tensor& tensor, const std::string& what);
  // In place, element-wise maximum over the ranks.
  void all_reduce_max(torch::Tensor& tensor, const std::string& what);
  // Starts the sum; `wait` finishes it. Null when not active.
  c10::intrusive_ptr<c10d::Work> all_reduce_sum_async(torch::Tensor& tensor);
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);
  // In place: every rank ends with rank `root`'s values.
  void broadcast(torch::Tensor& tensor, int root, const std::string& what);
  // Every rank's `tensor` (same shape on all ranks), concatenated along dim 0 in rank order.
  torch::Tensor all_gather_cat(const torch::Tensor& tensor, const std::string& what);
  // The same on rank `root` only; the other ranks get an undefined tensor (and so never
  // hold every rank's data at once).
  torch::Tensor gather_cat(const torch::Tensor& tensor, int root, const std::string& what);
  // Rank `root` sends chunks[r] to rank r (`chunks` is read on the root only, one tensor per
  // rank, all shaped like `out`); every rank receives its chunk into `out`.
  void scatter(torch::Tensor& out, const std::vector<torch::Tensor>& chunks, int root, const std::string& what);
  void barrier(const std::string& what);

  // Waiting on work of unknown length (rank 0 running a stage alone, ranks finishing their
  // shares at different times) goes through the store, polled without a time limit, not
  // through collectives, whose timeout is meant for a dead peer. A wait still ends at once,
  // with an error, when a rank has published a failure or the store (served by rank 0)
  // is gone. `what` describes the wait for error messages.
  //   every rank calls wait_for_all(name) the same number of times, in the same order;
  //   publish(key) sets a value once (any rank); await(key) waits for it.
  void wait_for_all(const std::string& name, const std::string& what);
  void publish(const std::string& key, const std::string& value);
  std::string await(const std::string& key, const std::string& what);
  // Tells the other ranks this rank has failed (`message` says how); their waits stop.
  // Never throws: it runs while an error is already on its way.
  void publish_failure(const std::string& message) noexcept;
  // The job's last synchronisation: returns once every rank has arrived, and on rank 0
  // (which serves the store) only after every other rank has seen that, so no rank loses
  // the store while it is still reading from it.
  void farewell(const std::string& what);

  c10d::ProcessGroup* process_group() { return group_.get(); }

 private:
  int rank_ = 0;
  int world_size_ = 1;
  std::chrono::milliseconds timeout_{300000};
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  c10::intrusive_ptr<c10d::Store> sync_;  // the store's keys for the waits above
  std::int64_t waits_ = 0;                // wait_for_all calls so far, which name its keys
  // Polls until `ready` says yes; throws on a published failure or a lost store.
  void poll(const std::function<bool()>& ready, const std::string& what);
};

// The process-wide group from the environment, made on first use (single-process when no
// variables are set) for tensors on `device` (CUDA: NCCL where built with it). Training that
// is given no group uses this one.
std::shared_ptr<Distributed> world(const torch::Device& device = torch::kCPU);

// Synchronised batch norm (PyTorch's SyncBatchNorm) for the length of a training run:
// attach() makes every admis::BatchNorm1d/2d of a backbone normalise with the statistics of
// the global batch, summed over `dist`'s ranks; the destructor detaches them again.
class SynchronisedBatchNorm {
 public:
  SynchronisedBatchNorm() = default;
  ~SynchronisedBatchNorm();
  SynchronisedBatchNorm(const SynchronisedBatchNorm&) = delete;
  SynchronisedBatchNorm& operator=(const SynchronisedBatchNorm&) = delete;

  // Throws admis::Error when `backbone` has no batch norm to synchronise or has batch norms
  // of LibTorch's own type (torch::nn::BatchNorm*), which cannot be. In a single process
  // nothing is attached (per-process statistics are then the global ones).
  void attach(std::shared_ptr<Distributed> dist, torch::nn::Module& backbone);
  // Attached in a distributed run: every rank must then run every forward and backward.
  bool active() const { return module_ != nullptr; }
  std::int64_t layers() const { return layers_; }

 private:
  torch::nn::Module* module_ = nullptr;
  std::int64_t layers_ = 0;
};

// Rank 0's values of every parameter and buffer of `module`, on all ranks.
void broadcast_module(Distributed& dist, torch::nn::Module& module, const std::string& what);

// Rank 0's `value` on all ranks (a decision only rank 0 makes, e.g. which checkpoint to
// resume from); `value` itself in a single process.
std::int64_t rank0_value(Distributed& dist, std::int64_t value, const std::string& what);

}  // namespace admis::host
