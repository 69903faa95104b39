// Data-parallel training with ranks as threads on a shared HashStore: the collectives, the
// loader's split of each batch, the bucketed gradient averaging, and the central promise:
// 2 ranks with half the batch each train to the same weights as 1 rank with the whole.
#include <boost/filesystem.hpp>

#include <set>

#include "admis/host/data_loader.h"
#include "admis/host/distributed_head.h"
#include "admis/host/distributed_reducer.h"
#include "admis/host/train_recognition.h"
#include "admis/host/weights.h"
#include "dist_util.h"
#include "unit/train/toy.h"

using namespace admis;
using namespace admis::host;
namespace fs = boost::filesystem;

TEST(DataParallel, Collectives) {
  test::run_ranks(3, [](std::shared_ptr<Distributed> d) {
    const int r = d->rank();
    torch::Tensor x = torch::full({4}, static_cast<float>(r + 1));
    d->all_reduce_sum(x, "test sum");
    EXPECT_TRUE(torch::equal(x, torch::full({4}, 6.0f)));
    torch::Tensor b = torch::full({2, 2}, static_cast<float>(r * 10));
    d->broadcast(b, 1, "test broadcast");
    EXPECT_TRUE(torch::equal(b, torch::full({2, 2}, 10.0f)));
    const torch::Tensor g = d->all_gather_cat(torch::full({2, 3}, static_cast<float>(r)), "test gather");
    ASSERT_EQ(g.sizes(), torch::IntArrayRef({6, 3}));
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(torch::equal(g.narrow(0, 2 * k, 2), torch::full({2, 3}, float(k))));
    d->barrier("test barrier");
  });
}

TEST(DataParallel, RankSharesCoverTheBatchOnce) {
  for (std::int64_t n : {0, 1, 2, 7, 8, 9, 64}) {
    for (int world : {1, 2, 3, 5}) {
      std::int64_t next = 0, smallest = n, largest = 0;
      for (int r = 0; r < world; ++r) {
        const auto [b, e] = rank_share(n, r, world);
        EXPECT_EQ(b, next) << n << " over " << world;
        next = e;
        smallest = std::min(smallest, e - b);
        largest = std::max(largest, e - b);
      }
      EXPECT_EQ(next, n);
      EXPECT_LE(largest - smallest, 1);
    }
  }
}

// The ranks' batches, side by side, are the single-process batches: the same samples in
// the same order, with the same augmentation.
TEST(DataParallel, LoaderSharesUnionToTheSingleProcessEpoch) {
  test::ToyReader reader(6, 5);  // 30 samples: batches of 8, 8, 8, 6
  test::ToyFlip flip;
  LoaderOptions one;
  one.batch_size = 8;
  one.workers = 0;
  one.seed = 3;
  DataLoader whole(reader, {&flip}, one);
  std::vector<DataLoader*> parts;
  std::vector<std::unique_ptr<DataLoader>> owned;
  for (int r = 0; r < 3; ++r) {  // 3 ranks: shares of 3/3/2 and 2/2/2
    LoaderOptions o = one;
    o.rank = r;
    o.world_size = 3;
    o.workers = r == 1 ? 2 : 0;
    owned.push_back(std::make_unique<DataLoader>(reader, std::vector<Augmenter*>{&flip}, o));
    EXPECT_EQ(owned.back()->batches_per_epoch(), whole.batches_per_epoch());
  }
  for (std::int64_t epoch : {0, 1}) {
    whole.start_epoch(epoch);
    for (auto& p : owned) p->start_epoch(epoch);
    std::set<std::int64_t> seen;
    Batch full;
    while (whole.next(full)) {
      std::vector<torch::Tensor> images, indices;
      for (auto& p : owned) {
        Batch part;
        ASSERT_TRUE(p->next(part));
        EXPECT_EQ(part.index, full.index);
        EXPECT_EQ(part.global_size, full.images.size(0));
        images.push_back(part.images);
        indices.push_back(part.indices);
      }
      EXPECT_TRUE(torch::equal(torch::cat(indices), full.indices));
      EXPECT_TRUE(torch::equal(torch::cat(images), full.images));
      for (std::int64_t i = 0; i < full.indices.size(0); ++i) seen.insert(full.indices[i].item<std::int64_t>());
    }
    EXPECT_EQ(seen.size(), 30u);
    for (auto& p : owned) {
      Batch extra;
      EXPECT_FALSE(p->next(extra));
    }
  }
}

