// Where a worker learns its rank: torchrun's and Slurm's variables, Slurm node lists, and
// the errors for missing, malformed or inconsistent variables (each naming the variable).
#include <map>

#include "admis/host/distributed.h"
#include "support/support.h"

using namespace admis;
using namespace admis::host;

namespace {

EnvLookup vars(std::map<std::string, std::string> values) {
  return [values](const std::string& name) -> std::optional<std::string> {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace

TEST(DistEnv, NoVariablesIsOneProcess) {
  const DistEnv env = parse_dist_env(vars({}));
  EXPECT_FALSE(env.distributed());
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.origin, "");
  // A world of one needs no rendezvous address.
  EXPECT_FALSE(parse_dist_env(vars({{"RANK", "0"}, {"WORLD_SIZE", "1"}})).distributed());
  EXPECT_FALSE(parse_dist_env(vars({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}})).distributed());
}

TEST(DistEnv, TorchrunVariables) {
  const DistEnv env = parse_dist_env(vars({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                           {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29511"}}));
  EXPECT_TRUE(env.distributed());
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "10.0.0.7");
  EXPECT_EQ(env.master_port, 29511);
  EXPECT_EQ(env.origin, "torchrun variables");
}

// --device cuda under a launcher: one GPU per worker of a machine, by local rank.
TEST(DistEnv, CudaMeansTheGpuOfTheLocalRank) {
  const DistEnv torchrun = parse_dist_env(vars({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                                {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29511"}}));
  EXPECT_EQ(rank_device("cuda", torchrun), "cuda:1");
  const DistEnv slurm = parse_dist_env(vars({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "2"},
                                             {"SLURM_NODELIST", "gpu[03-04]"}}));
  EXPECT_EQ(rank_device("cuda", slurm), "cuda:2");
  EXPECT_EQ(rank_device("cuda:3", torchrun), "cuda:3");  // an explicit index is the user's choice
  EXPECT_EQ(rank_device("cpu", torchrun), "cpu");
  EXPECT_EQ(rank_device("cuda", parse_dist_env(vars({}))), "cuda");  // one process: the current GPU
}

TEST(DistEnv, SlurmVariablesTakeTheFirstNode) {
  const DistEnv env = parse_dist_env(vars({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "2"},
                                           {"SLURM_NODELIST", "gpu[03-04,07],login1"}}));
  EXPECT_EQ(env.rank, 6);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 2);
  EXPECT_EQ(env.master_addr, "gpu03");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_EQ(env.origin, "Slurm variables");
  // MASTER_ADDR / MASTER_PORT, when given, win over the node list and the default port.
  const DistEnv own = parse_dist_env(vars({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"},
                                           {"SLURM_NODELIST", "a[1-2]"}, {"MASTER_ADDR", "head"},
                                           {"MASTER_PORT", "4000"}}));
  EXPECT_EQ(own.master_addr, "head");
  EXPECT_EQ(own.master_port, 4000);
  // SLURM_JOB_NODELIST serves when SLURM_NODELIST is absent.
  EXPECT_EQ(parse_dist_env(vars({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "1"},
                                 {"SLURM_JOB_NODELIST", "n7"}}))
                .master_addr,
            "n7");
}

TEST(DistEnv, TorchrunVariablesWinInsideASlurmJob) {
  const DistEnv env = parse_dist_env(vars({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                                           {"MASTER_PORT", "1234"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}));
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);  // LOCAL_RANK unset: the global rank (one machine)
}

TEST(DistEnv, SlurmNodeLists) {
  EXPECT_EQ(slurm_first_host("node17"), "node17");
  EXPECT_EQ(slurm_first_host("node1,node2"), "node1");
  EXPECT_EQ(slurm_first_host("node[01-04,07]"), "node01");
  EXPECT_EQ(slurm_first_host("node[07,01-04]"), "node07");
  EXPECT_EQ(slurm_first_host("node[3]"), "node3");
  EXPECT_EQ(slurm_first_host("rack[2-3]-gpu[001-008],cpu[1-2]"), "rack2-gpu001");
  EXPECT_EQ(slurm_first_host("gpu-a100-[10-12],gpu-h100-1"), "gpu-a100-10");
  EXPECT_THAT(test::error_of([] { slurm_first_host("node[01-04"); }),
              ::testing::AllOf(::testing::HasSubstr("SLURM_NODELIST"), ::testing::HasSubstr("node[01-04")));
  EXPECT_THAT(test::error_of([] { slurm_first_host(""); }), ::testing::HasSubstr("not a Slurm node list"));
  EXPECT_THAT(test::error_of([] { slurm_first_host("node[x-y]", "SLURM_JOB_NODELIST"); }),
              ::testing::AllOf(::testing::HasSubstr("SLURM_JOB_NODELIST"), ::testing::HasSubstr("[x-y]")));
}

TEST(DistEnv, ErrorsNameTheVariable) {
  using ::testing::HasSubstr;
  const std::map<std::string, std::string> good = {
      {"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& name, const std::string& value) {
    auto v = good;
    v[name] = value;
    return vars(v);
  };
  auto without = [&](const std::string& name) {
    auto v = good;
    v.erase(name);
    return vars(v);
  };
  EXPECT_THAT(test::error_of([&] { parse_dist_env(with("RANK", "two")); }),
              ::testing::AllOf(HasSubstr("RANK"), HasSubstr("'two' is not an integer")));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(with("RANK", "2")); }),
              ::testing::AllOf(HasSubstr("RANK"), HasSubstr("2 is outside [0, 1]")));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(with("WORLD_SIZE", "0")); }), HasSubstr("WORLD_SIZE"));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(with("WORLD_SIZE", "2x")); }), HasSubstr("WORLD_SIZE"));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(with("MASTER_PORT", "70000")); }), HasSubstr("MASTER_PORT"));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(with("LOCAL_RANK", "-1")); }), HasSubstr("LOCAL_RANK"));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(without("WORLD_SIZE")); }),
              ::testing::AllOf(HasSubstr("WORLD_SIZE"), HasSubstr("RANK is")));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(without("RANK")); }), HasSubstr("RANK"));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(without("MASTER_ADDR")); }), HasSubstr("MASTER_ADDR"));
  EXPECT_THAT(test::error_of([&] { parse_dist_env(without("MASTER_PORT")); }), HasSubstr("MASTER_PORT"));
  auto local = good;
  local["RANK"] = "0";
  EXPECT_THAT(test::error_of([&] { parse_dist_env(vars(local)); }),
              ::testing::AllOf(HasSubstr("LOCAL_RANK"), HasSubstr("larger than RANK")));

  EXPECT_THAT(test::error_of([] {
                parse_dist_env(vars({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}}));
              }),
              HasSubstr("SLURM_NODELIST"));
  EXPECT_THAT(test::error_of([] {
                parse_dist_env(vars({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "a"}}));
              }),
              HasSubstr("SLURM_PROCID"));
  EXPECT_THAT(test::error_of([] { parse_dist_env(vars({{"SLURM_PROCID", "0"}})); }), HasSubstr("SLURM_NTASKS"));
  EXPECT_THAT(test::error_of([] {
                parse_dist_env(vars({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "a"}}));
              }),
              HasSubstr("SLURM_LOCALID"));
}

// Rank 0 serves the rendezvous; a rank whose peers never come gives up after the timeout
// with an error that names the address and the variables, rather than waiting forever.
TEST(DistEnv, RendezvousTimesOutWithAClearError) {
  DistEnv env;
  env.rank = 0;
  env.world_size = 2;
  env.master_addr = "127.0.0.1";
  env.master_port = 0;  // the kernel picks a port; nobody else will come
  env.origin = "test";
  const auto start = std::chrono::steady_clock::now();
  const std::string error =
      test::error_of([&] { Distributed::connect(env, std::chrono::milliseconds(1500)); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_THAT(error, ::testing::AllOf(::testing::HasSubstr("rank 0 of 2"), ::testing::HasSubstr("MASTER_ADDR=127.0.0.1")));
  EXPECT_LT(seconds, 30.0);
}
