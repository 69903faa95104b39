// `admis launch` (see distributed_launch.h).
#include "admis/host/distributed_launch.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <thread>

#include "admis/sdk/error.h"

namespace admis::host {

namespace {

constexpr const char* kWho = "admis launch";

// A port the kernel considers free now; the rendezvous binds it moments later.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(kWho, fmt::format("cannot open a socket to find a free port: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw Error(kWho, fmt::format("cannot find a free port: {}; give --master-port", std::strerror(errno)));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by {}", signal_name(WTERMSIG(status)));
  return fmt::format("ended with wait status {}", status);
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

struct Worker {
  int local_rank = 0;
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
};

[[noreturn]] void exec_worker(const LaunchOptions& o, const Worker& w, int world_size, int port, pid_t launcher,
                              const sigset_t& original_mask) {
  // The worker starts with the launcher's original signal handling; it is terminated if
  // the launcher itself dies (even by SIGKILL), so no worker is left behind.
  ::sigprocmask(SIG_SETMASK, &original_mask, nullptr);
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != launcher) _exit(1);
  ::setenv("RANK", std::to_string(w.rank).c_str(), 1);
  ::setenv("WORLD_SIZE", std::to_string(world_size).c_str(), 1);
  ::setenv("LOCAL_RANK", std::to_string(w.local_rank).c_str(), 1);
  ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
  ::setenv("GROUP_RANK", std::to_string(o.node_rank).c_str(), 1);
  ::setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
  ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  if (o.threads_per_worker > 0) ::setenv("OMP_NUM_THREADS", std::to_string(o.threads_per_worker).c_str(), 1);
  std::vector<char*> argv;
  for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  std::cerr << fmt::format("{}: rank {} could not start {}: {}", kWho, w.rank, o.command[0], std::strerror(errno))
            << std::endl;
  _exit(127);
}

}  // namespace

int launch_workers(const LaunchOptions& o, std::ostream& log) {
  if (o.nproc_per_node < 1) throw Error(kWho, "--nproc-per-node must be at least 1");
  if (o.nnodes < 1 || o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw Error(kWho, fmt::format("--node-rank {} is not in [0, --nnodes {})", o.node_rank, o.nnodes));
  if (o.command.empty()) throw Error(kWho, "no worker command: give it after --, e.g. admis launch --nproc-per-node 2 -- run M.yaml");
  if (o.nnodes > 1 && o.master_port == 0)
    throw Error(kWho, "several machines need the same --master-port on every one of them (and --master-addr, the "
                      "machine of node rank 0)");
  const int port = o.master_port == 0 ? free_port() : o.master_port;
  const int world_size = o.nnodes * o.nproc_per_node;

  // Signals are taken synchronously (sigtimedwait) rather than by handlers, so the loop
  // below sees each one once and in order. Blocked before fork; workers restore the mask.
  sigset_t watched, original;
  sigemptyset(&watched);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&watched, sig);
  ::sigprocmask(SIG_BLOCK, &watched, &original);

  std::vector<Worker> workers(static_cast<std::size_t>(o.nproc_per_node));
  const pid_t launcher = ::getpid();
  for (int l = 0; l < o.nproc_per_node; ++l) {
    Worker& w = workers[static_cast<std::size_t>(l)];
    w.local_rank = l;
    w.rank = o.node_rank * o.nproc_per_node + l;
    w.pid = ::fork();
    if (w.pid == 0) exec_worker(o, w, world_size, port, launcher, original);
    if (w.pid < 0) {
      const int err = errno;
      for (const Worker& started : workers)
        if (started.running) ::kill(started.pid, SIGKILL);
      for (const Worker& started : workers)
        if (started.running) ::waitpid(started.pid, nullptr, 0);
      ::sigprocmask(SIG_SETMASK, &original, nullptr);
      throw Error(kWho, fmt::format("cannot start rank {}: {}", w.rank, std::strerror(err)));
    }
    w.running = true;
  }
  log << fmt::format("{}: {} worker(s) of {} (ranks {}-{}), rendezvous at {}:{}", kWho, o.nproc_per_node, world_size,
                     workers.front().rank, workers.back().rank, o.master_addr, port)
      << std::endl;

  using Clock = std::chrono::steady_clock;
  int failed_code = 0, interrupted = 0;
  bool stopping = false;
  Clock::time_point kill_at;
  auto stop_all = [&](int sig) {
    for (const Worker& w : workers)
      if (w.running) ::kill(w.pid, sig);
  };
  auto running = [&] { return std::any_of(workers.begin(), workers.end(), [](const Worker& w) { return w.running; }); };

  while (running()) {
    const timespec tick{0, 200 * 1000 * 1000};
    siginfo_t info;
    const int sig = ::sigtimedwait(&watched, &info, &tick);
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
      if (stopping && interrupted) {
        log << fmt::format("{}: {} again: killing the workers", kWho, signal_name(sig)) << std::endl;
        stop_all(SIGKILL);
      } else {
        log << fmt::format("{}: {}: passing it on to the workers", kWho, signal_name(sig)) << std::endl;
        stop_all(sig);
        if (!stopping) kill_at = Clock::now() + o.grace;
        stopping = true;
      }
      interrupted = sig;
    }
    for (Worker& w : workers) {
      if (!w.running) continue;
      int status = 0;
      const pid_t done = ::waitpid(w.pid, &status, WNOHANG);
      if (done != w.pid) continue;
      w.running = false;
      const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
      if (!failed || stopping) continue;  // after the first failure the others' ends are consequences
      failed_code = exit_code(status);
      log << fmt::format("{}: rank {} (local rank {}, pid {}) {}; stopping the other workers", kWho, w.rank,
                         w.local_rank, w.pid, describe_status(status))
          << std::endl;
      stopping = true;
      kill_at = Clock::now() + o.grace;
      stop_all(SIGTERM);
    }
    if (stopping && running() && Clock::now() >= kill_at) {
      log << fmt::format("{}: workers still running {} s after SIGTERM: killing them", kWho,
                         std::chrono::duration_cast<std::chrono::seconds>(o.grace).count())
          << std::endl;
      stop_all(SIGKILL);
      kill_at = Clock::time_point::max();
    }
  }
  ::sigprocmask(SIG_SETMASK, &original, nullptr);
  if (failed_code != 0) return failed_code;
  if (interrupted) return 128 + interrupted;
  return 0;
}

