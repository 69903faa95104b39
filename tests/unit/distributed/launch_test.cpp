// Real processes: `admis launch` (variables, failure propagation, signal forwarding), and
// training workers on a TCPStore rendezvous over 127.0.0.1 - the same result as one
// process, and an error rather than a hang when a rank is killed. Every command runs under
// `timeout`, and launch's workers die with it (PR_SET_PDEATHSIG), so nothing outlives a test.
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "admis/host/distributed.h"
#include "admis/host/train_recognition.h"
#include "admis/host/weights.h"
#include "dist_util.h"
#include "unit/train/toy.h"

using namespace admis;
using namespace admis::host;
namespace fs = boost::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

// A toy reader whose rank ADMIS_TEST_DIE_RANK kills its own process (SIGKILL: no chance to
// say goodbye) when it reads sample ADMIS_TEST_DIE_AT.
class DyingReader : public test::ToyReader {
 public:
  DyingReader(int classes, int per_class, int rank) : ToyReader(classes, per_class), rank_(rank) {}
  Sample read(std::int64_t index) const override {
    if (std::to_string(rank_) == env_or("ADMIS_TEST_DIE_RANK", "-1") &&
        std::to_string(index) == env_or("ADMIS_TEST_DIE_AT", "-1"))
      ::raise(SIGKILL);
    return ToyReader::read(index);
  }

 private:
  int rank_;
};

TrainOptions worker_options() {
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 8;
  o.lr = 0.05;
  o.stages = {1};
  o.workers = 0;
  o.seed = 8;
  o.log_every = 2;
  return o;
}

std::shared_ptr<Head> make_head() {
  return test::create<Head>(Kind::Head, "cosface", {{"in_features", std::int64_t{32}}, {"out_features", std::int64_t{6}}});
}

}  // namespace

// The worker the tests below start as separate processes (skipped unless started so): toy
// training in the process group the environment describes, into ADMIS_TEST_WORKER_DIR.
TEST(DistributedWorker, TrainToy) {
  const char* dir = std::getenv("ADMIS_TEST_WORKER_DIR");
  if (!dir) GTEST_SKIP() << "started by the launch tests only";
  const DistEnv env = dist_env_from_environment();
  test::runtime();  // made (and seeding the global generator) before the models, as below
  torch::manual_seed(31 + 7 * env.rank);  // other weights on rank 1: rank 0's must be broadcast
  test::PlainBackbone backbone(32);
  auto head = make_head();
  DyingReader reader(6, 5, env.rank);
  test::ToyFlip flip;
  TrainOptions o = worker_options();
  o.epochs = std::atoi(env_or("ADMIS_TEST_EPOCHS", "2"));
  o.progress = &std::cerr;
  train_recognition(backbone, *head, reader, {&flip}, o, dir);  // world(): from the environment
}

TEST(Launch, SetsTheVariablesAndSucceedsWhenAllWorkersDo) {
  const std::string dir = test::temp_dir("launch_vars");
  const auto r = test::run_command(fmt::format(
      "timeout 60 {} launch --nproc-per-node 3 --no-admis -- sh -c "
      "'echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $OMP_NUM_THREADS > {}/$RANK'",
      test::admis_exe(), dir));
  ASSERT_EQ(r.status, 0) << r.output;
  std::string port;
  for (int rank = 0; rank < 3; ++rank) {
    std::istringstream line(test::read_text(fmt::format("{}/{}", dir, rank)));
    std::string rk, world, local, local_world, addr, p, threads;
    line >> rk >> world >> local >> local_world >> addr >> p >> threads;
    EXPECT_EQ(rk, std::to_string(rank));
    EXPECT_EQ(world, "3");
    EXPECT_EQ(local, std::to_string(rank));
    EXPECT_EQ(local_world, "3");
    EXPECT_EQ(addr, "127.0.0.1");
    EXPECT_GT(std::stoi(p), 0);
    if (rank > 0) {
      EXPECT_EQ(p, port);  // one rendezvous port for all
    }
    port = p;
    EXPECT_GE(std::stoi(threads), 1);
  }
  EXPECT_THAT(r.output, ::testing::HasSubstr("3 worker(s) of 3"));
}

// Two "machines" (both this one): node ranks offset the global ranks; local ranks restart.
TEST(Launch, NodeRankOffsetsTheRanks) {
  const std::string dir = test::temp_dir("launch_nodes");
  const std::string node = fmt::format(
      "timeout 60 {} launch --nnodes 2 --node-rank {{}} --nproc-per-node 2 --master-port 29999 --no-admis -- sh -c "
      "'echo $RANK $WORLD_SIZE $LOCAL_RANK $MASTER_PORT > {}/$RANK'",
      test::admis_exe(), dir);
  const auto r = test::run_command(fmt::format("{} && {}", fmt::format(node, 0), fmt::format(node, 1)));
  ASSERT_EQ(r.status, 0) << r.output;
  for (int rank = 0; rank < 4; ++rank)
    EXPECT_EQ(test::read_text(fmt::format("{}/{}", dir, rank)), fmt::format("{} 4 {} 29999\n", rank, rank % 2));
  const auto missing = test::run_command(test::admis_exe() + " launch --nnodes 2 --node-rank 1 --nproc-per-node 1 -- plugins");
  EXPECT_NE(missing.status, 0);
  EXPECT_THAT(missing.output, ::testing::HasSubstr("same --master-port"));
}

TEST(Launch, OneFailedWorkerStopsTheOthersAndFailsTheJob) {
  const auto start = std::chrono::steady_clock::now();
  const auto r = test::run_command(fmt::format(
      "timeout 120 {} launch --nproc-per-node 3 --no-admis -- sh -c 'if [ $RANK = 1 ]; then sleep 1; exit 3; fi; "
      "exec sleep 100'",
      test::admis_exe()));
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_THAT(r.output, ::testing::ContainsRegex("rank 1 \\(local rank 1, pid [0-9]+\\) exited with status 3"));
  EXPECT_LT(seconds_since(start), 60.0) << "the sleeping workers were not stopped";
}

