// `admis bench`: throughput of a backbone (+ head) on this machine, reported with the
// machine noted. Benchmarks, not tests, measure speed (the test suite never times code).
#include <boost/filesystem.hpp>
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <thread>

#include "admis/host/bench.h"
#include "admis/host/commands.h"
#include "admis/host/convert.h"
#include "admis/host/data_loader.h"
#include "admis/host/generation.h"
#include "admis/host/manifest.h"
#include "admis/host/registry.h"
#include "admis/host/runtime.h"
#include "admis/host/text.h"

namespace fs = boost::filesystem;
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

// Images/s of the training data pipeline alone: the recognition DataLoader (read, decode,
// augment, normalise, batch) on `workers` threads with nothing consuming the batches.
double data_pipeline_images_per_second(const std::string& data, std::vector<std::string> augmenter_entries, int workers,
                                       int batches, int batch_size, std::int64_t image_size, Runtime& runtime,
                                       std::uint64_t seed) {
  const DatasetSpec spec = parse_dataset_spec(data, "--data", "admis bench");
  auto reader_plugin = runtime.create(Kind::DatasetReader, spec.format, {}, "", {}, "", "admis bench --data");
  auto& reader = dynamic_cast<DatasetReader&>(*reader_plugin);
  reader.open(spec.path);
  if (augmenter_entries.empty()) augmenter_entries = {"flip", "random-resized-crop p=0.2"};
  const AugmenterList augmenters = create_augmenters(augmenter_entries, runtime, "admis bench --augmenter");
  LoaderOptions options;
  options.batch_size = batch_size;
  options.workers = workers;
  options.seed = seed;
  options.image_size = image_size;
  DataLoader loader(reader, augmenters.augmenters, options);
  std::int64_t images = 0, epoch = 0;
  const auto start = Clock::now();
  loader.start_epoch(epoch);
  for (int i = 0; i < batches; ++i) {
    Batch b;
    if (!loader.next(b)) {  // a small dataset: go on into the next epoch
      loader.start_epoch(++epoch);
      if (!loader.next(b)) throw Error(data, "the dataset is empty");
    }
    images += b.images.size(0);
  }
  return images / std::chrono::duration<double>(Clock::now() - start).count();
}

// A plugin of `kind` from its name and "key=value" settings (values as YAML).
template <class T>
std::shared_ptr<T> create_with_sets(Runtime& runtime, Kind kind, const std::string& name,
                                    const std::vector<std::string>& sets) {
  const std::string owner = std::string(to_string(kind)) + "/" + name;
  auto raw = parse_set_options(sets, runtime.registry().get(kind, name).factory->params, runtime.registry(), owner);
  auto plugin = std::dynamic_pointer_cast<T>(runtime.create(kind, name, raw));
  if (!plugin) throw Error(owner, "plugin does not implement its kind's interface");
  return plugin;
}

