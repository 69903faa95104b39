#pragma once
// The class-sharded margin head (TFace's DIST_FC, insightface's Partial FC idea without the
// sampling): rank r keeps only the classifier columns of its classes, [D, C_r], so the
// classifier of hundreds of thousands of identities is spread over the ranks. Each step
// the ranks' embeddings and labels are all-gathered; every rank computes the cosine logits
// of the whole gathered batch against its own columns, applies the margin to the columns
// it owns, and the softmax cross-entropy over all C classes is assembled from all-reduced
// row maxima, sums of exponentials and target logits. The margins are TFace's (ArcFace,
// CosFace, CurricularFace) exactly as the bundled head plugins compute them
// (plugins/heads/tface_heads.cpp), which the tests check by comparing with those heads.

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admis/host/distributed.h"
#include "admis/sdk/host.h"

namespace admis::host {

inline const std::vector<std::string>& sharded_margin_choices() {
  static const std::vector<std::string> c = {"arcface", "cosface", "curricularface"};
  return c;
}

struct ShardedHeadOptions {
  std::string margin_type = "arcface";  // one of sharded_margin_choices()
  double scale = 64.0;                  // s
  double margin = 0.5;                  // m (radians for arcface/curricularface)
  bool easy_margin = false;             // arcface only
  double alpha = 0.1;                   // curricularface's running-mean momentum for t
};

// The sharded form of head plugin `head_name` (arcface, cosface, curricularface) with the
// margin parameters among its `params` (the plugins' defaults for those not given). Throws
// admis::Error, naming `key` (e.g. "shard_head"), for a head without a sharded form.
ShardedHeadOptions sharded_head_options(const std::string& head_name, const std::map<std::string, Value>& params,
                                        const std::string& key);

class ShardedMarginHead {
 public:
  // `classes` are split into contiguous ranges, rank r taking rank_share(classes, r, world).
  ShardedMarginHead(std::shared_ptr<Distributed> dist, std::int64_t in_features, std::int64_t classes,
                    ShardedHeadOptions options);

  struct Output {
    torch::Tensor loss;       // scalar: mean cross-entropy over the gathered (global) batch
    std::int64_t rows = 0;    // samples in the global batch
    std::int64_t correct = 0; // of them, top-1 correct on the logits without margin
  };
  // embeddings [n_r, D] and labels [n_r] of this rank's share (n_r may differ by rank, and
  // be 0). Collective: every rank calls it, in the same step.
  Output forward(const torch::Tensor& embeddings, const torch::Tensor& labels);

  std::int64_t in_features() const { return in_features_; }
  std::int64_t classes() const { return classes_; }
  std::int64_t class_begin() const { return begin_; }
  std::int64_t class_end() const { return end_; }
  // The module holding this rank's `kernel` [D, C_r] (and curricularface's `t`).
  torch::nn::Module& module() { return *module_; }
  torch::Tensor kernel() const { return kernel_; }

  // The whole head as the single-process head saves it ({"kernel": [D, C]}, plus "t"), on
  // rank 0; the other ranks get an empty state, so no rank but 0 ever holds the whole
  // classifier. Collective. A checkpoint so written loads at any world size.
  StateDict full_state();
  // Takes this rank's columns from a single-process head state (e.g. a checkpoint).
  void load_full_state(const StateDict& state, const std::string& source);
  // The same from rank 0's `state` (the initial head, which only rank 0 has; ignored on the
  // other ranks), each rank receiving just its columns. Collective.
  void scatter_full_state(const StateDict& state, const std::string& source);
  // A [D, C_r] tensor laid out like this rank's kernel (its gradient, a momentum buffer)
  // gathered to [D, C] on rank 0 (collective; undefined on the other ranks), and the
  // inverse, this rank's columns of a [D, C].
  torch::Tensor gather_columns(const torch::Tensor& shard);
  torch::Tensor own_columns(const torch::Tensor& full) const;

 private:
  std::shared_ptr<Distributed> dist_;
  std::int64_t in_features_, classes_, begin_, end_;
  ShardedHeadOptions options_;
  std::shared_ptr<torch::nn::Module> module_;
  torch::Tensor kernel_;
  torch::Tensor t_;
};

}  // namespace admis::host
