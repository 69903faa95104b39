#pragma once
// `admis launch`: torchrun's job for admis. Starts the workers of this machine with RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, forwards
// SIGINT/SIGTERM/SIGHUP to them, and fails as a whole: when one worker fails the others are
// terminated (SIGTERM, then SIGKILL after a grace period) and launch exits non-zero,
// naming the rank and how it ended.

#include <chrono>
#include <iosfwd>
#include <string>
#include <vector>

#include "admis/host/commands.h"

namespace admis::host {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: a free port of this machine (one machine only)
  // argv of each worker (argv[0] is looked up in PATH when it has no slash).
  std::vector<std::string> command;
  // Intra-op threads per worker when the command does not choose (--threads / OMP_NUM_THREADS):
  // the machine's cores shared among the workers. 0: leave the command alone.
  int threads_per_worker = 0;
  std::chrono::milliseconds grace{10000};  // between SIGTERM and SIGKILL
};

// Runs the workers to the end; returns 0 when all succeed, else the failed worker's exit
// status (128 + signal for a signal). Messages about the job go to `log`.
int launch_workers(const LaunchOptions& options, std::ostream& log);

// The path of the running admis executable (/proc/self/exe), for starting it again as a
// worker; throws admis::Error naming `who` when it cannot be read.
std::string admis_executable(const std::string& who);

int cmd_launch(const std::vector<std::string>& args, Globals& g);

}  // namespace admis::host