// The denoiser's forward time at batch 1 and `batch` (eval, inference mode, random
// latents and contexts), and images/s of a whole sampling run of `scheduler` (default:
// ddim-admis with `steps` steps; `steps` 0 skips the run).
int bench_denoiser(const std::string& name, const std::vector<std::string>& sets, const std::string& scheduler_name,
                   const std::vector<std::string>& scheduler_sets, int latent_size, int batch, int steps, int iterations,
                   int warmup, Globals& g) {
  if (latent_size < 1 || steps < 0)
    throw Error("admis bench", "--latent-size must be at least 1 and --sample-steps at least 0");
  Registry registry;
  registry.discover(g.plugin_paths);
  Runtime runtime(registry, g.settings);
  auto denoiser = create_with_sets<Denoiser>(runtime, Kind::Denoiser, name, sets);
  denoiser->module().eval();
  std::int64_t parameters = 0;
  for (const auto& p : denoiser->module().parameters()) parameters += p.numel();
  const auto options = torch::TensorOptions().device(runtime.device());
  auto sync = [&] {
    if (runtime.device().is_cuda()) torch::cuda::synchronize();
  };
  std::cout << "machine: " << machine_description(runtime.threads()) << ", device " << runtime.device() << "\n";
  std::cout << fmt::format("denoiser {} ({} parameters), latents {}x{}x{}, context {}\n", name, parameters,
                           denoiser->in_channels(), latent_size, latent_size, denoiser->context_size());
  for (const int b : std::vector<int>{1, batch}) {
    const torch::Tensor x = torch::randn({b, denoiser->in_channels(), latent_size, latent_size}, options);
    const torch::Tensor t = torch::randint(0, 1000, {b}, options.dtype(torch::kInt64));
    torch::Tensor context;
    if (denoiser->context_size() > 0)
      context = torch::nn::functional::normalize(torch::randn({b, denoiser->context_size()}, options),
                                                 torch::nn::functional::NormalizeFuncOptions().dim(1));
    const double seconds = seconds_per_run(
        [&] {
          torch::InferenceMode guard;
          denoiser->forward(x, t, context);
          sync();
        },
        warmup, iterations);
    std::cout << fmt::format("  forward, batch {:<4}                   {:8.3f} s  ({:.2f} samples/s)\n", b, seconds,
                             b / seconds);
    if (b == batch) break;
  }
  if (steps == 0) return 0;
  std::vector<std::string> all_scheduler_sets = scheduler_sets;
  if (scheduler_name == "ddim-admis") all_scheduler_sets.insert(all_scheduler_sets.begin(), fmt::format("num_inference_steps={}", steps));
  auto scheduler = create_with_sets<Scheduler>(runtime, Kind::Scheduler, scheduler_name, all_scheduler_sets);
  const torch::Tensor x_T = torch::randn({batch, denoiser->in_channels(), latent_size, latent_size}, options);
  torch::Tensor context;
  if (denoiser->context_size() > 0)
    context = torch::nn::functional::normalize(torch::randn({batch, denoiser->context_size()}, options),
                                               torch::nn::functional::NormalizeFuncOptions().dim(1));
  auto generator = at::make_generator<at::CPUGeneratorImpl>(0);
  const auto start = Clock::now();
  sample_reverse(*denoiser, *scheduler, x_T, context, 1.0, generator);
  sync();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << fmt::format("  {} {} steps, batch {:<4}        {:8.3f} s  ({:.3f} images/s, latents only)\n",
                           scheduler_name, scheduler->num_steps(), batch, seconds, batch / seconds);
  return 0;
}

