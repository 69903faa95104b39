// The class-sharded margin head (see distributed_head.h).
#include "admis/host/distributed_head.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "admis/host/data_loader.h"
#include "admis/sdk/error.h"
#include "admis/sdk/host.h"

namespace admis::host {

namespace {

constexpr const char* kWho = "sharded head";
constexpr double kPi = 3.14159265358979323846;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Distributed* dist_of(AutogradContext* ctx) {
  return reinterpret_cast<Distributed*>(ctx->saved_data["dist"].toInt());
}

// All ranks' rows, concatenated in rank order ([sum n_r, D]); backward hands each rank the
// gradient of its own rows summed over the ranks, since every rank's shard of the logits
// depends on every row. Gloo gathers equal shapes only, so rows are padded to the largest
// share and cut back after.
struct GatherRows : public torch::autograd::Function<GatherRows> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows, Distributed* dist,
                               std::vector<std::int64_t> counts) {
    const std::int64_t most = *std::max_element(counts.begin(), counts.end());
    std::vector<std::int64_t> padded_shape = rows.sizes().vec();
    padded_shape[0] = most;
    torch::Tensor padded = torch::zeros(padded_shape, rows.options());
    padded.narrow(0, 0, rows.size(0)).copy_(rows);
    const torch::Tensor all = dist->all_gather_cat(padded, "the all-gather of the batch for the sharded head");
    std::vector<torch::Tensor> parts;
    std::int64_t offset = 0;  // of this rank's rows in the result
    for (std::size_t r = 0; r < counts.size(); ++r) {
      if (static_cast<int>(r) < dist->rank()) offset += counts[r];
      parts.push_back(all.narrow(0, static_cast<std::int64_t>(r) * most, counts[r]));
    }
    ctx->saved_data["dist"] = reinterpret_cast<std::int64_t>(dist);
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["count"] = rows.size(0);
    return torch::cat(parts, 0);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::Tensor sum = grads[0].contiguous().clone();
    dist_of(ctx)->all_reduce_sum(sum, "the all-reduce of the sharded head's embedding gradients");
    return {sum.narrow(0, ctx->saved_data["offset"].toInt(), ctx->saved_data["count"].toInt()), torch::Tensor(),
            torch::Tensor()};
  }
};

// Mean softmax cross-entropy of the gathered rows over all C classes, from this rank's
// logit columns [N, C_r]: log sum_j exp(z_j) - z_y with the row maximum, the sum of
// exponentials and the target logit all-reduced. The gradient, softmax - one_hot(y), is
// local to the columns; `target` [N] is the row's own column here, or -1 elsewhere.
struct ShardedCrossEntropy : public torch::autograd::Function<ShardedCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& target,
                               Distributed* dist) {
    const torch::Tensor owned = target.ge(0);
    const torch::Tensor column = target.clamp_min(0).view({-1, 1});
    torch::Tensor row_max = std::get<0>(logits.max(1));
    dist->all_reduce_max(row_max, "the all-reduce of the sharded head's row maxima");
    const torch::Tensor exp = (logits - row_max.view({-1, 1})).exp();
    torch::Tensor sum_exp = exp.sum(1);
    dist->all_reduce_sum(sum_exp, "the all-reduce of the sharded head's softmax sums");
    torch::Tensor target_logit = torch::where(owned, logits.gather(1, column).view(-1), torch::zeros_like(row_max));
    dist->all_reduce_sum(target_logit, "the all-reduce of the sharded head's target logits");
    ctx->save_for_backward({exp / sum_exp.view({-1, 1}), target});
    return (sum_exp.log() + row_max - target_logit).mean();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    torch::Tensor grad = saved[0].clone();
    const torch::Tensor& target = saved[1];
    const torch::Tensor owned = target.ge(0);
    const torch::Tensor column = target.clamp_min(0).view({-1, 1});
    grad.scatter_add_(1, column, -owned.to(grad.scalar_type()).view({-1, 1}));
    grad.mul_(grads[0] / static_cast<double>(grad.size(0)));
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

// As head_base.cpp's l2_norms: the norm along `dim`, never below 1e-12.
torch::Tensor l2_norms(const torch::Tensor& t, std::int64_t dim) {
  return t.pow(2).sum(dim, /*keepdim=*/true).sqrt().clamp_min(1e-12);
}

}  // namespace

