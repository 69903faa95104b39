// Synchronised batch norm: the SDK's batch norm layers sum their statistics through a
// BatchStatisticsReducer; here that reducer is the run's process group.
#include <fmt/format.h>

#include "admis/host/distributed.h"
#include "admis/sdk.h"
#include "admis/sdk/batch_norm.h"

namespace admis::host {

namespace {

class ProcessGroupStatistics : public BatchStatisticsReducer {
 public:
  explicit ProcessGroupStatistics(std::shared_ptr<Distributed> dist) : dist_(std::move(dist)) {}
  void all_reduce_sum(torch::Tensor& tensor) override {
    dist_->all_reduce_sum(tensor, "the sum of synchronised batch-norm statistics");
  }

 private:
  std::shared_ptr<Distributed> dist_;
};

}  // namespace

void SynchronisedBatchNorm::attach(std::shared_ptr<Distributed> dist, torch::nn::Module& backbone) {
  std::int64_t plain = 0;
  const std::int64_t synchronisable = synchronise_batch_norms(backbone, nullptr, &plain);
  if (plain > 0)
    throw Error("sync_batch_norm",
                fmt::format("the backbone has {} batch norm layer(s) of LibTorch's own type (torch::nn::BatchNorm*), "
                            "which cannot be synchronised; its plugin must build them as admis::BatchNorm1d/2d "
                            "(admis/sdk/batch_norm.h), or set sync_batch_norm: false",
                            plain));
  if (synchronisable == 0)
    throw Error("sync_batch_norm", "the backbone has no batch norm layers to synchronise; set sync_batch_norm: false");
  if (!dist->active()) return;
  layers_ = synchronise_batch_norms(backbone, std::make_shared<ProcessGroupStatistics>(std::move(dist)));
  module_ = &backbone;
}

SynchronisedBatchNorm::~SynchronisedBatchNorm() {
  if (module_) synchronise_batch_norms(*module_, nullptr);
}

}  // namespace admis::host
