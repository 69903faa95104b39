// Manifests in a distributed job: `admis launch --nproc-per-node 2 -- run M.yaml` runs the
// rank-aware stages (train_recognition, here with the class-sharded head and synchronised
// batch norm; sample, each rank a share of the identities) on both ranks and every other stage on rank 0 alone, prints
// each stage line and writes each output once, and keeps finished stages on a second run.
// A stage failing on rank 0 stops a waiting rank at once, not after a timeout. And the
// shard_head key on its own: one process trains as with the plain head, and heads without
// a sharded form are refused by name. Every command runs under `timeout`.
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <fstream>

#include "admis/host/weights.h"
#include "support/support.h"

using namespace admis;
using namespace admis::host;
using ::testing::HasSubstr;
namespace fs = boost::filesystem;

namespace {

// Held-out pairs (rank 0), a tiny recognizer (all ranks), identities sampled by an untrained
// tiny UNet and written as TFRecord (all ranks, then rank 0 writes), an evaluation (rank 0).
const char* const kManifest = R"(version: 1
output_dir: out
seed: 3
stages:
  - name: pairs
    stage: verification_pairs
    data: {plugin: toy-faces, params: {first_identity: 100000, identities: 6, images_per_identity: 4, render_size: 16}}
    pairs: 20
    set_name: toy_pairs
  - name: train
    stage: train_recognition
    backbone: {plugin: mobilefacenet, params: {embedding_size: 32}}
    head: {plugin: arcface, params: {in_features: 32, out_features: 6, scale: 16, margin: 0.3}}
    data: {plugin: toy-faces, params: {identities: 6, images_per_identity: 4, render_size: 16}}
    epochs: 1
    batch_size: 8
    lr: 0.05
    stages: [1]
    workers: 0
    log_every: 1
    shard_head: true
    sync_batch_norm: true
  - name: syn
    stage: sample
    denoiser:
      plugin: idiff-unet
      params: {initial_channels: 32, channel_multipliers: [1, 2], is_attention: [false, false],
               n_blocks_per_resolution: 1, context_input_channels: 32, context_channels: 32}
    codec: {plugin: pixel}
    scheduler: {plugin: ddim-admis, params: {num_inference_steps: 2}}
    contexts: {plugin: gaussian, params: {count: 5, embedding_size: 32}}
    images_per_identity: 2
    batch_size: 4
    generation_size: 16
    image_size: 32
    writer: {plugin: tfrecord, params: {overwrite: true}}
    dataset_path: "${output_dir}/data/syn"
  - name: eval
    stage: evaluate
    backbone: {plugin: mobilefacenet, params: {embedding_size: 32}, weights: "${output_dir}/train/backbone.safetensors"}
    data: "${output_dir}/pairs"
)";

std::string write_manifest(const std::string& tag, const std::string& text = kManifest) {
  const std::string dir = test::temp_dir(tag);
  std::ofstream(dir + "/m.yaml") << text;
  return dir;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST(LaunchedRun, RunsEachStageOnceAndSplitsTheRankAwareOnes) {
  const std::string dir = write_manifest("launched_run");
  const std::string command = fmt::format("cd {} && ADMIS_DIST_TIMEOUT=120 timeout 600 {} launch --nproc-per-node 2 -- run m.yaml",
                                          dir, test::admis_exe());
  auto r = test::run_command(command);
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* stage : {"'pairs' (verification_pairs)", "'train' (train_recognition)", "'syn' (sample)",
                            "'eval' (evaluate)"})
    EXPECT_EQ(count(r.output, fmt::format("{} done in", stage)), 1u) << stage << "\n" << r.output;
  EXPECT_THAT(r.output, HasSubstr("'pairs' (verification_pairs) ... (on rank 0; the other ranks wait)"));
  EXPECT_THAT(r.output, HasSubstr("'train' (train_recognition) ... (on all 2 ranks)"));
  EXPECT_THAT(r.output, HasSubstr("'syn' (sample) ... (on all 2 ranks)"));
  EXPECT_THAT(r.output, HasSubstr("'eval' (evaluate) ... (on rank 0; the other ranks wait)"));
  EXPECT_EQ(count(r.output, "done: outputs in"), 1u) << r.output;
  // Training ran data-parallel and printed its progress once.
  EXPECT_THAT(r.output, HasSubstr("data-parallel over 2 ranks"));
  EXPECT_EQ(count(r.output, "[train] class-sharded head/arcface: 6 classes over 2 rank(s), rank 0 holding 3"), 1u)
      << r.output;
  EXPECT_EQ(count(r.output, "[train_recognition] epoch 1/1 step 3/3"), 1u) << r.output;
  EXPECT_EQ(count(r.output, "[train_recognition] synchronised batch norm: 50 layers over 2 ranks"), 1u) << r.output;
  // The ranks sampled disjoint shares (0,2,4 and 1,3) of the 5 identities, which together
  // are the whole set that rank 0 then wrote once through the writer.
  EXPECT_THAT(r.output, HasSubstr("shard 0/2: 3 identities"));
  EXPECT_THAT(r.output, HasSubstr("shard 1/2: 2 identities"));
  const fs::path out = fs::path(dir) / "out";
  for (int id = 0; id < 5; ++id)
    for (int k = 0; k < 2; ++k)
      EXPECT_TRUE(fs::exists(out / "syn" / "images" / std::to_string(id) / fmt::format("{}.png", k))) << id << "/" << k;
  EXPECT_EQ(count(test::read_text((out / "data" / "syn.index").string()), "\n"), 10u);
  EXPECT_EQ(count(r.output, "wrote 10 images of 5 identities through tfrecord"), 1u) << r.output;
  EXPECT_TRUE(fs::exists(out / "train" / "checkpoints" / "epoch-1" / "head.safetensors"));
  // The sharded head's checkpoint holds the whole classifier, as one process saves it.
  EXPECT_EQ(read_safetensors((out / "train" / "head.safetensors").string()).at("kernel").sizes(),
            (std::vector<std::int64_t>{32, 6}));
  for (const char* stage : {"pairs", "train", "syn", "eval"})
    EXPECT_TRUE(fs::exists(out / stage / ".admis-stage-done")) << stage;

  // A second run keeps every stage, and says so once.
  r = test::run_command(command);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(count(r.output, "already done, kept"), 4u) << r.output;
  EXPECT_EQ(count(r.output, "done in"), 0u) << r.output;
}

