// Process-group start-up from the environment and the collectives (see distributed.h).
// ProcessGroupGloo.hpp only declares the class under USE_C10D_GLOO, which LibTorch's own
// build defines; Debian's libtorch_cpu carries the implementation.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ADMIS_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "admis/host/distributed.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <thread>

#include "admis/host/text.h"
#include "admis/sdk/error.h"

namespace admis::host {

namespace {

constexpr const char* kWho = "distributed";

std::optional<std::string> process_env(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

// An integer variable in [lo, hi]; the error names the variable and its value.
int env_int(const EnvLookup& lookup, const std::string& name, int lo, int hi, const std::string& meaning) {
  const auto text = lookup(name);
  if (!text) throw Error(name, fmt::format("is not set; it must give {}", meaning));
  std::size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(*text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text->size())
    throw Error(name, fmt::format("'{}' is not an integer; it must give {}", *text, meaning));
  if (value < lo || value > hi)
    throw Error(name, fmt::format("{} is outside [{}, {}]; it must give {}", value, lo, hi, meaning));
  return static_cast<int>(value);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

std::string slurm_first_host(const std::string& nodelist, const std::string& variable) {
  // The first entry: up to the first comma outside brackets.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0) break;
    if (c == ',' && depth == 0) break;
    first += c;
  }
  if (depth != 0 || first.empty())
    throw Error(variable, fmt::format("'{}' is not a Slurm node list (expected e.g. node01,node02 or node[01-04,07])",
                                      nodelist));
  // Each bracket group stands for its first member, the start of its first range, with
  // its zero padding ("[01-04,07]" -> "01").
  std::string host;
  for (std::size_t i = 0; i < first.size(); ++i) {
    if (first[i] != '[') {
      host += first[i];
      continue;
    }
    const std::size_t close = first.find(']', i);
    const std::string group = first.substr(i + 1, close - i - 1);
    const std::string start = group.substr(0, group.find_first_of(",-"));
    if (start.empty() || !std::all_of(start.begin(), start.end(), ::isdigit))
      throw Error(variable, fmt::format("'{}': the range [{}] does not start with a number", nodelist, group));
    host += start;
    i = close;
  }
  return host;
}

DistEnv parse_dist_env(const EnvLookup& lookup) {
  constexpr int kMaxInt = std::numeric_limits<int>::max();
  DistEnv env;
  const bool torchrun = lookup("WORLD_SIZE") || lookup("RANK");
  const bool slurm = lookup("SLURM_NTASKS") || lookup("SLURM_PROCID");
  if (torchrun) {
    env.origin = "torchrun variables";
    if (!lookup("WORLD_SIZE")) throw Error("WORLD_SIZE", "is not set but RANK is; set both (or neither, for one process)");
    if (!lookup("RANK")) throw Error("RANK", "is not set but WORLD_SIZE is; set both (or neither, for one process)");
    env.world_size = env_int(lookup, "WORLD_SIZE", 1, kMaxInt, "the number of processes in the job");
    env.rank = env_int(lookup, "RANK", 0, env.world_size - 1,
                       fmt::format("this process's rank in [0, WORLD_SIZE = {})", env.world_size));
    env.local_rank = lookup("LOCAL_RANK") ? env_int(lookup, "LOCAL_RANK", 0, env.world_size - 1,
                                                    "this process's rank on its machine, below WORLD_SIZE")
                                          : env.rank;
    if (env.local_rank > env.rank)
      throw Error("LOCAL_RANK", fmt::format("{} is larger than RANK {}: a rank on a machine cannot exceed the global "
                                            "rank",
                                            env.local_rank, env.rank));
  } else if (slurm) {
    env.origin = "Slurm variables";
    if (!lookup("SLURM_NTASKS")) throw Error("SLURM_NTASKS", "is not set but SLURM_PROCID is (start the job with srun)");
    env.world_size = env_int(lookup, "SLURM_NTASKS", 1, kMaxInt, "the number of tasks in the job");
    env.rank = env_int(lookup, "SLURM_PROCID", 0, env.world_size - 1,
                       fmt::format("this task's rank in [0, SLURM_NTASKS = {})", env.world_size));
    env.local_rank = lookup("SLURM_LOCALID") ? env_int(lookup, "SLURM_LOCALID", 0, env.world_size - 1,
                                                       "this task's rank on its node, below SLURM_NTASKS")
                                             : 0;
    if (env.world_size > 1 && !lookup("SLURM_LOCALID"))
      throw Error("SLURM_LOCALID", "is not set; Slurm sets it for tasks started with srun");
  } else {
    return env;  // no variables: one process
  }
  if (!env.distributed()) return env;

  if (auto addr = lookup("MASTER_ADDR")) {
    env.master_addr = *addr;
  } else if (torchrun) {
    throw Error("MASTER_ADDR", "is not set; give the host of rank 0 (e.g. 127.0.0.1 for one machine)");
  } else {
    const char* variable = lookup("SLURM_NODELIST") ? "SLURM_NODELIST" : "SLURM_JOB_NODELIST";
    const auto nodelist = lookup(variable);
    if (!nodelist)
      throw Error("MASTER_ADDR", "is not set, and neither is SLURM_NODELIST to take the first host from");
    env.master_addr = slurm_first_host(*nodelist, variable);
  }
  if (lookup("MASTER_PORT"))
    env.master_port = env_int(lookup, "MASTER_PORT", 1, 65535, "the TCP port rank 0 listens on for the rendezvous");
  else if (torchrun)
    throw Error("MASTER_PORT", "is not set; give a free TCP port on MASTER_ADDR (e.g. 29500)");
  return env;
}

DistEnv dist_env_from_environment() { return parse_dist_env(process_env); }

std::string rank_device(const std::string& requested, const DistEnv& env) {
  if (requested != "cuda" || !env.distributed()) return requested;
  return "cuda:" + std::to_string(env.local_rank);
}

std::chrono::milliseconds dist_timeout_from_environment() {
  if (!process_env("ADMIS_DIST_TIMEOUT")) return std::chrono::seconds(300);
  return std::chrono::seconds(env_int(process_env, "ADMIS_DIST_TIMEOUT", 1, 7 * 24 * 3600,
                                      "the seconds a rank waits for the others"));
}

Distributed::Distributed(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size,
                         std::chrono::milliseconds timeout, const torch::Device& device,
                         const std::string& gloo_hostname, const std::string& rendezvous)
    : rank_(rank), world_size_(world_size), timeout_(timeout), store_(std::move(store)) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw Error(kWho, fmt::format("rank {} is not in a world of {}", rank, world_size));
  if (world_size == 1) return;
  store_->setTimeout(timeout);
  sync_ = c10::make_intrusive<c10d::PrefixStore>("sync", store_);
  try {
    if (device.is_cuda()) {
#ifdef ADMIS_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      group_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, rank, world_size, options);
#else
      throw Error(kWho, "this admis was built without NCCL (configure with -DADMIS_WITH_NCCL=ON against a CUDA "
                        "LibTorch), so CUDA training cannot be distributed; use --device cpu");
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // GLOO_SOCKET_IFNAME picks the network interface as in PyTorch; on one machine the
      // loopback address needs no name resolution; elsewhere this host's own address.
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname && *ifname)
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (is_loopback(gloo_hostname))
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      options->threads = 2;
      group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, rank, world_size, options);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(kWho, fmt::format("rank {} of {} could not form the process group{} within {:g} s: {} (are all {} "
                                  "ranks running? ADMIS_DIST_TIMEOUT sets the wait)",
                                  rank, world_size, rendezvous.empty() ? "" : " (" + rendezvous + ")",
                                  static_cast<double>(timeout.count()) / 1000, describe(e), world_size));
  }
}

Distributed::~Distributed() = default;

std::shared_ptr<Distributed> Distributed::connect(const DistEnv& env, std::chrono::milliseconds timeout,
                                                  const torch::Device& device) {
  if (!env.distributed()) return std::make_shared<Distributed>();
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(env.master_port);
  options.isServer = env.rank == 0;
  options.numWorkers = static_cast<std::size_t>(env.world_size);
  options.waitWorkers = true;
  options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  } catch (const std::exception& e) {
    throw Error(kWho, fmt::format("rank {} of {} ({}): the rendezvous at MASTER_ADDR={} MASTER_PORT={} failed within "
                                  "{:g} s: {} ({})",
                                  env.rank, env.world_size, env.origin, env.master_addr, env.master_port,
                                  static_cast<double>(timeout.count()) / 1000, describe(e),
                                  env.rank == 0 ? "is the port already in use? choose another MASTER_PORT"
                                                : "is rank 0 running, and MASTER_ADDR/MASTER_PORT the same on all "
                                                  "ranks and reachable?"));
  }
  // Keys of this group apart from anything else a caller may keep in the store.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("admis", store);
  return std::make_shared<Distributed>(
      prefixed, env.rank, env.world_size, timeout, device, env.master_addr,
      fmt::format("rendezvous at MASTER_ADDR={} MASTER_PORT={} from the {}", env.master_addr, env.master_port,
                  env.origin.empty() ? "caller" : env.origin));
}

