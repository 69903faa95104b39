// The class-sharded margin head against the single-process head plugins: the same loss,
// the same gradients for the embeddings and for each rank's kernel columns, the same
// CurricularFace running mean, and a kernel that gathers back to the single-process layout.
#include <fmt/format.h>

#include "admis/host/data_loader.h"
#include "admis/host/distributed_head.h"
#include "dist_util.h"

using namespace admis;
using namespace admis::host;

namespace {

struct Reference {
  double loss = 0;
  torch::Tensor embedding_grad, kernel_grad, kernel, t;
  std::int64_t correct = 0;
};

ShardedHeadOptions options_for(const std::string& type) {
  ShardedHeadOptions o;
  o.margin_type = type;
  o.scale = 16.0;  // the plugins' parameters below are the same
  o.margin = type == "cosface" ? 0.35 : 0.5;
  o.alpha = 0.3;
  return o;
}

// The plugin head's loss and gradients on the whole batch after one forward pass (which
// also moves CurricularFace's t).
Reference reference(const std::string& type, const torch::Tensor& x, const torch::Tensor& y, std::int64_t classes) {
  std::map<std::string, Value> params = {{"in_features", x.size(1)}, {"out_features", classes}, {"scale", 16.0}};
  params["margin"] = type == "cosface" ? 0.35 : 0.5;
  if (type == "curricularface") params["alpha"] = 0.3;
  auto head = test::create<Head>(Kind::Head, type, params);
  Reference r;
  r.kernel = head->module().named_parameters()["kernel"].detach().clone();
  torch::Tensor input = x.clone().requires_grad_(true);
  const HeadOutput out = head->forward(input, y);
  const torch::Tensor loss = torch::nn::functional::cross_entropy(out.logits, y);
  loss.backward();
  r.loss = loss.item<double>();
  r.embedding_grad = input.grad();
  r.kernel_grad = head->module().named_parameters()["kernel"].grad();
  r.correct = out.original_logits.argmax(1).eq(y).sum().item<std::int64_t>();
  if (type == "curricularface") r.t = head->module().named_buffers()["t"].clone();
  return r;
}

void check_sharded(const std::string& type, int world, std::int64_t rows, std::int64_t classes) {
  SCOPED_TRACE(fmt::format("{}: {} ranks, {} rows, {} classes", type, world, rows, classes));
  torch::manual_seed(13);
  const torch::Tensor x = torch::randn({rows, 8});
  // Labels of every rank's columns; some rows made easy so that the margin branches and
  // the hard-negative test both take both sides.
  const torch::Tensor y = torch::randint(classes, {rows}, torch::kLong);
  const Reference ref = reference(type, x, y, classes);

  test::run_ranks(world, [&](std::shared_ptr<Distributed> d) {
    ShardedMarginHead head(d, 8, classes, options_for(type));
    // The whole head on rank 0 only, as in training; each rank receives its columns.
    const StateDict whole = type == "curricularface" ? StateDict{{"kernel", ref.kernel}, {"t", torch::zeros({1})}}
                                                     : StateDict{{"kernel", ref.kernel}};
    head.scatter_full_state(d->is_main() ? whole : StateDict{}, "reference");
    EXPECT_TRUE(torch::equal(head.kernel(), head.own_columns(ref.kernel)));
    const auto [b, e] = rank_share(rows, d->rank(), d->world_size());
    torch::Tensor mine = x.narrow(0, b, e - b).clone().requires_grad_(true);
    const auto out = head.forward(mine, y.narrow(0, b, e - b));
    out.loss.backward();
    EXPECT_NEAR(out.loss.item<double>(), ref.loss, 1e-5 * std::max(1.0, ref.loss));
    EXPECT_EQ(out.rows, rows);
    EXPECT_EQ(out.correct, ref.correct);
    if (e > b) {
      EXPECT_TRUE(test::all_close(mine.grad(), ref.embedding_grad.narrow(0, b, e - b), 1e-6));
    }
    // The kernel's gradient scales with 1/|w| (columns of norm ~0.03): compare relative to it.
    const torch::Tensor kernel_grad = ref.kernel_grad.narrow(1, head.class_begin(), head.class_end() - head.class_begin());
    EXPECT_TRUE(test::all_close(head.kernel().grad(), kernel_grad,
                                1e-6 * std::max(1.0, ref.kernel_grad.abs().max().item<double>())));
    // Gathered again on rank 0 alone: no other rank ever holds the whole classifier.
    const StateDict full = head.full_state();
    if (!d->is_main()) {
      EXPECT_TRUE(full.empty());
      return;
    }
    EXPECT_TRUE(torch::equal(full.at("kernel"), ref.kernel));
    if (type == "curricularface") {
      EXPECT_TRUE(test::all_close(full.at("t"), ref.t, 1e-7));
    }
  });
}

}  // namespace

TEST(ShardedHead, MatchesTheSingleProcessHeads) {
  test::runtime();
  for (const std::string type : {"arcface", "cosface", "curricularface"}) {
    check_sharded(type, 2, 10, 9);  // shares of 5/5 rows, 5/4 classes
    check_sharded(type, 3, 7, 11);  // 3/2/2 rows, 4/4/3 classes
    check_sharded(type, 1, 6, 5);   // one process: the plain cross-entropy path
  }
}

TEST(ShardedHead, ARankWithNoRowsStillTakesPart) {
  test::runtime();
  check_sharded("arcface", 3, 2, 7);  // rank 2 holds no rows this step, only columns
}

TEST(ShardedHead, RejectsBadSetups) {
  test::run_ranks(2, [](std::shared_ptr<Distributed> d) {
    EXPECT_THAT(test::error_of([&] { ShardedMarginHead(d, 8, 1, ShardedHeadOptions{}); }),
                ::testing::HasSubstr("1 classes cannot be shared among 2 ranks"));
    ShardedHeadOptions bad;
    bad.margin_type = "sphereface";
    EXPECT_THAT(test::error_of([&] { ShardedMarginHead(d, 8, 4, bad); }),
                ::testing::HasSubstr("unknown margin 'sphereface'"));
    ShardedMarginHead head(d, 8, 4, ShardedHeadOptions{});
    EXPECT_THAT(test::error_of([&] { head.load_full_state({{"kernel", torch::zeros({8, 5})}}, "ckpt.safetensors"); }),
                ::testing::AllOf(::testing::HasSubstr("ckpt.safetensors"), ::testing::HasSubstr("[8, 4]")));
  });
}
