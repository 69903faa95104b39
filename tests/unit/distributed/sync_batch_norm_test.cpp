// Synchronised batch norm (train_recognition's sync_batch_norm): with it, data-parallel
// training of a network with batch norm in train mode matches single-process training of
// the whole batch; per-rank batch norm (TFace's default) does not. Ranks are threads on a
// shared HashStore.
#include "admis/host/distributed_reducer.h"
#include "admis/host/train_recognition.h"
#include "admis/host/weights.h"
#include "admis/sdk/batch_norm.h"
#include "dist_util.h"
#include "unit/train/toy.h"

using namespace admis;
using namespace admis::host;

namespace {

// TinyNet (toy.h) with the SDK's batch norms: conv - BN2d - PReLU - conv - BN2d - ReLU -
// pool - linear - BN1d. No dropout, so ranks and the single process draw nothing.
struct SyncNetImpl : torch::nn::Module {
  explicit SyncNetImpl(std::int64_t embedding) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 5).stride(4).padding(2).bias(false)));
    bn1 = register_module("bn1", admis::BatchNorm2d(8));
    prelu1 = register_module("prelu1", torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(8)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2).padding(1)));
    bn2 = register_module("bn2", admis::BatchNorm2d(16));
    fc = register_module("fc", torch::nn::Linear(16 * 4 * 4, embedding));
    features = register_module("features", admis::BatchNorm1d(embedding));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = prelu1(bn1(conv1(x)));
    h = torch::relu(bn2(conv2(h)));
    return features(fc(torch::adaptive_avg_pool2d(h, {4, 4}).flatten(1)));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  admis::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::PReLU prelu1{nullptr};
  torch::nn::Linear fc{nullptr};
  admis::BatchNorm1d features{nullptr};
};
TORCH_MODULE(SyncNet);
using SyncBackbone = test::NetBackbone<SyncNet>;

TrainOptions options(bool sync) {
  // 30 samples: 9,9,9,3 -> 2 ranks 5/4 ... 2/1; 4 ranks 3/2/2/2 ... 1/1/1/0. (A last batch
  // of 2 would make the embedding's BatchNorm1d degenerate: two rows normalise to +-1
  // whatever they are, so its input gradient is rounding noise.)
  TrainOptions o = test::parallel_train_options(9);
  o.sync_batch_norm = sync;
  return o;
}

std::shared_ptr<Head> make_head() {
  return test::create<Head>(Kind::Head, "arcface", {{"in_features", std::int64_t{32}}, {"out_features", std::int64_t{6}}});
}

// Backbone weights and buffers (running statistics included) after training on `world`
// ranks (1: no process group).
template <class Backbone>
StateDict train_on(int world, const TrainOptions& o, const std::string& tag) {
  const std::string dir = test::temp_dir(tag);
  test::ToyReader reader(6, 5);
  test::ToyFlip flip;
  std::vector<std::unique_ptr<Backbone>> models;
  std::vector<std::shared_ptr<Head>> heads;
  for (int r = 0; r < world; ++r) {
    torch::manual_seed(31);
    models.push_back(std::make_unique<Backbone>(32));
    heads.push_back(make_head());
  }
  if (world == 1) {
    train_recognition(*models[0], *heads[0], reader, {&flip}, o, dir);
    return module_state_dict(models[0]->module());
  }
  std::vector<StateDict> states(static_cast<std::size_t>(world));
  test::run_ranks(world, [&](std::shared_ptr<Distributed> d) {
    TrainOptions ro = o;
    ro.distributed = d;
    const int r = d->rank();
    train_recognition(*models[r], *heads[r], reader, {&flip}, ro, dir);
    states[r] = module_state_dict(models[r]->module());
  });
  // Synchronised, the ranks agree exactly, running statistics included (per rank, those
  // differ: only rank 0's are saved, as in TFace).
  for (int r = 1; r < world && o.sync_batch_norm; ++r)
    for (const auto& [name, t] : states[0])
      EXPECT_TRUE(torch::equal(states[r].at(name), t)) << "rank " << r << " differs from rank 0 in " << name;
  return states[0];
}

double max_difference(const StateDict& a, const StateDict& b) {
  double worst = 0;
  for (const auto& [name, t] : a)
    worst = std::max(worst, (t.to(torch::kFloat64) - b.at(name).to(torch::kFloat64)).abs().max().item<double>());
  return worst;
}

}  // namespace

// 2 ranks (shares 5/4, the last batch 2/1) and 4 ranks (3/2/2/2, the last batch 1/1/1/0:
// ranks with one row and a rank with none) train like one process with the whole batch of
// 9, running means and variances included, within float rounding relative to each
// tensor's scale (the running variances reach ~190). Without synchronisation they do not.
TEST(SyncBatchNorm, RanksTrainLikeOneProcessInTrainMode) {
  test::runtime();
  const StateDict single = train_on<SyncBackbone>(1, options(true), "sbn_single");
  EXPECT_EQ(single.at("bn1.num_batches_tracked").item<std::int64_t>(), 8);
  for (const int world : {2, 4}) {
    const StateDict synced = train_on<SyncBackbone>(world, options(true), "sbn_synced");
    for (const auto& [name, t] : single)
      EXPECT_TRUE(test::all_close(synced.at(name), t, 5e-5 * std::max(1.0, t.abs().max().item<double>())))
          << world << " ranks: " << name;
  }
  // Per-rank statistics (batch 10: shares 5/5, as per-rank batch norm needs 2 rows a rank)
  // end far from the single process.
  TrainOptions per_rank = options(false);
  per_rank.batch_size = 10;
  EXPECT_GT(max_difference(train_on<SyncBackbone>(2, per_rank, "sbn_per_rank"),
                           train_on<SyncBackbone>(1, per_rank, "sbn_single10")),
            1e-2);
}