TEST(Launch, ForwardsSigtermToTheWorkers) {
  const std::string dir = test::temp_dir("launch_signal");
  // Each worker records the SIGTERM it receives; launch then reports 128 + 15.
  const std::string worker = dir + "/worker.sh", driver = dir + "/driver.sh";
  std::ofstream(worker) << "trap 'echo term > " << dir << "/$RANK; exit 0' TERM\n"
                        << "touch " << dir << "/started-$RANK\n"
                        << "while true; do sleep 0.1; done\n";
  std::ofstream(driver) << test::admis_exe() << " launch --nproc-per-node 2 --no-admis -- sh " << worker << " &\n"
                        << "pid=$!\n"
                        << "for i in $(seq 200); do [ -e " << dir << "/started-0 ] && [ -e " << dir
                        << "/started-1 ] && break; sleep 0.1; done\n"
                        << "kill -TERM $pid\n"
                        << "wait $pid\n"
                        << "echo launch-status=$?\n";
  const auto r = test::run_command("timeout 120 sh " + driver);
  EXPECT_THAT(r.output, ::testing::HasSubstr("launch-status=143")) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("SIGTERM: passing it on to the workers"));
  EXPECT_EQ(test::read_text(dir + "/0"), "term\n");
  EXPECT_EQ(test::read_text(dir + "/1"), "term\n");
}

TEST(Launch, RejectsBadArguments) {
  auto run = [](const std::string& args) { return test::run_command(test::admis_exe() + " launch " + args); };
  auto r = run("--nproc-per-node 0 -- plugins");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, ::testing::HasSubstr("--nproc-per-node must be an integer in [1, 4096], got '0'"));
  r = run("--nproc-per-node 2");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, ::testing::HasSubstr("no worker command after --"));
  r = run("--nprocs 2 -- plugins");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, ::testing::HasSubstr("unknown option '--nprocs'"));
}

// End to end: `admis launch` starts two training processes (TCPStore on 127.0.0.1, Gloo),
// and rank 0's saved weights equal those of one process with the whole batch.
TEST(Launch, TwoTrainingProcessesMatchOne) {
  const std::string dir = test::temp_dir("launch_train");
  const auto r = test::run_command(fmt::format(
      "ADMIS_TEST_WORKER_DIR={} ADMIS_DIST_TIMEOUT=60 timeout 300 {} launch --nproc-per-node 2 --no-admis -- {} "
      "--gtest_filter=DistributedWorker.TrainToy",
      dir, test::admis_exe(), test::self_exe()));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("epoch 2/2 step 4/4"));

  test::runtime();
  torch::manual_seed(31);
  test::PlainBackbone backbone(32);
  auto head = make_head();
  test::ToyReader reader(6, 5);
  test::ToyFlip flip;
  TrainOptions o = worker_options();
  o.distributed = std::make_shared<Distributed>();
  train_recognition(backbone, *head, reader, {&flip}, o, test::temp_dir("launch_single"));
  const StateDict two = read_safetensors(dir + "/backbone.safetensors");
  for (const auto& [name, t] : module_state_dict(backbone.module()))
    EXPECT_TRUE(test::all_close(two.at(name), t, 2e-5)) << name;
}

// A rank killed mid-training: the survivor stops with an error naming itself and the
// failed collective, well within ADMIS_DIST_TIMEOUT, instead of waiting forever; under
// launch, the job fails naming the killed rank.
TEST(Launch, AKilledRankEndsTheRunWithAnError) {
  const std::string dir = test::temp_dir("launch_killed");
  const std::string worker = fmt::format(
      "ADMIS_TEST_WORKER_DIR={} ADMIS_TEST_EPOCHS=50 ADMIS_TEST_DIE_RANK=1 ADMIS_TEST_DIE_AT=3 ADMIS_DIST_TIMEOUT=30 "
      "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={} OMP_NUM_THREADS=1 timeout 120 {} "
      "--gtest_filter=DistributedWorker.TrainToy",
      dir, 20000 + ::getpid() % 20000, test::self_exe());
  auto start = std::chrono::steady_clock::now();
  const auto direct = test::run_command(fmt::format("(RANK=1 LOCAL_RANK=1 {} > {}/rank1.log 2>&1 &); RANK=0 LOCAL_RANK=0 {}",
                                                    worker, dir, worker));
  EXPECT_NE(direct.status, 0);
  EXPECT_THAT(direct.output, ::testing::HasSubstr("rank 0 of 2"));
  EXPECT_THAT(direct.output, ::testing::HasSubstr("failed"));
  EXPECT_LT(seconds_since(start), 60.0) << direct.output;

  start = std::chrono::steady_clock::now();
  const auto launched = test::run_command(fmt::format(
      "ADMIS_TEST_WORKER_DIR={} ADMIS_TEST_EPOCHS=50 ADMIS_TEST_DIE_RANK=1 ADMIS_TEST_DIE_AT=3 ADMIS_DIST_TIMEOUT=30 "
      "timeout 120 {} launch --nproc-per-node 2 --no-admis -- {} --gtest_filter=DistributedWorker.TrainToy",
      dir, test::admis_exe(), test::self_exe()));
  EXPECT_EQ(launched.status, 128 + SIGKILL) << launched.output;
  EXPECT_THAT(launched.output, ::testing::ContainsRegex("rank 1 \\(local rank 1, pid [0-9]+\\) was killed by SIGKILL"));
  EXPECT_LT(seconds_since(start), 60.0) << launched.output;
}