// Averaging in buckets (several, a bucket smaller than one parameter included) gives every
// rank the gradient of the mean loss over all ranks' samples; hooks are inert outside a
// prepared step, and a rank that had no samples still takes part.
TEST(DataParallel, GradientReducerAveragesInBuckets) {
  torch::manual_seed(4);
  torch::nn::Sequential reference(torch::nn::Linear(6, 5), torch::nn::Tanh(), torch::nn::Linear(5, 3));
  const torch::Tensor x = torch::randn({8, 6});
  const torch::Tensor y = torch::randn({8, 3});
  auto loss_of = [](torch::nn::Sequential& m, const torch::Tensor& in, const torch::Tensor& out) {
    return (m->forward(in) - out).pow(2).mean();
  };
  loss_of(reference, x, y).backward();

  for (std::int64_t bucket_bytes : {std::int64_t{1} << 20, std::int64_t{40}}) {
    test::run_ranks(2, [&](std::shared_ptr<Distributed> d) {
      torch::nn::Sequential m(torch::nn::Linear(6, 5), torch::nn::Tanh(), torch::nn::Linear(5, 3));
      {
        torch::NoGradGuard no_grad;
        for (std::size_t i = 0; i < m->parameters().size(); ++i)
          m->parameters()[i].copy_(reference->parameters()[i]);
      }
      GradientReducer reducer(d, m->parameters(), bucket_bytes);
      EXPECT_EQ(reducer.bucket_count(), bucket_bytes == 40 ? 4u : 1u);  // 40 bytes: each parameter alone
      // Not prepared: an ordinary backward, no communication.
      loss_of(m, x, y).backward();
      for (auto& p : m->parameters()) p.mutable_grad().zero_();

      reducer.prepare();
      const auto half = x.narrow(0, 4 * d->rank(), 4);
      loss_of(m, half, y.narrow(0, 4 * d->rank(), 4)).backward();
      reducer.finish();
      for (std::size_t i = 0; i < m->parameters().size(); ++i)
        EXPECT_TRUE(test::all_close(m->parameters()[i].grad(), reference->parameters()[i].grad(), 1e-6)) << i;

      // Rank 1 without samples: the mean of rank 0's gradient and zero.
      for (auto& p : m->parameters()) p.mutable_grad().zero_();
      reducer.prepare();
      if (d->rank() == 0) loss_of(m, x, y).backward();
      reducer.finish();
      for (std::size_t i = 0; i < m->parameters().size(); ++i)
        EXPECT_TRUE(test::all_close(m->parameters()[i].grad(), reference->parameters()[i].grad() / 2, 1e-6)) << i;
    });
  }
}

namespace {

// 30 samples (ToyReader(6, 5)) in batches of 7: 7,7,7,7,2 -> shares 4/3 and 1/1 on two ranks.
TrainOptions parallel_options() { return test::parallel_train_options(7); }

std::shared_ptr<Head> make_head(const std::string& name) {
  return test::create<Head>(Kind::Head, name, {{"in_features", std::int64_t{32}}, {"out_features", std::int64_t{6}}});
}

StateDict train_single(const std::string& head_name, const TrainOptions& o, const std::string& dir,
                       StateDict* head_state) {
  torch::manual_seed(21);
  test::PlainBackbone backbone(32);
  auto head = make_head(head_name);
  test::ToyReader reader(6, 5);
  test::ToyFlip flip;
  train_recognition(backbone, *head, reader, {&flip}, o, dir);
  *head_state = module_state_dict(head->module());
  return module_state_dict(backbone.module());
}

}  // namespace

