// `admis bench`: throughput of a backbone (+ head) on this machine, reported with the
// machine noted. Benchmarks, not tests, measure speed (the test suite never times code).
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <thread>

#include "admis/host/bench.h"
#include "admis/host/commands.h"
#include "admis/host/manifest.h"
#include "admis/host/registry.h"
#include "admis/host/runtime.h"
#include "admis/host/text.h"

namespace po = boost::program_options;

namespace admis::host {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

using Clock = std::chrono::steady_clock;

// Runs `body` `warmup` times untimed, then `iterations` times; returns seconds per run.
template <class F>
double seconds_per_run(F&& body, int warmup, int iterations) {
  for (int i = 0; i < warmup; ++i) body();
  const auto start = Clock::now();
  for (int i = 0; i < iterations; ++i) body();
  return std::chrono::duration<double>(Clock::now() - start).count() / iterations;
}

}  // namespace

std::string machine_description(int threads) {
  return fmt::format("{}, {} hardware threads, {} intra-op threads, LibTorch {}", cpu_model(),
                     std::thread::hardware_concurrency(), threads, ADMIS_TORCH_VERSION_STRING);
}

int cmd_bench(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis bench");
  std::string backbone_name = "ir", head_name = "arcface";
  std::vector<std::string> backbone_sets, head_sets;
  int batch = 64, iterations = 5, warmup = 1;
  own.add_options()("backbone", po::value<std::string>(&backbone_name)->default_value("ir"), "backbone plugin")(
      "set", po::value<std::vector<std::string>>(&backbone_sets)->composing(), "backbone parameter=value (YAML)")(
      "head", po::value<std::string>(&head_name)->default_value("arcface"), "head plugin for the training step")(
      "head-set", po::value<std::vector<std::string>>(&head_sets)->composing(), "head parameter=value (YAML)")(
      "batch-size", po::value<int>(&batch)->default_value(64), "images per batch")(
      "iterations", po::value<int>(&iterations)->default_value(5), "timed iterations")(
      "warmup", po::value<int>(&warmup)->default_value(1), "untimed iterations first");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis bench [--backbone NAME --set k=v ...] [--head NAME --head-set k=v ...] [--batch-size B]\n"
             "Measures backbone forward (inference) and forward+backward+SGD step (training) throughput."))
    return 0;
  if (batch < 1 || iterations < 1 || warmup < 0)
    throw Error("admis bench", "--batch-size and --iterations must be at least 1, --warmup at least 0");

  Registry registry;
  registry.discover(g.plugin_paths);
  Runtime runtime(registry, g.settings);
  auto backbone_raw = parse_set_options(backbone_sets, registry.get(Kind::Backbone, backbone_name).factory->params,
                                        registry, "backbone/" + backbone_name);
  auto backbone = std::dynamic_pointer_cast<Backbone>(runtime.create(Kind::Backbone, backbone_name, backbone_raw));
  auto head_raw =
      parse_set_options(head_sets, registry.get(Kind::Head, head_name).factory->params, registry, "head/" + head_name);
  if (!head_raw.count("in_features")) head_raw["in_features"] = Value(backbone->embedding_size());
  auto head = std::dynamic_pointer_cast<Head>(runtime.create(Kind::Head, head_name, head_raw));

  const auto size = backbone->input_size();
  const auto options = torch::TensorOptions().device(runtime.device());
  auto images = torch::rand({batch, 3, size, size}, options) * 2 - 1;
  auto labels = torch::randint(0, head->out_features(), {batch}, options.dtype(torch::kInt64));
  auto sync = [&] {
    if (runtime.device().is_cuda()) torch::cuda::synchronize();
  };

  std::cout << "machine: " << machine_description(runtime.threads()) << ", device " << runtime.device() << "\n";
  std::cout << fmt::format("backbone {} (input {}x{}, {} parameters), head {} ({} classes), batch {}\n", backbone_name,
                           size, size,
                           [&] {
                             std::int64_t n = 0;
                             for (const auto& p : backbone->module().parameters()) n += p.numel();
                             return n;
                           }(),
                           head_name, head->out_features(), batch);

  backbone->module().eval();
  const double inference = seconds_per_run(
      [&] {
        torch::InferenceMode guard;
        backbone->forward(images);
        sync();
      },
      warmup, iterations);
  std::cout << fmt::format("  forward (eval, inference mode)      {:8.1f} images/s  ({:.3f} s/batch)\n",
                           batch / inference, inference);

  backbone->module().train();
  head->module().train();
  std::vector<torch::Tensor> parameters = backbone->module().parameters();
  for (const auto& p : head->module().parameters()) parameters.push_back(p);
  torch::optim::SGD sgd(parameters, torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(5e-4));
  const double training = seconds_per_run(
      [&] {
        sgd.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(head->forward(backbone->forward(images), labels).logits, labels);
        loss.backward();
        sgd.step();
        sync();
      },
      warmup, iterations);
  std::cout << fmt::format("  forward+backward+SGD step (train)   {:8.1f} images/s  ({:.3f} s/batch)\n",
                           batch / training, training);
  return 0;
}

}  // namespace admis::host