void Distributed::wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  if (!work) return;
  try {
    work->wait();
  } catch (const std::exception& e) {
    throw Error(kWho, fmt::format("rank {} of {}: {} failed: {} (another rank has probably stopped; its own error "
                                  "says why)",
                                  rank_, world_size_, what, describe(e)));
  }
}

c10::intrusive_ptr<c10d::Work> Distributed::all_reduce_sum_async(torch::Tensor& tensor) {
  if (!active()) return {};
  std::vector<torch::Tensor> tensors{tensor};
  return group_->allreduce(tensors);
}

void Distributed::all_reduce_sum(torch::Tensor& tensor, const std::string& what) {
  if (!active()) return;
  std::vector<torch::Tensor> tensors{tensor};
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = group_->allreduce(tensors);
  } catch (const std::exception& e) {
    throw Error(kWho, fmt::format("rank {} of {}: {} failed to start: {}", rank_, world_size_, what, describe(e)));
  }
  wait(work, what);
}

void Distributed::all_reduce_max(torch::Tensor& tensor, const std::string& what) {
  if (!active()) return;
  std::vector<torch::Tensor> tensors{tensor};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::MAX;
  wait(group_->allreduce(tensors, options), what);
}

void Distributed::broadcast(torch::Tensor& tensor, int root, const std::string& what) {
  if (!active()) return;
  std::vector<torch::Tensor> tensors{tensor};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  wait(group_->broadcast(tensors, options), what);
}