// The proof of data parallelism: 2 ranks x (global batch 7, shares of 4/3 and 1/1) end
// with the weights of 1 rank x 7 after 10 steps, within float rounding. Rank 1 starts from
// other weights, so the broadcast from rank 0 is needed too. Only rank 0 writes files.
TEST(DataParallel, TwoRanksTrainLikeOneWithTheWholeBatch) {
  test::runtime();  // the plugins, loaded before the threads use them
  for (const std::string head_name : {"arcface", "cosface"}) {
    const TrainOptions o = parallel_options();
    StateDict single_head;
    const StateDict single = train_single(head_name, o, test::temp_dir("dp_single"), &single_head);

    const std::string dir = test::temp_dir("dp_two");
    std::vector<StateDict> backbones(2), heads(2);
    std::vector<TrainSummary> summaries(2);
    std::vector<std::unique_ptr<test::PlainBackbone>> models;
    std::vector<std::shared_ptr<Head>> head_modules;
    for (int r = 0; r < 2; ++r) {
      torch::manual_seed(r == 0 ? 21 : 77);
      models.push_back(std::make_unique<test::PlainBackbone>(32));
      head_modules.push_back(make_head(head_name));
    }
    test::ToyReader reader(6, 5);
    test::ToyFlip flip;
    test::run_ranks(2, [&](std::shared_ptr<Distributed> d) {
      TrainOptions ro = o;
      ro.distributed = d;
      const int r = d->rank();
      summaries[r] = train_recognition(*models[r], *head_modules[r], reader, {&flip}, ro, dir);
      backbones[r] = module_state_dict(models[r]->module());
      heads[r] = module_state_dict(head_modules[r]->module());
    });
    EXPECT_EQ(summaries[0].steps, 10);
    EXPECT_EQ(summaries[0].world_size, 2);
    EXPECT_GE(summaries[0].allreduce_wait_seconds, 0.0);
    for (const auto& [name, t] : single) {
      // The ranks agree exactly (one all-reduced gradient), and with one process up to
      // the rounding of summing the batch in two parts.
      EXPECT_TRUE(torch::equal(backbones[0].at(name), backbones[1].at(name))) << head_name << " " << name;
      EXPECT_TRUE(test::all_close(backbones[0].at(name), t, 2e-5)) << head_name << " " << name;
    }
    EXPECT_TRUE(test::all_close(heads[0].at("kernel"), single_head.at("kernel"), 2e-5)) << head_name;
    // Rank 0 wrote the outputs; the checkpoint has the single-process layout.
    EXPECT_TRUE(fs::exists(fs::path(dir) / "backbone.safetensors"));
    EXPECT_TRUE(fs::exists(fs::path(dir) / "metrics.csv"));
    EXPECT_TRUE(fs::is_directory(fs::path(dir) / "checkpoints/epoch-2"));
    const StateDict saved = read_safetensors((fs::path(dir) / "backbone.safetensors").string());
    for (const auto& [name, t] : backbones[0]) EXPECT_TRUE(torch::equal(saved.at(name), t)) << name;
  }
}

// A checkpoint written by 2 ranks resumes on 1 (and the result matches 2 epochs straight).
TEST(DataParallel, CheckpointOfTwoRanksResumesOnOne) {
  test::runtime();
  TrainOptions o = parallel_options();
  StateDict straight_head;
  const StateDict straight = train_single("cosface", o, test::temp_dir("dp_straight"), &straight_head);

  const std::string dir = test::temp_dir("dp_resume");
  std::vector<std::unique_ptr<test::PlainBackbone>> models;
  std::vector<std::shared_ptr<Head>> heads;
  for (int r = 0; r < 2; ++r) {
    torch::manual_seed(21);
    models.push_back(std::make_unique<test::PlainBackbone>(32));
    heads.push_back(make_head("cosface"));
  }
  test::ToyReader reader(6, 5);
  test::ToyFlip flip;
  test::run_ranks(2, [&](std::shared_ptr<Distributed> d) {
    TrainOptions first = o;
    first.epochs = 1;
    first.distributed = d;
    train_recognition(*models[d->rank()], *heads[d->rank()], reader, {&flip}, first, dir);
  });
  ASSERT_TRUE(fs::is_directory(fs::path(dir) / "checkpoints/epoch-1"));

  torch::manual_seed(99);  // other initial weights: the checkpoint must replace them
  test::PlainBackbone backbone(32);
  auto head = make_head("cosface");
  TrainOptions rest = o;
  rest.distributed = std::make_shared<Distributed>();
  const TrainSummary s = train_recognition(backbone, *head, reader, {&flip}, rest, dir);
  EXPECT_EQ(s.start_epoch, 1);
  EXPECT_EQ(s.steps, 5);
  for (const auto& [name, t] : module_state_dict(backbone.module()))
    EXPECT_TRUE(test::all_close(t, straight.at(name), 2e-5)) << name;
}

