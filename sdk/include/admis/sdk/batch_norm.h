#pragma once
// Batch norm whose batch statistics can be synchronised across the processes of a
// data-parallel job (PyTorch's SyncBatchNorm), as an option a backbone does not have to
// know about. admis::BatchNorm1d and admis::BatchNorm2d are torch::nn::BatchNorm1d/2d with
// the same parameters, buffers, state-dict keys and numerics; until the host attaches a
// BatchStatisticsReducer (train_recognition's sync_batch_norm: true) they compute exactly
// what LibTorch's layers do. A backbone that builds its batch norms from these types
// supports the option; one built from torch::nn::BatchNorm* is refused when it is set.
//
// With a reducer attached, a training-mode forward normalises with the mean and variance
// of the whole global batch: sum and count, then the sum of squared deviations from the
// global mean, each summed over the ranks. The sums enter autograd through an all-reduce
// whose backward is again an all-reduce, so each rank's backward gives that rank's part of
// the gradient of the global loss (the data-parallel gradient averaging does the rest).

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include "admis/sdk/error.h"
#include "admis/sdk/version.h"

namespace admis {

// Element-wise sums over the ranks of the job. Every rank calls it the same number of
// times in the same order (each batch norm layer of every forward and backward pass).
class ADMIS_SDK_API BatchStatisticsReducer {
 public:
  virtual ~BatchStatisticsReducer() = default;
  virtual void all_reduce_sum(torch::Tensor& tensor) = 0;
};

namespace batch_norm_detail {

// y = sum over ranks of x; dL/dx = sum over ranks of dL/dy (every rank's loss uses y).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               BatchStatisticsReducer* reducer) {
    // A raw pointer: the graph is backpropagated in the training step that built it, while
    // the layer that made this node still holds the reducer.
    ctx->saved_data["reducer"] = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(reducer));
    torch::Tensor sum = x.clone();
    reducer->all_reduce_sum(sum);
    return sum;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* reducer = reinterpret_cast<BatchStatisticsReducer*>(
        static_cast<std::intptr_t>(ctx->saved_data["reducer"].toInt()));
    torch::Tensor grad = grads[0].contiguous().clone();
    reducer->all_reduce_sum(grad);
    return {grad, torch::Tensor()};
  }
};

// Training-mode batch norm over the global batch. `x` is [N, C, ...]; statistics are over
// every dimension but 1. Updates the running statistics as torch::nn::BatchNorm does, with
// the global batch's mean and unbiased variance.
inline torch::Tensor synchronised_batch_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                             const torch::Tensor& bias, torch::Tensor& running_mean,
                                             torch::Tensor& running_var, double exponential_average_factor,
                                             double eps, BatchStatisticsReducer& reducer) {
  std::vector<std::int64_t> reduce_dims{0};
  std::vector<std::int64_t> channel_shape{1, x.size(1)};
  for (std::int64_t d = 2; d < x.dim(); ++d) {
    reduce_dims.push_back(d);
    channel_shape.push_back(1);
  }
  const std::int64_t local_count = x.numel() / x.size(1);

  // [sum over rows, count] summed over ranks -> the global mean.
  const torch::Tensor local_sum_count = torch::cat(
      {x.sum(reduce_dims), torch::full({1}, static_cast<double>(local_count), x.options())});
  const torch::Tensor sum_count = AllReduceSum::apply(local_sum_count, &reducer);
  const torch::Tensor count = sum_count.index({-1}).detach();
  const double global_count = count.item<double>();
  if (global_count < 2)
    throw Error("batch norm", "synchronised batch norm needs at least 2 values per channel over all ranks, got " +
                                  std::to_string(static_cast<std::int64_t>(global_count)) +
                                  " (make the global batch larger)");
  const torch::Tensor mean = sum_count.slice(0, 0, x.size(1)) / count;

  // Sum of squared deviations from the global mean, summed over ranks -> biased variance.
  const torch::Tensor centred = x - mean.view(channel_shape);
  const torch::Tensor squares = AllReduceSum::apply(centred.pow(2).sum(reduce_dims), &reducer);
  const torch::Tensor variance = squares / count;

  if (running_mean.defined()) {
    torch::NoGradGuard no_grad;
    const double f = exponential_average_factor;
    running_mean.mul_(1 - f).add_(mean.detach(), f);
    running_var.mul_(1 - f).add_(variance.detach() * (global_count / (global_count - 1)), f);
  }

  torch::Tensor y = centred * torch::rsqrt(variance + eps).view(channel_shape);
  if (weight.defined()) y = y * weight.view(channel_shape);
  if (bias.defined()) y = y + bias.view(channel_shape);
  return y;
}

}  // namespace batch_norm_detail

// What the host attaches and queries, on either dimensionality.
class ADMIS_SDK_API SynchronisableBatchNorm {
 public:
  virtual ~SynchronisableBatchNorm() = default;
  // Null: per-process statistics (LibTorch's own forward).
  void synchronise(std::shared_ptr<BatchStatisticsReducer> reducer) { reducer_ = std::move(reducer); }
  bool synchronised() const { return reducer_ != nullptr; }

 protected:
  std::shared_ptr<BatchStatisticsReducer> reducer_;
};

