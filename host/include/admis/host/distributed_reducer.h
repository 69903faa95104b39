#pragma once
// Data-parallel gradient averaging, as PyTorch's DistributedDataParallel does it (whose C++
// class Debian's LibTorch does not ship): parameters are packed, in reverse order, into
// buckets of about `bucket_bytes`; a gradient hook copies each gradient into its bucket as
// backward produces it, and a full bucket's all-reduce starts at once, so communication
// overlaps the rest of backward. finish() waits and writes the averages back to .grad.

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "admis/host/distributed.h"

namespace admis::host {

class GradientReducer {
 public:
  // `params` in model order (the reverse is roughly the order backward produces them).
  // Parameters that do not require a gradient are left out. `average` false sums instead of
  // averaging: for gradients of a loss that is already the mean over all ranks' samples
  // (the class-sharded head's).
  GradientReducer(std::shared_ptr<Distributed> dist, std::vector<torch::Tensor> params,
                  std::int64_t bucket_bytes = 25 * 1024 * 1024, bool average = true);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Arms the hooks for the next backward pass. `overlap` false holds every all-reduce back
  // until finish(): needed when backward issues collectives of its own (synchronised batch
  // norm) and the ranks' graphs differ (a rank with an empty share has no head in its
  // graph), since the buckets would then start at different points of that sequence.
  void prepare(bool overlap = true);
  // After backward: buckets whose parameters got no gradient (unused, or a rank with an
  // empty batch) are completed with zeros and started, in bucket order; then waits for
  // every all-reduce and sets each parameter's .grad to the mean over the ranks.
  void finish();

  std::size_t bucket_count() const { return buckets_.size(); }
  // Seconds finish() spent waiting for communication (what backward did not hide), and the
  // steps it was measured over.
  double wait_seconds() const { return wait_seconds_; }
  std::int64_t steps() const { return steps_; }

 private:
  struct Bucket {
    torch::Tensor flat;               // one dtype, one device
    std::vector<std::size_t> params;  // indices into params_
    std::vector<std::int64_t> offsets;
    std::size_t ready = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  void on_gradient(std::size_t param, const torch::Tensor& grad);
  void launch_ready_buckets();
  void launch(Bucket& bucket);

  std::shared_ptr<Distributed> dist_;
  std::vector<torch::Tensor> params_;
  std::vector<std::size_t> bucket_of_;  // per parameter
  std::vector<std::size_t> slot_of_;    // per parameter, within its bucket
  std::vector<bool> seen_;              // per parameter, this step
  std::vector<unsigned> hooks_;
  std::vector<Bucket> buckets_;
  std::size_t next_launch_ = 0;
  bool armed_ = false;
  bool average_ = true;
  bool overlap_ = true;
  double wait_seconds_ = 0;
  std::int64_t steps_ = 0;
};

}  // namespace admis::host