// Rank 0's stage fails (the evaluated weights do not exist): rank 1, waiting for it with a
// long ADMIS_DIST_TIMEOUT, stops within seconds saying why.
TEST(LaunchedRun, AFailedRank0StageStopsTheWaitingRanks) {
  std::string text = kManifest;
  text.replace(text.find("${output_dir}/train/backbone.safetensors"), std::string("${output_dir}/train/backbone.safetensors").size(),
               "${output_dir}/train/missing.safetensors");
  // Only pairs and eval: training is not what is tested here.
  const std::string dir = write_manifest("launched_failure", text);
  const std::string worker = fmt::format(
      "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={} ADMIS_DIST_TIMEOUT=600 OMP_NUM_THREADS=1 timeout 300 "
      "{} run m.yaml --stages pairs,eval",
      20000 + (::getpid() + 7) % 20000, test::admis_exe());
  const auto start = std::chrono::steady_clock::now();
  const auto r = test::run_command(fmt::format(
      "(cd {} && (RANK=1 LOCAL_RANK=1 {} > rank1.log 2>&1; echo $? > rank1.status) & cd {} && RANK=0 LOCAL_RANK=0 {}; "
      "wait)",
      dir, worker, dir, worker));
  EXPECT_THAT(r.output, HasSubstr("missing.safetensors"));
  const std::string rank1 = test::read_text(dir + "/rank1.log");
  EXPECT_NE(test::read_text(dir + "/rank1.status"), "0\n") << rank1;
  EXPECT_THAT(rank1, HasSubstr("rank 1 of 2"));
  EXPECT_THAT(rank1, ::testing::AnyOf(HasSubstr("rank 0 failed"), HasSubstr("lost the rendezvous store")));
  EXPECT_LT(seconds_since(start), 120.0) << rank1;
}

namespace {

// Just the training stage, one process, with a head and shard_head given.
std::string train_only(const std::string& head, bool shard_head) {
  return fmt::format(R"(version: 1
output_dir: out
seed: 5
stages:
  - name: train
    stage: train_recognition
    backbone: {{plugin: mobilefacenet, params: {{embedding_size: 32}}}}
    head: {{plugin: {}, params: {{in_features: 32, out_features: 6, scale: 16, margin: 0.3}}}}
    data: {{plugin: toy-faces, params: {{identities: 6, images_per_identity: 3, render_size: 16}}}}
    augmenters: []
    epochs: 1
    batch_size: 6
    lr: 0.05
    stages: [1]
    workers: 0
    shard_head: {}
)",
                     head, shard_head ? "true" : "false");
}

}  // namespace

TEST(ShardHeadKey, OneProcessTrainsAsThePlainHead) {
  for (const std::string head : {"arcface", "cosface"}) {
    SCOPED_TRACE(head);
    StateDict trained[2];
    for (int sharded = 0; sharded < 2; ++sharded) {
      const std::string dir = write_manifest(fmt::format("shard_key_{}_{}", head, sharded), train_only(head, sharded));
      const auto r = test::run_command(fmt::format("cd {} && timeout 300 {} run m.yaml", dir, test::admis_exe()));
      ASSERT_EQ(r.status, 0) << r.output;
      EXPECT_EQ(r.output.find(fmt::format("class-sharded head/{}: 6 classes over 1 rank(s)", head)) != std::string::npos,
                sharded == 1)
          << r.output;
      trained[sharded] = read_safetensors(dir + "/out/train/backbone.safetensors");
      const StateDict h = read_safetensors(dir + "/out/train/head.safetensors");
      EXPECT_EQ(h.at("kernel").sizes(), (std::vector<std::int64_t>{32, 6}));
    }
    for (const auto& [name, t] : trained[0]) {
      if (!t.is_floating_point()) continue;
      EXPECT_TRUE(test::all_close(trained[1].at(name), t, 1e-4)) << name;
    }
  }
}

TEST(ShardHeadKey, RefusesHeadsWithoutAShardedForm) {
  const std::string dir = write_manifest("shard_key_refused", train_only("elastic-arcface", true));
  const auto r = test::run_command(fmt::format("cd {} && timeout 300 {} run m.yaml", dir, test::admis_exe()));
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("shard_head"));
  EXPECT_THAT(r.output, HasSubstr("head/elastic-arcface has no class-sharded form"));
  EXPECT_THAT(r.output, HasSubstr("arcface, cosface, curricularface"));
}
