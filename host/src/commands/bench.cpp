// `admis bench`: throughput of a backbone (+ head) on this machine, reported with the
// machine noted. Benchmarks, not tests, measure speed (the test suite never times code).
#include <boost/filesystem.hpp>
#include <boost/program_options.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "admis/host/bench.h"
#include "admis/host/commands.h"
#include "admis/host/convert.h"
#include "admis/host/data_loader.h"
#include "admis/host/distributed.h"
#include "admis/host/distributed_head.h"
#include "admis/host/distributed_launch.h"
#include "admis/host/distributed_reducer.h"
#include "admis/host/generation.h"
#include "admis/host/manifest.h"
#include "admis/host/registry.h"
#include "admis/host/runtime.h"
#include "admis/host/text.h"
#include "admis/host/train_recognition.h"
#include "admis/host/weights.h"

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


// This process's peak resident memory (VmHWM) in MB; 0 where /proc does not say.
double peak_resident_megabytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // "VmHWM:  123456 kB"
  return 0;
}

// "1,2" -> {1, 2}: the process counts of --processes.
std::vector<int> parse_process_counts(const std::string& text) {
  const Error bad("admis bench", fmt::format("--processes must be a comma-separated list of process counts, each "
                                             "at least 1 (e.g. --processes 1,2); got '{}'",
                                             text));
  std::vector<int> counts;
  std::size_t at = 0;
  while (true) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    if (item.empty() || item.size() > 4 || !std::all_of(item.begin(), item.end(), ::isdigit)) throw bad;
    const int n = std::stoi(item);
    if (n < 1) throw bad;
    counts.push_back(n);
    if (comma == text.size()) return counts;
    at = comma + 1;
  }
}