ShardedHeadOptions sharded_head_options(const std::string& head_name, const std::map<std::string, Value>& params,
                                        const std::string& key) {
  const auto& choices = sharded_margin_choices();
  if (std::find(choices.begin(), choices.end(), head_name) == choices.end())
    throw Error(key, fmt::format("head/{} has no class-sharded form; {} works with head {}", head_name, key,
                                 fmt::join(choices, ", ")));
  auto param = [&](const char* name, const Value& fallback) {
    const auto it = params.find(name);
    return it == params.end() || it->second.empty() ? fallback : it->second;
  };
  ShardedHeadOptions h;
  h.margin_type = head_name;
  h.scale = param("scale", h.scale).as<double>();
  h.margin = param("margin", h.margin).as<double>();
  if (head_name == "arcface") h.easy_margin = param("easy_margin", h.easy_margin).as<bool>();
  if (head_name == "curricularface") h.alpha = param("alpha", h.alpha).as<double>();
  return h;
}

ShardedMarginHead::ShardedMarginHead(std::shared_ptr<Distributed> dist, std::int64_t in_features, std::int64_t classes,
                                     ShardedHeadOptions options)
    : dist_(std::move(dist)), in_features_(in_features), classes_(classes), options_(std::move(options)) {
  const auto& choices = sharded_margin_choices();
  if (std::find(choices.begin(), choices.end(), options_.margin_type) == choices.end())
    throw Error(kWho, fmt::format("unknown margin '{}'; choices are: {}", options_.margin_type, fmt::join(choices, ", ")));
  if (classes < dist_->world_size())
    throw Error(kWho, fmt::format("{} classes cannot be shared among {} ranks (each needs at least one)", classes,
                                  dist_->world_size()));
  std::tie(begin_, end_) = rank_share(classes, dist_->rank(), dist_->world_size());
  module_ = std::make_shared<torch::nn::Module>("ShardedMarginHead");
  // N(0, 0.01^2) as TFace initialises its head.
  kernel_ = module_->register_parameter("kernel", torch::empty({in_features, end_ - begin_}).normal_(0.0, 0.01));
  if (options_.margin_type == "curricularface") t_ = module_->register_buffer("t", torch::zeros({1}));
}

