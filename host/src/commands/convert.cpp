// `admis convert`: reader plugin -> writer plugin. Worker threads read (and so decode and
// verify) the next batch while the main thread hands the current one to the writer in
// order; the writer publishes only on commit, so a failed or interrupted conversion
// leaves nothing at the destination.

#include "admis/host/convert.h"

#include <unistd.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <future>
#include <iostream>
#include <set>
#include <thread>

#include "admis/host/manifest.h"
#include "admis/host/registry.h"
#include "admis/host/runtime.h"

namespace po = boost::program_options;

namespace admis::host {

DatasetSpec parse_dataset_spec(const std::string& text, const std::string& option, const std::string& command) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw Error(command, fmt::format("{} '{}': give FORMAT:PATH, e.g. image-folder:faces/, tfrecord:out/NAME, "
                                     "recordio:out/train",
                                     option, text));
  return {text.substr(0, colon), text.substr(colon + 1)};
}

namespace {

// Samples first..first+count-1, read by `workers` threads, in index order.
std::vector<Sample> read_batch(const DatasetReader& reader, std::int64_t first, std::int64_t count, int workers) {
  std::vector<Sample> batch(static_cast<std::size_t>(count));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      try {
        for (std::int64_t i = w; i < count; i += workers) batch[static_cast<std::size_t>(i)] = reader.read(first + i);
      } catch (...) {
        errors[static_cast<std::size_t>(w)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return batch;
}

std::string clock_text(double seconds) {
  const auto s = static_cast<long long>(std::max(0.0, seconds) + 0.5);
  return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
}

class Progress {
 public:
  explicit Progress(std::int64_t total) : total_(total), tty_(::isatty(STDERR_FILENO)) {}
  void update(std::int64_t done, bool final = false) {
    const double elapsed = seconds_since(start_);
    if (!final && seconds_since(last_) < (tty_ ? 0.25 : 5.0)) return;
    last_ = Clock::now();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    std::cerr << fmt::format("{}converted {}/{} images  {:.0f} images/s  ETA {}", tty_ ? "\r" : "", done, total_, rate,
                             clock_text(eta))
              << (tty_ && !final ? "" : "\n") << std::flush;
  }
  double elapsed() const { return seconds_since(start_); }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  }
  std::int64_t total_;
  bool tty_;
  Clock::time_point start_ = Clock::now(), last_ = Clock::now();
};


int convert(const DatasetSpec& source, const DatasetSpec& destination, const std::vector<std::string>& sets,
            bool overwrite, int workers, Registry& registry, Globals& g) {
  const RegisteredPlugin& writer_plugin = registry.get(Kind::DatasetWriter, destination.format);
  registry.get(Kind::DatasetReader, source.format);  // both names checked before anything is read
  auto writer_params =
      parse_set_options(sets, writer_plugin.factory->params, registry, "dataset-writer/" + destination.format);
  if (overwrite) {
    const auto& schema = writer_plugin.factory->params;
    if (std::none_of(schema.begin(), schema.end(), [](const ParamSpec& s) { return s.name == "overwrite"; }))
      throw Error("dataset-writer/" + destination.format, "this writer has no 'overwrite' parameter");
    writer_params["overwrite"] = Value(true);
  }
  Runtime runtime(registry, g.settings);
  auto reader = std::dynamic_pointer_cast<DatasetReader>(runtime.create(Kind::DatasetReader, source.format, {}));
  auto writer = std::dynamic_pointer_cast<DatasetWriter>(runtime.create(Kind::DatasetWriter, destination.format, writer_params));
  if (!reader || !writer) throw Error("admis convert", "the plugins do not implement the dataset interfaces");

  reader->open(source.path);
  writer->open(destination.path);
  const std::int64_t total = reader->size();
  const std::int64_t batch_size = 64LL * workers;
  Progress progress(total);
  std::set<std::string> identities;
  std::future<std::vector<Sample>> next;
  auto start_batch = [&](std::int64_t first) {
    const std::int64_t count = std::min(batch_size, total - first);
    return std::async(std::launch::async, [&reader, first, count, workers] { return read_batch(*reader, first, count, workers); });
  };
  if (total > 0) next = start_batch(0);
  for (std::int64_t first = 0; first < total; first += batch_size) {
    std::vector<Sample> batch = next.get();
    if (first + batch_size < total) next = start_batch(first + batch_size);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      writer->write(batch[i]);
      identities.insert(batch[i].label_name.empty() ? std::to_string(batch[i].label) : batch[i].label_name);
      progress.update(first + static_cast<std::int64_t>(i) + 1);
    }
  }
  writer->commit();
  progress.update(total, true);
  const double seconds = progress.elapsed();
  std::cout << fmt::format("wrote {} images of {} identities to {} ({:.1f} s, {:.0f} images/s)\n", total, identities.size(),
                           destination.format + ":" + destination.path, seconds, seconds > 0 ? static_cast<double>(total) / seconds : 0.0);
  return 0;
}

}  // namespace

int cmd_convert(const std::vector<std::string>& args, Globals& g) {
  po::options_description own("admis convert");
  std::string from, to;
  std::vector<std::string> sets;
  bool overwrite = false;
  int workers = 0;
  own.add_options()("from", po::value<std::string>(&from)->required(),
                    "FORMAT:PATH to read: image-folder:DIR, tfrecord:DIR/NAME, recordio:PREFIX")(
      "to", po::value<std::string>(&to)->required(), "FORMAT:PATH to write, same forms")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(),
      "writer parameter k=v (YAML), e.g. shard_records=100000 or jpeg_quality=90")(
      "overwrite", po::bool_switch(&overwrite), "replace an existing destination dataset")(
      "workers", po::value<int>(&workers)->default_value(0), "reading and decoding threads (0: all cores)");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse(args, own, pos, g, vm,
             "usage: admis convert --from FORMAT:PATH --to FORMAT:PATH [--set k=v ...] [--overwrite]\n"
             "Copies a face dataset between formats (image-folder, tfrecord, recordio); encoded images are\n"
             "copied unchanged where the destination format allows, and nothing appears at the destination\n"
             "unless the whole dataset was written."))
    return 0;
  const DatasetSpec source = parse_dataset_spec(from, "--from", "admis convert"),
                    destination = parse_dataset_spec(to, "--to", "admis convert");
  if (workers <= 0) workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  Registry registry;
  registry.discover(g.plugin_paths);
  // Plugin exceptions may outlive `registry`: the registry keeps libraries loaded for the process.
  return convert(source, destination, sets, overwrite, workers, registry, g);
}

}  // namespace admis::host