// LibTorch's batch norm (its NormImplBase registers the same parameters and buffers as
// torch::nn::BatchNorm{1,2}d), plus the synchronised training-mode forward. Not derived
// from torch::nn::BatchNorm2dImpl: LibTorch does not export what a class derived from it
// links against.
template <class Derived, std::int64_t kMinDim, std::int64_t kMaxDim, char kDims>
class SynchronisableBatchNormImpl
    : public torch::nn::NormImplBase<kMaxDim - 2, Derived, torch::nn::BatchNormOptions>,
      public SynchronisableBatchNorm {
 public:
  explicit SynchronisableBatchNormImpl(const torch::nn::BatchNormOptions& options)
      : torch::nn::NormImplBase<kMaxDim - 2, Derived, torch::nn::BatchNormOptions>(options) {}
  explicit SynchronisableBatchNormImpl(std::int64_t num_features)
      : SynchronisableBatchNormImpl(torch::nn::BatchNormOptions(num_features)) {}

  void pretty_print(std::ostream& stream) const override {
    const auto& o = this->options;
    stream << std::boolalpha << "admis::BatchNorm" << kDims << "d(" << o.num_features() << ", eps=" << o.eps()
           << ", momentum=";
    if (o.momentum()) stream << *o.momentum(); else stream << "None";
    stream << ", affine=" << o.affine() << ", track_running_stats=" << o.track_running_stats() << ")";
  }

  // As torch::nn::BatchNorm's forward, over the global batch when synchronised and training.
  torch::Tensor forward(const torch::Tensor& input) {
    this->_check_input_dim(input);
    const bool track = this->options.track_running_stats();
    double factor = this->options.momentum().value_or(0.0);
    if (this->is_training() && track && this->num_batches_tracked.defined()) {
      this->num_batches_tracked += 1;
      if (!this->options.momentum()) factor = 1.0 / this->num_batches_tracked.template item<double>();
    }
    if (reducer_ && this->is_training()) {
      torch::Tensor running_mean = track ? this->running_mean : torch::Tensor();
      torch::Tensor running_var = track ? this->running_var : torch::Tensor();
      return batch_norm_detail::synchronised_batch_norm(input, this->weight, this->bias, running_mean, running_var,
                                                        factor, this->options.eps(), *reducer_);
    }
    return torch::nn::functional::detail::batch_norm(input, this->running_mean, this->running_var, this->weight,
                                                     this->bias, this->is_training() || !track, factor,
                                                     this->options.eps());
  }

 protected:
  void _check_input_dim(const torch::Tensor& input) override {
    if (input.dim() < kMinDim || input.dim() > kMaxDim)
      throw Error("batch norm", std::string("admis::BatchNorm") + kDims + "d expected a " + std::to_string(kMinDim) +
                                    (kMinDim == kMaxDim ? "" : " or " + std::to_string(kMaxDim)) + "D input, got " +
                                    std::to_string(input.dim()) + "D");
  }
};

// torch::nn::BatchNorm1d: [N, C] or [N, C, L].
class ADMIS_SDK_API BatchNorm1dImpl : public SynchronisableBatchNormImpl<BatchNorm1dImpl, 2, 3, '1'> {
 public:
  using SynchronisableBatchNormImpl::SynchronisableBatchNormImpl;
};
TORCH_MODULE(BatchNorm1d);

// torch::nn::BatchNorm2d: [N, C, H, W].
class ADMIS_SDK_API BatchNorm2dImpl : public SynchronisableBatchNormImpl<BatchNorm2dImpl, 4, 4, '2'> {
 public:
  using SynchronisableBatchNormImpl::SynchronisableBatchNormImpl;
};
TORCH_MODULE(BatchNorm2d);

// Attaches `reducer` (null: detaches) to every synchronisable batch norm in `module`.
// Returns how many layers it reached and, in `plain`, how many batch norms are LibTorch's
// own (which cannot be synchronised).
inline std::int64_t synchronise_batch_norms(torch::nn::Module& module,
                                            const std::shared_ptr<BatchStatisticsReducer>& reducer,
                                            std::int64_t* plain = nullptr) {
  std::int64_t reached = 0, others = 0;
  auto visit = [&](torch::nn::Module& m) {
    if (auto* layer = dynamic_cast<SynchronisableBatchNorm*>(&m)) {
      layer->synchronise(reducer);
      ++reached;
    } else if (m.as<torch::nn::BatchNorm1d>() || m.as<torch::nn::BatchNorm2d>() || m.as<torch::nn::BatchNorm3d>()) {
      ++others;
    }
  };
  visit(module);  // (children only below: `module` need not be owned by a shared_ptr)
  for (const auto& m : module.modules(/*include_self=*/false)) visit(*m);
  if (plain) *plain = others;
  return reached;
}

// True when some batch norm of `module` is synchronised (train-mode batches then need only
// be large enough over all ranks together).
inline bool has_synchronised_batch_norm(torch::nn::Module& module) {
  auto synchronised = [](torch::nn::Module& m) {
    auto* layer = dynamic_cast<SynchronisableBatchNorm*>(&m);
    return layer && layer->synchronised();
  };
  if (synchronised(module)) return true;
  for (const auto& m : module.modules(/*include_self=*/false))
    if (synchronised(*m)) return true;
  return false;
}

}  // namespace admis