torch::Tensor Distributed::all_gather_cat(const torch::Tensor& tensor, const std::string& what) {
  if (!active()) return tensor;
  std::vector<torch::Tensor> input{tensor.contiguous()};
  std::vector<std::vector<torch::Tensor>> output(1);
  for (int r = 0; r < world_size_; ++r) output[0].push_back(torch::empty_like(input[0]));
  wait(group_->allgather(output, input), what);
  return torch::cat(output[0], 0);
}

torch::Tensor Distributed::gather_cat(const torch::Tensor& tensor, int root, const std::string& what) {
  if (!active()) return tensor;
  std::vector<torch::Tensor> input{tensor.contiguous()};
  std::vector<std::vector<torch::Tensor>> output(rank_ == root ? 1 : 0);  // Gloo: empty off the root
  if (rank_ == root)
    for (int r = 0; r < world_size_; ++r) output[0].push_back(torch::empty_like(input[0]));
  c10d::GatherOptions options;
  options.rootRank = root;
  wait(group_->gather(output, input, options), what);
  return rank_ == root ? torch::cat(output[0], 0) : torch::Tensor();
}

void Distributed::scatter(torch::Tensor& out, const std::vector<torch::Tensor>& chunks, int root,
                          const std::string& what) {
  if (!active()) {
    out.copy_(chunks.at(0));
    return;
  }
  std::vector<torch::Tensor> output{out};
  std::vector<std::vector<torch::Tensor>> input(rank_ == root ? 1 : 0);  // Gloo: empty off the root
  if (rank_ == root)
    for (const auto& chunk : chunks) input[0].push_back(chunk.contiguous());
  c10d::ScatterOptions options;
  options.rootRank = root;
  wait(group_->scatter(output, input, options), what);
}

void Distributed::barrier(const std::string& what) {
  if (!active()) return;
  wait(group_->barrier(), what);
}

namespace {
constexpr const char* kFailedKey = "failed";
}

void Distributed::poll(const std::function<bool()>& ready, const std::string& what) {
  auto delay = std::chrono::milliseconds(10);
  for (;;) {
    bool failed = false, done = false;
    std::string failure, lost;
    try {
      failed = sync_->check({kFailedKey});
      if (failed) {
        const std::vector<std::uint8_t> bytes = sync_->get(kFailedKey);
        failure.assign(bytes.begin(), bytes.end());
      } else {
        done = ready();
      }
    } catch (const std::exception& e) {
      lost = describe(e);
    }
    if (!lost.empty())
      throw Error(kWho, fmt::format("rank {} of {}: lost the rendezvous store (served by rank 0) while waiting for {}: "
                                    "{} (rank 0 has probably stopped; its own error says why)",
                                    rank_, world_size_, what, lost));
    if (failed)
      throw Error(kWho, fmt::format("rank {} of {}: stopped waiting for {} because {}", rank_, world_size_, what,
                                    failure));
    if (done) return;
    // Short waits stay responsive, long ones (a stage of hours) cost the store little.
    std::this_thread::sleep_for(delay);
    delay = std::min<std::chrono::milliseconds>(delay * 2, std::chrono::milliseconds(500));
  }
}