// Runs `argv` with stdout and stderr going to `log_path`; returns its wait status. The
// child is terminated if this process dies, so no launch job outlives the benchmark.
int run_logged(const std::vector<std::string>& argv, const std::string& log_path) {
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("admis bench", fmt::format("cannot start {}: {}", argv[0], std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) _exit(1);
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) _exit(126);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    std::cerr << fmt::format("cannot run {}: {}", argv[0], std::strerror(errno)) << std::endl;
    _exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw Error("admis bench", fmt::format("waiting for {}: {}", argv[0], std::strerror(errno)));
  return status;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string last_lines(const std::string& text, int count) {
  std::size_t at = text.size();
  if (at > 0 && text[at - 1] == '\n') --at;
  while (at > 0 && count > 0)
    if (text[--at] == '\n') --count;
  return text.substr(at == 0 ? 0 : at + 1);
}

struct ProcessesRow {
  int processes = 0;
  int threads = 0;
  double images_per_s = 0;
  double step_s = 0;
  double allreduce_s = 0;
  double peak_mb = 0, others_peak_mb = 0;
  std::int64_t input_size = 0, parameters = 0, classes = 0;
};

// --processes: the same benchmark once per process count, each as `admis launch
// --nproc-per-node N -- bench ...` (this executable, the same options less --processes);
// rank 0 of each job writes its figures to a file, and the table compares them.
int bench_processes(const std::vector<int>& counts, const std::vector<std::string>& args,
                    const po::options_description& own, Globals& g,
                    const std::string& backbone_name, const std::string& head_name, int batch,
                    bool sync_batch_norm, bool shard_head) {
  // The bench options as given, less --processes and the global options, which go to
  // launch (it passes them on to every worker, and divides the cores only when --threads
  // is not among them).
  Globals scratch;
  po::options_description all;
  all.add(own).add(global_options(scratch));
  const po::parsed_options parsed = po::command_line_parser(args).options(all).run();
  std::vector<std::string> bench_args, launch_globals;
  for (const auto& option : parsed.options) {
    if (option.string_key == "processes" || option.string_key == "result-file") continue;
    if (option.string_key == "threads" || option.string_key == "device" || option.string_key == "seed" ||
        option.string_key == "plugin-path") {
      for (const auto& value : option.value)
        launch_globals.insert(launch_globals.end(), {"--" + option.string_key, value});
      continue;
    }
    bench_args.insert(bench_args.end(), option.original_tokens.begin(), option.original_tokens.end());
  }
  const std::string exe = admis_executable("admis bench");

  const fs::path scratch_dir = fs::temp_directory_path() / fs::unique_path("admis-bench-%%%%-%%%%");
  fs::create_directories(scratch_dir);
  std::vector<ProcessesRow> rows;
  try {
    for (const int count : counts) {
      const std::string result = (scratch_dir / fmt::format("result-{}.txt", count)).string();
      const std::string log = (scratch_dir / fmt::format("output-{}.txt", count)).string();
      std::vector<std::string> command = {exe, "launch", "--nproc-per-node", std::to_string(count)};
      command.insert(command.end(), launch_globals.begin(), launch_globals.end());
      command.insert(command.end(), {"--", "bench"});
      command.insert(command.end(), bench_args.begin(), bench_args.end());
      command.insert(command.end(), {"--result-file", result});
      std::cerr << fmt::format("admis bench: {} process(es): admis launch --nproc-per-node {} -- bench ...", count,
                               count)
                << std::endl;
      const int status = run_logged(command, log);
      const std::string output = read_text_file(log);
      std::string failure;
      if (WIFSIGNALED(status)) failure = fmt::format("killed by signal {}", WTERMSIG(status));
      else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        failure = fmt::format("exit status {}", WEXITSTATUS(status));
      else if (!fs::exists(result)) failure = "it wrote no figures";
      if (!failure.empty())
        throw Error("admis bench", fmt::format("--processes {}: the run with {} process(es) failed ({}); its last "
                                               "output:\n{}",
                                               fmt::join(counts, ","), count, failure, last_lines(output, 20)));
      std::map<std::string, double> figures;
      std::istringstream lines(read_text_file(result));
      std::string line;
      while (std::getline(lines, line)) {
        const auto eq = line.find('=');
        if (eq == std::string::npos) continue;
        try {
          figures[line.substr(0, eq)] = std::stod(line.substr(eq + 1));
        } catch (const std::exception&) {
          throw Error(result, fmt::format("the run with {} process(es) wrote '{}', not KEY=NUMBER", count, line));
        }
      }
      for (const char* key :
           {"processes", "threads", "images_per_s", "step_s", "allreduce_s", "input_size", "parameters", "classes",
            "peak_mb", "others_peak_mb"})
        if (!figures.count(key))
          throw Error(result, fmt::format("the run with {} process(es) wrote no {}", count, key));
      rows.push_back({static_cast<int>(figures["processes"]), static_cast<int>(figures["threads"]),
                      figures["images_per_s"], figures["step_s"], figures["allreduce_s"], figures["peak_mb"],
                      figures["others_peak_mb"],
                      static_cast<std::int64_t>(figures["input_size"]),
                      static_cast<std::int64_t>(figures["parameters"]), static_cast<std::int64_t>(figures["classes"])});
    }
  } catch (...) {
    fs::remove_all(scratch_dir);
    throw;
  }
  fs::remove_all(scratch_dir);

  // Speed-ups are against one process when it was run, else against the first count.
  const auto base_it = std::find_if(rows.begin(), rows.end(), [](const ProcessesRow& r) { return r.processes == 1; });
  const ProcessesRow& base = base_it != rows.end() ? *base_it : rows.front();
  std::cout << "machine: " << machine_description(base.processes * base.threads) << ", device " << g.settings.device
            << "\n";
  std::cout << fmt::format("training step (forward, backward, gradient all-reduce, SGD) of backbone {} (input {}x{}, "
                           "{} parameters), head {} ({} classes), global batch {}{}; one admis launch per row\n\n",
                           backbone_name, base.input_size, base.input_size, base.parameters, head_name, base.classes,
                           batch,
                           std::string(sync_batch_norm ? ", synchronised batch norm" : "") +
                               (shard_head ? ", class-sharded head" : ""));
  std::cout << fmt::format("| processes x threads | images/s | speed-up vs {} process{} | all-reduce wait ms/step | "
                           "peak memory MB (rank 0 / others) |\n",
                           base.processes, base.processes == 1 ? "" : "es");
  std::cout << "|---|---|---|---|---|\n";
  for (const ProcessesRow& r : rows)
    std::cout << fmt::format("| {} x {} | {} | {:.2f}x | {} | {} |\n", r.processes, r.threads,
                             // a slow machine's figure keeps its digits
                             fmt::format("{:.{}f}", r.images_per_s, r.images_per_s >= 1 ? 1 : 3),
                             r.images_per_s / base.images_per_s,
                             r.processes == 1 ? std::string("-")
                                              : fmt::format("{:.1f} ({:.1f}% of the step)", 1000 * r.allreduce_s,
                                                            100 * r.allreduce_s / r.step_s),
                             r.processes == 1 ? fmt::format("{:.0f}", r.peak_mb)
                                              : fmt::format("{:.0f} / {:.0f}", r.peak_mb, r.others_peak_mb));
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
  std::string processes, result_file;
  bool sync_batch_norm = false, shard_head = false;
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
      "context source parameter=value (YAML; nested plugins as {plugin: NAME, params: {...}})")(
      "processes", po::value<std::string>(&processes),
      "time the training step data-parallel once per process count, e.g. 1,2 (each an admis launch job)")(
      "result-file", po::value<std::string>(&result_file),
      "also write the training step's figures to this file (key=value lines; rank 0)")(
      "sync-batch-norm", po::bool_switch(&sync_batch_norm),
      "data-parallel: batch norm over the global batch (train_recognition's sync_batch_norm)")(
      "shard-head", po::bool_switch(&shard_head),
      "data-parallel: the head's classifier split across the processes (train_recognition's shard_head)");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis bench [--backbone NAME --set k=v ...] [--head NAME --head-set k=v ...] [--batch-size B]\n"
             "                  [--data FORMAT:PATH [--augmenter E ...] [--workers N] [--data-batches K]]\n"
             "                  [--processes N,M,...] [--sync-batch-norm] [--shard-head]\n"
             "Measures backbone forward (inference) and forward+backward+SGD step (training) throughput,\n"
             "and with --data the data pipeline alone (read, decode, augment, batch on background threads).\n"
             "Under admis launch the training step runs data-parallel (the global batch B split across the\n"
             "processes, gradients all-reduced) and rank 0 reports images/s and the all-reduce wait per step;\n"
             "--processes 1,2 runs one such launch per process count and prints a table of them.\n"
             "       admis bench --denoiser NAME [--denoiser-set k=v ...] [--latent-size S] [--batch-size B] [--sample-steps N]\n"
             "                  [--scheduler NAME --scheduler-set k=v ...]\n"
             "Measures the denoiser's forward pass at batch 1 and B and the sampled images/s of a sampling run\n"
             "(default: ddim-admis with N steps).\n"
             "       admis bench --contexts NAME [--contexts-set k=v ...]\n"
             "Measures building a context source and reading its contexts (contexts/s)."))
    return 0;
  std::vector<int> process_counts;
  if (vm.count("processes")) {
    process_counts = parse_process_counts(processes);
    if (!contexts_name.empty() || !denoiser_name.empty() || !data.empty() || !result_file.empty())
      throw Error("admis bench", "--processes times the backbone's training step; it does not combine with "
                                 "--contexts, --denoiser, --data or --result-file");
  }
  if (!contexts_name.empty()) return bench_contexts(contexts_name, contexts_sets, g);
  if (!denoiser_name.empty())
    return bench_denoiser(denoiser_name, denoiser_sets, scheduler_name, scheduler_sets, latent_size, batch, sample_steps,
                          iterations, warmup, g);
  if (batch < 1 || iterations < 1 || warmup < 0)
    throw Error("admis bench", "--batch-size and --iterations must be at least 1, --warmup at least 0");
  if (workers < 0 || data_batches < 1)
    throw Error("admis bench", "--workers must be at least 0 and --data-batches at least 1");
  if (!process_counts.empty()) {
    if (dist_env_from_environment().distributed())
      throw Error("admis bench", "--processes starts admis launch itself; run it in one process, not under a launch");
    return bench_processes(process_counts, args, own, g, backbone_name, head_name, batch, sync_batch_norm, shard_head);
  }

  Registry registry;
  registry.discover(g.plugin_paths);
  Runtime runtime(registry, g.settings);
  auto backbone_raw = parse_set_options(backbone_sets, registry.get(Kind::Backbone, backbone_name).factory->params,
                                        registry, "backbone/" + backbone_name);
  auto backbone = std::dynamic_pointer_cast<Backbone>(runtime.create(Kind::Backbone, backbone_name, backbone_raw));
  auto head_raw =
      parse_set_options(head_sets, registry.get(Kind::Head, head_name).factory->params, registry, "head/" + head_name);
  if (!head_raw.count("in_features")) head_raw["in_features"] = Value(backbone->embedding_size());

  // Under admis launch (or torchrun, Slurm) the training step runs data-parallel: this
  // rank's share of the global batch, as train_recognition splits it. Only rank 0 reports.
  const std::shared_ptr<Distributed> dist = world(runtime.device());
  // The head plugin on every rank; class-sharded, as train_recognition does it: on rank 0
  // alone and on the CPU, each rank holding its columns of the classifier.
  std::shared_ptr<Head> head;
  if (!shard_head || dist->is_main()) {
    head = std::dynamic_pointer_cast<Head>(runtime.create(Kind::Head, head_name, head_raw));
    if (shard_head && dist->active()) head->module().to(torch::kCPU);
  }
  const std::int64_t classes = rank0_value(*dist, head ? head->out_features() : 0, "the head's class count");
  std::shared_ptr<ShardedMarginHead> sharded;
  if (shard_head) {
    sharded = std::make_shared<ShardedMarginHead>(dist, backbone->embedding_size(), classes,
                                                  sharded_head_options(head_name, head_raw, "--shard-head"));
    sharded->scatter_full_state(dist->is_main() ? cpu_state_dict(head->module()) : StateDict{}, "the initial head");
    sharded->module().to(runtime.device());
  }
  const bool report = dist->is_main();
  const int ranks = dist->world_size();
  if (dist->active() && !data.empty())
    throw Error("admis bench", "--data times the data pipeline of one process; run it without admis launch");
  const auto [share_begin, share_end] = rank_share(batch, dist->rank(), ranks);
  const std::int64_t local = share_end - share_begin;
  SynchronisedBatchNorm synchronised;
  if (sync_batch_norm) {
    if (batch < ranks)
      throw Error("admis bench", fmt::format("--sync-batch-norm needs a --batch-size of at least the {} processes",
                                             ranks));
    synchronised.attach(dist, backbone->module());
  }

  const auto size = backbone->input_size();
  const auto options = torch::TensorOptions().device(runtime.device());
  auto images = torch::rand({local, 3, size, size}, options) * 2 - 1;
  auto labels = torch::randint(0, classes, {local}, options.dtype(torch::kInt64));
  auto sync = [&] {
    if (runtime.device().is_cuda()) torch::cuda::synchronize();
  };

  std::int64_t backbone_parameters = 0;
  for (const auto& p : backbone->module().parameters()) backbone_parameters += p.numel();
  if (report) {
    std::cout << "machine: " << machine_description(runtime.threads()) << ", device " << runtime.device() << "\n";
    std::cout << fmt::format("backbone {} (input {}x{}, {} parameters), head {} ({} classes), batch {}\n",
                             backbone_name, size, size, backbone_parameters, head_name, classes, batch);
    if (dist->active())
      std::cout << fmt::format("data-parallel: {} processes x {} threads, global batch {} ({} per process){}\n",
                               ranks, runtime.threads(), batch,
                               batch % ranks == 0 ? fmt::format("{}", batch / ranks)
                                                  : fmt::format("{}-{}", batch / ranks, batch / ranks + 1),
                               std::string(synchronised.active() ? ", synchronised batch norm" : "") +
                                   (sharded ? fmt::format(", class-sharded head ({} classes on rank 0)",
                                                          sharded->class_end() - sharded->class_begin())
                                            : std::string()));
  }

  if (!dist->active()) {
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
  } else if (report) {
    std::cout << "  forward (eval, inference mode)      not timed data-parallel: run admis bench in one process\n";
  }

  // train_recognition's step: every rank starts from rank 0's weights; each weights its
  // loss by its share of the global batch, so the averaged gradient is the whole batch's;
  // SGD with momentum and TFace's weight-decay groups. In one process the reducer does nothing.
  // A sharded head's loss is already the mean over all ranks' rows: the backbone's
  // gradients are summed, not averaged, and its columns are each rank's own.
  torch::nn::Module& head_module = sharded ? sharded->module() : head->module();
  backbone->module().train();
  head_module.train();
  broadcast_module(*dist, backbone->module(), "backbone");
  if (!sharded) broadcast_module(*dist, head->module(), "head");
  std::vector<torch::Tensor> model_params = backbone->module().parameters();
  if (!sharded)
    for (const auto& p : head->module().parameters()) model_params.push_back(p);
  GradientReducer reducer(dist, model_params, 25 * 1024 * 1024, /*average=*/!sharded);
  SgdMomentum sgd(tface_param_groups(backbone->module(), head_module, 5e-4), 0.9);
  const double share = static_cast<double>(local * ranks) / static_cast<double>(batch);
  auto step = [&] {
    sgd.zero_grad();
    reducer.prepare();
    if (sharded) {  // every rank joins the head's collectives, also with an empty share
      const torch::Tensor embeddings =
          local > 0 ? backbone->forward(images)
                    : torch::zeros({0, backbone->embedding_size()}, options).requires_grad_(true);
      sharded->forward(embeddings, labels).loss.backward();
    } else if (local > 0) {  // a rank with an empty share (batch < processes) only joins the averaging
      auto loss = torch::nn::functional::cross_entropy(head->forward(backbone->forward(images), labels).logits, labels);
      (share == 1.0 ? loss : loss * share).backward();
    }
    reducer.finish();
    sgd.step(0.1);
    sync();
  };
  for (int i = 0; i < warmup; ++i) step();
  dist->barrier("the start of the timed training steps");
  const double wait_before = reducer.wait_seconds();
  const auto start = Clock::now();
  for (int i = 0; i < iterations; ++i) step();
  // The slowest rank's time is the job's; the all-reduce wait is the mean over the ranks
  // (a rank that finishes backward first waits longest).
  torch::Tensor elapsed =
      torch::tensor({std::chrono::duration<double>(Clock::now() - start).count()}, torch::kFloat64);
  dist->all_reduce_max(elapsed, "the slowest rank's time of the training steps");
  torch::Tensor waited = torch::tensor({reducer.wait_seconds() - wait_before}, torch::kFloat64);
  dist->all_reduce_sum(waited, "the sum of the ranks' all-reduce waits");
  const double training = elapsed.item<double>() / iterations;
  const double allreduce = waited.item<double>() / ranks / iterations;
  // Peak resident memory: rank 0's, and the largest of the other ranks'.
  const double peak_mb = peak_resident_megabytes();
  torch::Tensor others_peak = torch::tensor({dist->is_main() ? 0.0 : peak_mb}, torch::kFloat64);
  dist->all_reduce_max(others_peak, "the largest peak memory of the other ranks");
  const double others_peak_mb = others_peak.item<double>();
  if (report) {
    std::cout << fmt::format("  forward+backward+SGD step (train)   {:8.1f} images/s  ({:.3f} s/batch{})\n",
                             batch / training, training, dist->active() ? ", all processes" : "");
    if (dist->active())
      std::cout << fmt::format("  gradient all-reduce wait            {:8.1f} ms/step   ({:.1f}% of the step, "
                               "{} bucket(s), mean over ranks)\n",
                               1000 * allreduce, 100 * allreduce / training, reducer.bucket_count());
    std::cout << fmt::format("  peak resident memory                {:8.0f} MB{}\n", peak_mb,
                             dist->active() ? fmt::format(" on rank 0, at most {:.0f} MB on the others", others_peak_mb)
                                            : std::string());
    if (!result_file.empty())
      write_file_atomic(result_file,
                        fmt::format("processes={}\nthreads={}\nbatch={}\nimages_per_s={:.6g}\nstep_s={:.6g}\n"
                                    "allreduce_s={:.6g}\nbuckets={}\ninput_size={}\nparameters={}\nclasses={}\n"
                                    "peak_mb={:.6g}\nothers_peak_mb={:.6g}\n",
                                    ranks, runtime.threads(), batch, batch / training, training, allreduce,
                                    reducer.bucket_count(), size, backbone_parameters, classes, peak_mb,
                                    others_peak_mb));
  }
  if (!data.empty()) {
    const double pipeline = data_pipeline_images_per_second(data, augmenter_entries, workers, data_batches, batch,
                                                            size, runtime, g.settings.seed);
    std::cout << fmt::format("  data pipeline alone ({} workers)     {:8.1f} images/s  ({:.1f}x the training step)\n",
                             workers, pipeline, pipeline * training / batch);
  }
  dist->farewell("the end of admis bench");
  return 0;
}

}  // namespace admis::host
