// Bucketed gradient all-reduce from gradient hooks (see distributed_reducer.h).
#include "admis/host/distributed_reducer.h"

#include <fmt/format.h>

#include "admis/sdk/error.h"

namespace admis::host {

GradientReducer::GradientReducer(std::shared_ptr<Distributed> dist, std::vector<torch::Tensor> params,
                                 std::int64_t bucket_bytes, bool average)
    : dist_(std::move(dist)), average_(average) {
  for (auto& p : params)
    if (p.requires_grad()) params_.push_back(p);
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  seen_.assign(params_.size(), false);
  // Reverse model order: the last layers' gradients come first in backward, so the first
  // bucket fills (and starts communicating) while earlier layers are still differentiated.
  std::int64_t bytes = 0;
  for (std::size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k];
    const std::int64_t size = p.numel() * static_cast<std::int64_t>(p.element_size());
    const bool fits = !buckets_.empty() && bytes + size <= bucket_bytes &&
                      params_[buckets_.back().params.front()].scalar_type() == p.scalar_type() &&
                      params_[buckets_.back().params.front()].device() == p.device();
    if (!fits) {
      buckets_.emplace_back();
      bytes = 0;
    }
    Bucket& b = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = b.params.size();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
    b.params.push_back(k);
    bytes += size;
  }
  if (!dist_->active()) return;  // one process: nothing to average, no buffers, no hooks
  for (Bucket& b : buckets_) {
    const torch::Tensor& last = params_[b.params.back()];
    b.flat = torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
  }
  for (std::size_t k = 0; k < params_.size(); ++k)
    hooks_.push_back(params_[k].register_hook([this, k](const torch::Tensor& grad) { on_gradient(k, grad); }));
}

GradientReducer::~GradientReducer() {
  // The hooks capture `this`; a parameter outliving the reducer must not call into it.
  for (std::size_t k = 0; k < hooks_.size(); ++k) params_[k].remove_hook(hooks_[k]);
  // Collectives still in flight (an exception mid-step) must not write into freed buckets.
  for (Bucket& b : buckets_)
    if (b.work) {
      try {
        b.work->wait();
      } catch (const std::exception&) {
        // The step already failed; its own error is the one being reported.
      }
    }
}

void GradientReducer::prepare(bool overlap) {
  overlap_ = overlap;
  for (Bucket& b : buckets_) {
    b.ready = 0;
    b.work.reset();
  }
  seen_.assign(params_.size(), false);
  next_launch_ = 0;
  armed_ = dist_->active();
}

void GradientReducer::on_gradient(std::size_t k, const torch::Tensor& grad) {
  if (!armed_) return;  // a backward outside a training step (a test, an evaluation)
  Bucket& b = buckets_[bucket_of_[k]];
  // A parameter used twice gets one hook call with the summed gradient (the hook sits on
  // the leaf's accumulator); a second call would mean a second backward in the same step.
  if (seen_[k])
    throw Error("distributed", "a parameter received two gradients in one step (two backward passes between "
                               "prepare() and finish()?)");
  seen_[k] = true;
  const torch::Tensor& p = params_[k];
  b.flat.narrow(0, b.offsets[slot_of_[k]], p.numel()).copy_(grad.reshape({-1}));
  if (++b.ready == b.params.size() && overlap_) launch_ready_buckets();
}

void GradientReducer::launch_ready_buckets() {
  // Every rank must issue the all-reduces in the same order, whatever order its hooks fire
  // in, so buckets start strictly in index order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].ready == buckets_[next_launch_].params.size())
    launch(buckets_[next_launch_++]);
}

void GradientReducer::launch(Bucket& bucket) { bucket.work = dist_->all_reduce_sum_async(bucket.flat); }

void GradientReducer::finish() {
  if (!dist_->active()) return;
  armed_ = false;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t k = 0; k < params_.size(); ++k)
    if (!seen_[k]) {
      Bucket& b = buckets_[bucket_of_[k]];
      b.flat.narrow(0, b.offsets[slot_of_[k]], params_[k].numel()).zero_();
      seen_[k] = true;
      ++b.ready;
    }
  launch_ready_buckets();
  const double world = static_cast<double>(dist_->world_size());
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& b = buckets_[i];
    dist_->wait(b.work, fmt::format("the gradient all-reduce of bucket {}/{}", i + 1, buckets_.size()));
    b.work.reset();
    if (average_) b.flat.div_(world);
    for (std::size_t s = 0; s < b.params.size(); ++s) {
      torch::Tensor& p = params_[b.params[s]];
      const torch::Tensor mean = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(mean);
      else p.mutable_grad() = mean.clone();
    }
  }
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++steps_;
}

}  // namespace admis::host