// The layers are LibTorch's batch norm until a reducer is attached, and again after.
TEST(SyncBatchNorm, UnsynchronisedLayersComputeWhatLibTorchsDo) {
  torch::manual_seed(3);
  admis::BatchNorm2d ours(torch::nn::BatchNormOptions(4).momentum(0.3));
  torch::nn::BatchNorm2d theirs(torch::nn::BatchNormOptions(4).momentum(0.3));
  theirs->weight.data().uniform_(0.5, 1.5);
  ours->weight.data().copy_(theirs->weight);
  const auto x = torch::randn({5, 4, 3, 3}) * 2 + 1;
  EXPECT_TRUE(torch::equal(ours(x), theirs(x)));
  EXPECT_TRUE(torch::equal(ours->running_var, theirs->running_var));
  ours->eval();
  theirs->eval();
  EXPECT_TRUE(torch::equal(ours(x), theirs(x)));
  // Same keys as LibTorch's layer, so checkpoints and parity fixtures load unchanged.
  std::vector<std::string> ours_keys, theirs_keys;
  for (const auto& item : ours->named_parameters()) ours_keys.push_back(item.key());
  for (const auto& item : ours->named_buffers()) ours_keys.push_back(item.key());
  for (const auto& item : theirs->named_parameters()) theirs_keys.push_back(item.key());
  for (const auto& item : theirs->named_buffers()) theirs_keys.push_back(item.key());
  EXPECT_EQ(ours_keys, theirs_keys);
  EXPECT_NE(test::error_of([&] { ours(torch::zeros({2, 4})); }).find("admis::BatchNorm2d expected a 4D input, got 2D"),
            std::string::npos);
}

// A real backbone plugin: MobileFaceNet's batch norms (2d and the embedding's 1d) are the
// SDK's, so 2 ranks x 3/3 match 1 x 6, and a rank holding a single image is accepted.
TEST(SyncBatchNorm, MobileFaceNetPluginSynchronises) {
  test::runtime();
  auto make = [] {
    torch::manual_seed(8);
    return test::create<Backbone>(Kind::Backbone, "mobilefacenet", {{"embedding_size", std::int64_t{32}}});
  };
  auto single = make();
  std::vector<std::shared_ptr<Backbone>> ranks = {make(), make()};
  torch::manual_seed(9);
  const auto images = torch::rand({6, 3, 112, 112}) * 2 - 1;
  const auto target = torch::randn({6, 32});
  single->module().train();
  auto loss = (single->forward(images) - target).pow(2).mean();
  loss.backward();

  std::vector<StateDict> grads(2);
  test::run_ranks(2, [&](std::shared_ptr<Distributed> d) {
    const int r = d->rank();
    Backbone& b = *ranks[r];
    b.module().train();
    SynchronisedBatchNorm sync;
    sync.attach(d, b.module());
    EXPECT_TRUE(sync.active());
    GradientReducer reducer(d, b.module().parameters());
    reducer.prepare();
    auto rows = images.slice(0, 3 * r, 3 * r + 3), wanted = target.slice(0, 3 * r, 3 * r + 3);
    (b.forward(rows) - wanted).pow(2).mean().backward();
    reducer.finish();
    for (const auto& item : b.module().named_parameters()) grads[r][item.key()] = item.value().grad().clone();
    // One image on a rank passes in train mode when the statistics are over all ranks.
    EXPECT_EQ(b.forward(images.slice(0, r, r + 1)).size(0), 1);
  });
  for (const auto& item : single->module().named_parameters())
    EXPECT_TRUE(test::all_close(grads[0].at(item.key()), item.value().grad(),
                                1e-5 * std::max(1.0, item.value().grad().abs().max().item<double>())))
        << item.key();
  // Detached at the end of the run: single images are refused in train mode again.
  EXPECT_NE(test::error_of([&] { ranks[0]->forward(images.slice(0, 0, 1)); }).find("a batch of 1 image cannot pass"),
            std::string::npos);
}

TEST(SyncBatchNorm, BackbonesItCannotSynchroniseAreRefusedByName) {
  test::runtime();
  TrainOptions o = options(true);
  test::ToyReader reader(6, 5);
  auto head = make_head();
  test::TinyBackbone plain_batch_norm(32);  // LibTorch's own BatchNorm2d/1d
  EXPECT_NE(test::error_of([&] { train_recognition(plain_batch_norm, *head, reader, {}, o, test::temp_dir("sbn_e1")); })
                .find("the backbone has 3 batch norm layer(s) of LibTorch's own type (torch::nn::BatchNorm*), which "
                      "cannot be synchronised"),
            std::string::npos);
  test::PlainBackbone no_batch_norm(32);
  EXPECT_NE(test::error_of([&] { train_recognition(no_batch_norm, *head, reader, {}, o, test::temp_dir("sbn_e2")); })
                .find("the backbone has no batch norm layers to synchronise; set sync_batch_norm: false"),
            std::string::npos);
}