void Distributed::wait_for_all(const std::string& name, const std::string& what) {
  if (!active()) return;
  const std::string key = fmt::format("{}#{}", name, waits_++);
  try {
    sync_->add(key, 1);
  } catch (const std::exception& e) {
    throw Error(kWho, fmt::format("rank {} of {}: cannot reach the rendezvous store to wait for {}: {}", rank_,
                                  world_size_, what, describe(e)));
  }
  poll([&] { return sync_->add(key, 0) >= world_size_; }, what);
}

void Distributed::publish(const std::string& key, const std::string& value) {
  if (!active()) return;
  try {
    sync_->set("value/" + key, std::vector<std::uint8_t>(value.begin(), value.end()));
  } catch (const std::exception& e) {
    throw Error(kWho, fmt::format("rank {} of {}: cannot reach the rendezvous store to publish {}: {}", rank_,
                                  world_size_, key, describe(e)));
  }
}

std::string Distributed::await(const std::string& key, const std::string& what) {
  if (!active()) return "";
  poll([&] { return sync_->check({"value/" + key}); }, what);
  const std::vector<std::uint8_t> bytes = sync_->get("value/" + key);
  return std::string(bytes.begin(), bytes.end());
}

void Distributed::publish_failure(const std::string& message) noexcept {
  if (!active()) return;
  try {
    // The first failure is the cause; later ones are usually its consequences.
    if (!sync_->check({kFailedKey}))
      sync_->set(kFailedKey, [&] {
        const std::string text = fmt::format("rank {} failed: {}", rank_, message);
        return std::vector<std::uint8_t>(text.begin(), text.end());
      }());
  } catch (...) {
    // The store is gone too; the caller's error is reported all the same.
  }
}

void Distributed::farewell(const std::string& what) {
  if (!active()) return;
  wait_for_all("farewell", what);
  if (!is_main()) {
    try {
      sync_->add("farewell-seen", 1);
    } catch (const std::exception&) {
      // Rank 0 has already gone: nothing is left to tell it.
    }
    return;
  }
  // Rank 0 serves the store: it stays until the others have read the last count, but no
  // longer than a peer may take to answer (a rank that died now has nothing left to do).
  const auto until = std::chrono::steady_clock::now() + timeout_;
  while (std::chrono::steady_clock::now() < until) {
    try {
      if (sync_->add("farewell-seen", 0) >= world_size_ - 1) return;
    } catch (const std::exception&) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::shared_ptr<Distributed> world(const torch::Device& device) {
  static std::mutex mutex;
  static std::shared_ptr<Distributed> instance;
  std::lock_guard<std::mutex> lock(mutex);
  if (!instance)
    instance = Distributed::connect(dist_env_from_environment(), dist_timeout_from_environment(), device);
  return instance;
}

std::int64_t rank0_value(Distributed& dist, std::int64_t value, const std::string& what) {
  if (!dist.active()) return value;
  torch::Tensor chosen = torch::tensor({value});
  dist.broadcast(chosen, 0, what);
  return chosen.item<std::int64_t>();
}

void broadcast_module(Distributed& dist, torch::nn::Module& module, const std::string& what) {
  if (!dist.active()) return;
  torch::NoGradGuard no_grad;
  auto send = [&](const std::string& name, torch::Tensor t) {
    if (!t.defined()) return;
    // Broadcast a contiguous copy when the tensor is a strided view, then write it back.
    torch::Tensor buffer = t.is_contiguous() ? t : t.contiguous();
    dist.broadcast(buffer, 0, fmt::format("broadcast of {} {} from rank 0", what, name));
    if (!buffer.is_same(t)) t.copy_(buffer);
  };
  for (const auto& p : module.named_parameters()) send(p.key(), p.value());
  for (const auto& b : module.named_buffers()) send(b.key(), b.value());
}

}  // namespace admis::host