// Creating a context source and reading all its contexts, e.g. ddpm-faces drawing,
// aligning and embedding its faces; a source with a `root` folder gets a fresh one.
int bench_contexts(const std::string& name, std::vector<std::string> sets, Globals& g) {
  Registry registry;
  registry.discover(g.plugin_paths);
  Runtime runtime(registry, g.settings);
  const auto& schema = registry.get(Kind::ContextSource, name).factory->params;
  const bool has_root = std::any_of(schema.begin(), schema.end(), [](const ParamSpec& p) { return p.name == "root"; });
  const bool root_given =
      std::any_of(sets.begin(), sets.end(), [](const std::string& s) { return s.rfind("root=", 0) == 0; });
  fs::path scratch;
  if (has_root && !root_given) {
    scratch = fs::temp_directory_path() / fs::unique_path("admis-bench-%%%%-%%%%");
    sets.push_back("root=" + scratch.string());
  }
  std::cout << "machine: " << machine_description(runtime.threads()) << ", device " << runtime.device() << "\n";
  const auto start = Clock::now();
  auto source = create_with_sets<ContextSource>(runtime, Kind::ContextSource, name, sets);
  const IdentityContexts all = source->read(0, source->size());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << fmt::format("context-source {}: {} contexts of size {} in {:.2f} s ({:.3f} contexts/s){}\n", name,
                           source->size(), source->embedding_size(), seconds, source->size() / seconds,
                           all.faces.defined() ? fmt::format(", faces {}", fmt::join(all.faces.sizes().vec(), "x")) : "");
  if (!scratch.empty()) fs::remove_all(scratch);
  return 0;
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
  int batch = 64, iterations = 5, warmup = 1, workers = 4, data_batches = 20;
  std::string data, denoiser_name, scheduler_name = "ddim-admis", contexts_name;
  std::vector<std::string> augmenter_entries, denoiser_sets, scheduler_sets, contexts_sets;
  int latent_size = 32, sample_steps = 50;
  own.add_options()("backbone", po::value<std::string>(&backbone_name)->default_value("ir"), "backbone plugin")(
      "set", po::value<std::vector<std::string>>(&backbone_sets)->composing(), "backbone parameter=value (YAML)")(
      "head", po::value<std::string>(&head_name)->default_value("arcface"), "head plugin for the training step")(
      "head-set", po::value<std::vector<std::string>>(&head_sets)->composing(), "head parameter=value (YAML)")(
      "batch-size", po::value<int>(&batch)->default_value(64), "images per batch")(
      "iterations", po::value<int>(&iterations)->default_value(5), "timed iterations")(
      "warmup", po::value<int>(&warmup)->default_value(1), "untimed iterations first")(
      "data", po::value<std::string>(&data), "also time the data pipeline alone on FORMAT:PATH (e.g. tfrecord:out/NAME)")(
      "augmenter", po::value<std::vector<std::string>>(&augmenter_entries)->composing(),
      "data pipeline augmenter \"NAME key=value ...\" (default: flip, random-resized-crop p=0.2)")(
      "workers", po::value<int>(&workers)->default_value(4), "data pipeline decoding threads")(
      "data-batches", po::value<int>(&data_batches)->default_value(20), "batches the data pipeline is timed over")(
      "denoiser", po::value<std::string>(&denoiser_name), "time this denoiser instead of a backbone (e.g. idiff-unet)")(
      "denoiser-set", po::value<std::vector<std::string>>(&denoiser_sets)->composing(), "denoiser parameter=value")(
      "latent-size", po::value<int>(&latent_size)->default_value(32), "denoiser input H = W (VQ-f4 latents of 128 px: 32)")(
      "sample-steps", po::value<int>(&sample_steps)->default_value(50),
      "ddim-admis steps of the timed sampling run; 0: no sampling run")(
      "scheduler", po::value<std::string>(&scheduler_name)->default_value("ddim-admis"),
      "the sampling run's scheduler (e.g. respaced-ddpm for adm-unet)")(
      "scheduler-set", po::value<std::vector<std::string>>(&scheduler_sets)->composing(), "scheduler parameter=value")(
      "contexts", po::value<std::string>(&contexts_name),
      "time building this context source and reading all its contexts (e.g. ddpm-faces)")(
      "contexts-set", po::value<std::vector<std::string>>(&contexts_sets)->composing(),
      "context source parameter=value (YAML; nested plugins as {plugin: NAME, params: {...}})");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis bench [--backbone NAME --set k=v ...] [--head NAME --head-set k=v ...] [--batch-size B]\n"
             "                  [--data FORMAT:PATH [--augmenter E ...] [--workers N] [--data-batches K]]\n"
             "Measures backbone forward (inference) and forward+backward+SGD step (training) throughput,\n"
             "and with --data the data pipeline alone (read, decode, augment, batch on background threads).\n"
             "       admis bench --denoiser NAME [--denoiser-set k=v ...] [--latent-size S] [--batch-size B] [--sample-steps N]\n"
             "                  [--scheduler NAME --scheduler-set k=v ...]\n"
             "Measures the denoiser's forward pass at batch 1 and B and the sampled images/s of a sampling run\n"
             "(default: ddim-admis with N steps).\n"
             "       admis bench --contexts NAME [--contexts-set k=v ...]\n"
             "Measures building a context source and reading its contexts (contexts/s)."))
    return 0;
  if (!contexts_name.empty()) return bench_contexts(contexts_name, contexts_sets, g);
  if (!denoiser_name.empty())
    return bench_denoiser(denoiser_name, denoiser_sets, scheduler_name, scheduler_sets, latent_size, batch, sample_steps,
                          iterations, warmup, g);
  if (batch < 1 || iterations < 1 || warmup < 0)
    throw Error("admis bench", "--batch-size and --iterations must be at least 1, --warmup at least 0");
  if (workers < 0 || data_batches < 1)
    throw Error("admis bench", "--workers must be at least 0 and --data-batches at least 1");

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
  if (!data.empty()) {
    const double pipeline = data_pipeline_images_per_second(data, augmenter_entries, workers, data_batches, batch,
                                                            size, runtime, g.settings.seed);
    std::cout << fmt::format("  data pipeline alone ({} workers)     {:8.1f} images/s  ({:.1f}x the training step)\n",
                             workers, pipeline, pipeline * training / batch);
  }
  return 0;
}

}  // namespace admis::host
