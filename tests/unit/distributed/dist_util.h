#pragma once
// Helpers for the distributed tests: ranks as threads of this process sharing a HashStore
// (the same Gloo process group code as separate processes, without the start-up), and a
// small backbone without batch norm or dropout, whose data-parallel training must match
// single-process training up to float rounding.

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <unistd.h>

#include <exception>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "admis/host/distributed.h"
#include "admis/host/train_recognition.h"
#include "admis/sdk.h"
#include "support/support.h"
#include "unit/train/toy.h"

namespace admis::test {

// Runs fn(rank's Distributed) on `world` threads at once and rethrows the first error.
// Each rank gives up after `timeout` (Gloo's own timeout), so a broken test fails rather
// than hangs.
inline void run_ranks(int world, const std::function<void(std::shared_ptr<host::Distributed>)>& fn,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(std::make_shared<host::Distributed>(store, r, world, timeout));
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// 112x112 -> stride-4 conv -> PReLU -> stride-2 conv -> ReLU -> 4x4 pool -> linear.
struct PlainNetImpl : torch::nn::Module {
  explicit PlainNetImpl(std::int64_t embedding) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 5).stride(4).padding(2)));
    prelu1 = register_module("prelu1", torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(8)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2).padding(1)));
    fc = register_module("fc", torch::nn::Linear(16 * 4 * 4, embedding));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(conv2(prelu1(conv1(x))));
    return fc(torch::adaptive_avg_pool2d(h, {4, 4}).flatten(1));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::PReLU prelu1{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(PlainNet);

using PlainBackbone = NetBackbone<PlainNet>;

// Two short epochs of the toy recognition task for comparing data-parallel training with
// one process: several gradient buckets for the small test models, no decoding threads.
inline host::TrainOptions parallel_train_options(std::int64_t batch_size) {
  host::TrainOptions o;
  o.epochs = 2;
  o.batch_size = batch_size;
  o.lr = 0.05;
  o.stages = {1};
  o.warmup_steps = 2;
  o.workers = 0;
  o.seed = 5;
  o.log_every = 3;
  o.bucket_bytes = 4096;
  return o;
}

// This test program's own path, for tests that start it again as a worker.
inline std::string self_exe() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, static_cast<std::size_t>(n)) : std::string();
}

}  // namespace admis::test