std::string admis_executable(const std::string& who) {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) throw Error(who, fmt::format("cannot find the admis executable: {}", std::strerror(errno)));
  return std::string(self, static_cast<std::size_t>(n));
}

int cmd_launch(const std::vector<std::string>& args, Globals&) {
  const std::string usage =
      "usage: admis [global options] launch --nproc-per-node N [--master-port P] [--master-addr HOST]\n"
      "                    [--nnodes M --node-rank K] [--no-admis] -- COMMAND [ARGS...]\n"
      "Starts N workers of `admis COMMAND ARGS...` on this machine with RANK, WORLD_SIZE, LOCAL_RANK,\n"
      "MASTER_ADDR and MASTER_PORT set, as torchrun does; training in them runs data-parallel.\n"
      "Signals are passed on to the workers; when one fails the others are stopped and launch fails.\n"
      "  --nproc-per-node N   workers on this machine (e.g. one per GPU)\n"
      "  --master-port P      rendezvous port on rank 0's machine (default: a free port; required with --nnodes)\n"
      "  --master-addr HOST   rank 0's machine (default 127.0.0.1)\n"
      "  --nnodes M           machines in the job (default 1), each running admis launch\n"
      "  --node-rank K        this machine's number in [0, M)\n"
      "  --no-admis           COMMAND is a program to run as is, not an admis command\n"
      "Global options given before -- (--threads, --device, --seed, --plugin-path) are passed to the workers;\n"
      "without --threads each worker gets the machine's cores divided by N.";
  LaunchOptions o;
  std::vector<std::string> passed;  // global options for the workers
  bool no_admis = false;
  auto dash = std::find(args.begin(), args.end(), "--");
  auto number = [&](std::size_t& i, const std::string& name, int lo, int hi) {
    if (i + 1 >= static_cast<std::size_t>(dash - args.begin()))
      throw Error(kWho, fmt::format("{} needs a value\n{}", name, usage));
    const std::string& text = args[++i];
    try {
      std::size_t used = 0;
      const int v = std::stoi(text, &used);
      if (used == text.size() && v >= lo && v <= hi) return v;
    } catch (const std::exception&) {
    }
    throw Error(kWho, fmt::format("{} must be an integer in [{}, {}], got '{}'", name, lo, hi, text));
  };
  const std::size_t end = static_cast<std::size_t>(dash - args.begin());
  for (std::size_t i = 0; i < end; ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::cout << usage << std::endl;
      return 0;
    }
    if (a == "--nproc-per-node" || a == "--nproc_per_node") o.nproc_per_node = number(i, "--nproc-per-node", 1, 4096);
    else if (a == "--master-port" || a == "--master_port") o.master_port = number(i, "--master-port", 1, 65535);
    else if (a == "--nnodes") o.nnodes = number(i, "--nnodes", 1, 1 << 20);
    else if (a == "--node-rank" || a == "--node_rank") o.node_rank = number(i, "--node-rank", 0, 1 << 20);
    else if (a == "--master-addr" || a == "--master_addr") {
      if (i + 1 >= end) throw Error(kWho, "--master-addr needs a value");
      o.master_addr = args[++i];
    } else if (a == "--no-admis") no_admis = true;
    else if (a == "--threads" || a == "--device" || a == "--seed" || a == "--plugin-path") {
      if (i + 1 >= end) throw Error(kWho, fmt::format("{} needs a value", a));
      passed.push_back(a);
      passed.push_back(args[++i]);
    } else {
      throw Error(kWho, fmt::format("unknown option '{}' (the worker command goes after --)\n{}", a, usage));
    }
  }
  if (dash == args.end() || dash + 1 == args.end())
    throw Error(kWho, fmt::format("no worker command after --\n{}", usage));
  std::vector<std::string> command(dash + 1, args.end());
  const bool threads_chosen = std::find(passed.begin(), passed.end(), "--threads") != passed.end() ||
                              std::find(command.begin(), command.end(), "--threads") != command.end() ||
                              std::getenv("OMP_NUM_THREADS");
  if (!threads_chosen)
    o.threads_per_worker =
        std::max(1, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) / o.nproc_per_node);
  if (no_admis) {
    o.command = command;
  } else {
    o.command = {admis_executable(kWho)};
    o.command.insert(o.command.end(), passed.begin(), passed.end());
    if (!threads_chosen) {
      o.command.push_back("--threads");
      o.command.push_back(std::to_string(o.threads_per_worker));
    }
    o.command.insert(o.command.end(), command.begin(), command.end());
  }
  return launch_workers(o, std::cerr);
}

}  // namespace admis::host