ShardedMarginHead::Output ShardedMarginHead::forward(const torch::Tensor& embeddings, const torch::Tensor& labels) {
  if (embeddings.dim() != 2 || embeddings.size(1) != in_features_ || labels.dim() != 1 ||
      labels.size(0) != embeddings.size(0))
    throw Error(kWho, fmt::format("expected embeddings [N, {}] and labels [N], got [{}] and [{}]", in_features_,
                                  fmt::join(embeddings.sizes(), ","), fmt::join(labels.sizes(), ",")));
  // Every rank's share size first, so that unequal shares (a short last batch) gather.
  torch::Tensor counts_tensor = dist_->all_gather_cat(torch::tensor({embeddings.size(0)}), "the batch share sizes");
  std::vector<std::int64_t> counts(counts_tensor.data_ptr<std::int64_t>(),
                                   counts_tensor.data_ptr<std::int64_t>() + counts_tensor.numel());
  Output out;
  for (auto c : counts) out.rows += c;
  if (out.rows == 0) throw Error(kWho, "the batch is empty on every rank");

  const torch::Tensor x = dist_->active()
                              ? GatherRows::apply(embeddings.to(kernel_.scalar_type()), dist_.get(), counts)
                              : embeddings.to(kernel_.scalar_type());
  torch::Tensor y = labels.to(torch::kLong);
  if (dist_->active()) {
    torch::Tensor padded = torch::zeros({*std::max_element(counts.begin(), counts.end())}, torch::kLong);
    padded.narrow(0, 0, y.size(0)).copy_(y);
    const torch::Tensor all = dist_->all_gather_cat(padded, "the all-gather of the labels for the sharded head");
    std::vector<torch::Tensor> parts;
    for (std::size_t r = 0; r < counts.size(); ++r)
      parts.push_back(all.narrow(0, static_cast<std::int64_t>(r) * padded.size(0), counts[r]));
    y = torch::cat(parts);
  }
  if (y.lt(0).logical_or(y.ge(classes_)).any().item<bool>())
    throw Error(kWho, fmt::format("a label is outside [0, {}) (the number of classes)", classes_));

  // cos(theta) against this rank's columns, as HeadBase::cosine.
  const torch::Tensor cos_theta = (x / l2_norms(x, 1)).mm(kernel_).div(l2_norms(kernel_, 0)).clamp(-1.0, 1.0);
  const torch::Tensor owned = y.ge(begin_).logical_and(y.lt(end_));
  const torch::Tensor column = torch::where(owned, y - begin_, torch::zeros_like(y)).view({-1, 1});
  const torch::Tensor target = cos_theta.gather(1, column);  // [N, 1]; meaningful where owned

  // TFace's margins on the own class (plugins/heads/tface_heads.cpp, AngularMargin & co).
  const double m = options_.margin;
  auto cos_theta_plus_m = [&](const torch::Tensor& c) {
    return c * std::cos(m) - torch::sqrt(1.0 - c.pow(2)) * std::sin(m);
  };
  auto angular_target = [&](const torch::Tensor& c, const torch::Tensor& c_m, bool easy) {
    if (easy) return torch::where(c > 0, c_m, c);
    return torch::where(c > std::cos(kPi - m), c_m, c - std::sin(kPi - m) * m);
  };
  torch::Tensor base = cos_theta, final_target;
  if (options_.margin_type == "cosface") {
    final_target = target - m;
  } else if (options_.margin_type == "arcface") {
    final_target = angular_target(target, cos_theta_plus_m(target), options_.easy_margin);
  } else {  // curricularface: hard negatives and t need every row's own-class cosine
    final_target = angular_target(target, cos_theta_plus_m(target), false);
    torch::Tensor all_target = torch::where(owned.view({-1, 1}), target.detach(), torch::zeros_like(target));
    dist_->all_reduce_sum(all_target, "the all-reduce of the own-class cosines (curricularface)");
    {
      torch::NoGradGuard no_grad;
      t_.copy_(all_target.mean() * options_.alpha + (1.0 - options_.alpha) * t_);
    }
    const torch::Tensor hard = cos_theta > cos_theta_plus_m(all_target);
    base = torch::where(hard, cos_theta * (t_ + cos_theta), cos_theta);
  }
  // The own column gets the margin where this rank owns it; elsewhere the row keeps its value.
  const torch::Tensor logits =
      base.scatter(1, column, torch::where(owned.view({-1, 1}), final_target, base.gather(1, column))) *
      options_.scale;
  const torch::Tensor local_target = torch::where(owned, column.view(-1), torch::full_like(y, -1));
  out.loss = dist_->active() ? ShardedCrossEntropy::apply(logits, local_target, dist_.get())
                             : torch::nn::functional::cross_entropy(logits, y);

  // Top-1 without margin: the own class's cosine is the row's largest.
  {
    torch::NoGradGuard no_grad;
    torch::Tensor best = std::get<0>(cos_theta.max(1));
    dist_->all_reduce_max(best, "the all-reduce of the sharded head's best cosines");
    torch::Tensor own = torch::where(owned, target.view(-1), torch::zeros_like(best));
    dist_->all_reduce_sum(own, "the all-reduce of the sharded head's own-class cosines");
    out.correct = own.ge(best).sum().item<std::int64_t>();
  }
  return out;
}