// The class-sharded head in training: 2 ranks, each with half of the classifier's columns,
// train to the weights of 1 rank with the plugin head and the whole batch; rank 0's head
// (the only one: rank 1 passes none) receives the gathered classifier; and its checkpoint
// resumes on 1 rank, unsharded.
TEST(DataParallel, ShardedHeadTrainsLikeTheSingleProcessHead) {
  test::runtime();
  for (const std::string head_name : {"arcface", "curricularface"}) {
    const TrainOptions o = parallel_options();
    StateDict single_head;
    const StateDict single = train_single(head_name, o, test::temp_dir("sharded_single"), &single_head);

    const std::string dir = test::temp_dir("sharded_two");
    std::vector<std::unique_ptr<test::PlainBackbone>> models;
    std::vector<std::shared_ptr<Head>> heads;
    for (int r = 0; r < 2; ++r) {
      torch::manual_seed(r == 0 ? 21 : 77);
      models.push_back(std::make_unique<test::PlainBackbone>(32));
      heads.push_back(make_head(head_name));
    }
    test::ToyReader reader(6, 5);
    test::ToyFlip flip;
    test::run_ranks(2, [&](std::shared_ptr<Distributed> d) {
      ShardedHeadOptions ho;  // the plugins' defaults: s 64, m 0.5, alpha 0.1
      ho.margin_type = head_name;
      TrainOptions ro = o;
      ro.distributed = d;
      ro.sharded_head = std::make_shared<ShardedMarginHead>(d, 32, 6, ho);
      EXPECT_EQ(ro.sharded_head->class_end() - ro.sharded_head->class_begin(), 3);
      // Rank 1 passes no head: it never holds the whole classifier.
      train_recognition(*models[d->rank()], d->is_main() ? heads[0].get() : nullptr, reader, {&flip}, ro, dir);
    });
    for (const auto& [name, t] : single)
      EXPECT_TRUE(test::all_close(module_state_dict(models[0]->module()).at(name), t, 2e-5)) << head_name << " " << name;
    for (const auto& [name, t] : single_head)
      EXPECT_TRUE(test::all_close(module_state_dict(heads[0]->module()).at(name), t, 2e-5)) << head_name << " " << name;
    const StateDict saved = read_safetensors((fs::path(dir) / "head.safetensors").string());
    EXPECT_TRUE(torch::equal(saved.at("kernel"), module_state_dict(heads[0]->module()).at("kernel")));
    const StateDict state = read_safetensors((fs::path(dir) / "checkpoints/epoch-2/training_state.safetensors").string());
    EXPECT_EQ(state.at("momentum_buffer.head.kernel").sizes(), torch::IntArrayRef({32, 6}));
  }

  // Resume: 1 epoch sharded over 2 ranks, the second on 1 rank with the plugin head.
  const TrainOptions o = parallel_options();
  StateDict straight_head;
  const StateDict straight = train_single("arcface", o, test::temp_dir("sharded_straight"), &straight_head);
  const std::string dir = test::temp_dir("sharded_resume");
  test::ToyReader reader(6, 5);
  test::ToyFlip flip;
  std::vector<std::unique_ptr<test::PlainBackbone>> models;
  std::vector<std::shared_ptr<Head>> heads;
  for (int r = 0; r < 2; ++r) {
    torch::manual_seed(21);
    models.push_back(std::make_unique<test::PlainBackbone>(32));
    heads.push_back(make_head("arcface"));
  }
  test::run_ranks(2, [&](std::shared_ptr<Distributed> d) {
    TrainOptions first = o;
    first.epochs = 1;
    first.distributed = d;
    first.sharded_head = std::make_shared<ShardedMarginHead>(d, 32, 6, ShardedHeadOptions{});
    train_recognition(*models[d->rank()], d->is_main() ? heads[0].get() : nullptr, reader, {&flip}, first, dir);
  });
  torch::manual_seed(99);
  test::PlainBackbone backbone(32);
  auto head = make_head("arcface");
  TrainOptions rest = o;
  rest.distributed = std::make_shared<Distributed>();
  EXPECT_EQ(train_recognition(backbone, *head, reader, {&flip}, rest, dir).start_epoch, 1);
  for (const auto& [name, t] : module_state_dict(backbone.module()))
    EXPECT_TRUE(test::all_close(t, straight.at(name), 2e-5)) << name;
  EXPECT_TRUE(test::all_close(head->module().named_parameters()["kernel"], straight_head.at("kernel"), 2e-5));

  // Without sharding every rank needs the head.
  EXPECT_THAT(test::error_of([&] { train_recognition(backbone, nullptr, reader, {&flip}, rest, dir); }),
              ::testing::HasSubstr("no head was given; only the ranks other than 0 of a class-sharded run train "
                                   "without one"));
}