// Shards differ in width by at most one column: collectives move them padded to the
// widest, as [widest, D] rows (a column block of the kernel, transposed).
torch::Tensor ShardedMarginHead::gather_columns(const torch::Tensor& shard) {
  torch::NoGradGuard no_grad;
  const std::int64_t widest = (classes_ + dist_->world_size() - 1) / dist_->world_size();
  torch::Tensor padded = torch::zeros({widest, in_features_}, shard.options());
  padded.narrow(0, 0, end_ - begin_).copy_(shard.t());
  const torch::Tensor all = dist_->gather_cat(padded, 0, "the gather of the sharded head's columns");
  if (!all.defined()) return all;
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < dist_->world_size(); ++r) {
    const auto [b, e] = rank_share(classes_, r, dist_->world_size());
    parts.push_back(all.narrow(0, r * widest, e - b));
  }
  return torch::cat(parts, 0).t().contiguous();
}

torch::Tensor ShardedMarginHead::own_columns(const torch::Tensor& full) const {
  return full.narrow(1, begin_, end_ - begin_).contiguous();
}

StateDict ShardedMarginHead::full_state() {
  torch::Tensor kernel = gather_columns(kernel_.detach());
  if (!kernel.defined()) return {};
  StateDict state{{"kernel", kernel}};
  if (t_.defined()) state["t"] = t_.clone();
  return state;
}

namespace {

const torch::Tensor& kernel_of(const StateDict& state, std::int64_t in_features, std::int64_t classes,
                               const std::string& source) {
  auto it = state.find("kernel");
  if (it == state.end()) throw Error(source, "no 'kernel' (a head state saved by a margin head is expected)");
  if (!it->second.sizes().equals({in_features, classes}))
    throw Error(source, fmt::format("kernel has shape [{}], this head needs [{}, {}] (in_features, classes)",
                                    fmt::join(it->second.sizes(), ","), in_features, classes));
  return it->second;
}

const torch::Tensor& t_of(const StateDict& state, const std::string& source) {
  auto t = state.find("t");
  if (t == state.end()) throw Error(source, "no 't' (the curricularface running mean)");
  return t->second;
}

}  // namespace

void ShardedMarginHead::load_full_state(const StateDict& state, const std::string& source) {
  const torch::Tensor& kernel = kernel_of(state, in_features_, classes_, source);
  torch::NoGradGuard no_grad;
  kernel_.copy_(own_columns(kernel));
  if (t_.defined()) t_.copy_(t_of(state, source));
}

void ShardedMarginHead::scatter_full_state(const StateDict& state, const std::string& source) {
  if (!dist_->active()) return load_full_state(state, source);
  torch::NoGradGuard no_grad;
  const int world = dist_->world_size();
  const std::int64_t widest = (classes_ + world - 1) / world;
  std::vector<torch::Tensor> chunks;
  if (dist_->is_main()) {
    const torch::Tensor kernel = kernel_of(state, in_features_, classes_, source).to(kernel_.options());
    for (int r = 0; r < world; ++r) {
      const auto [b, e] = rank_share(classes_, r, world);
      torch::Tensor chunk = torch::zeros({widest, in_features_}, kernel_.options());
      chunk.narrow(0, 0, e - b).copy_(kernel.narrow(1, b, e - b).t());
      chunks.push_back(chunk);
    }
    if (t_.defined()) t_.copy_(t_of(state, source));
  }
  torch::Tensor mine = torch::empty({widest, in_features_}, kernel_.options());
  dist_->scatter(mine, chunks, 0, "the scatter of the initial head's columns");
  kernel_.copy_(mine.narrow(0, 0, end_ - begin_).t());
  if (t_.defined()) dist_->broadcast(t_, 0, "the broadcast of curricularface's t");
}

}  // namespace admis::host
