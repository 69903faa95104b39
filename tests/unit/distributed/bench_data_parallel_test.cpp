// `admis bench --processes`: one `admis launch` job per process count, whose rank 0 figures
// make one table row each. Real processes, as a user runs them (under `timeout`, so nothing
// hangs); the figures are only checked for being there and positive, never for speed.
#include <fmt/format.h>

#include <sstream>

#include "support/support.h"

using namespace admis;

namespace {

// The cells of the table row for `processes`, e.g. {"2 x 1", "2.9", "5.24x", "587.2 (21.4% of the step)",
// "353 / 352"};
// empty when there is no such row.
std::vector<std::string> table_row(const std::string& output, int processes) {
  std::istringstream lines(output);
  std::string line;
  const std::string start = fmt::format("| {} x ", processes);
  while (std::getline(lines, line)) {
    if (line.rfind(start, 0) != 0) continue;
    std::vector<std::string> cells;
    std::istringstream fields(line.substr(1));
    std::string cell;
    while (std::getline(fields, cell, '|')) {
      const auto first = cell.find_first_not_of(' '), last = cell.find_last_not_of(' ');
      cells.push_back(first == std::string::npos ? "" : cell.substr(first, last - first + 1));
    }
    return cells;
  }
  return {};
}

const char* kSmall =
    "bench --backbone mobilefacenet --set embedding_size=64 --head-set out_features=10 --batch-size 8 "
    "--iterations 2 --warmup 1";

}  // namespace

TEST(BenchDataParallel, TableHasARowPerProcessCount) {
  const auto r = test::run_command(fmt::format("timeout 300 {} {} --processes 1,2", test::admis_exe(), kSmall));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("machine: "));
  EXPECT_THAT(r.output, ::testing::HasSubstr("| processes x threads | images/s | speed-up vs 1 process |"));
  for (const int processes : {1, 2}) {
    const auto row = table_row(r.output, processes);
    ASSERT_EQ(row.size(), 5u) << "no row for " << processes << " process(es) in\n" << r.output;
    const int threads = std::stoi(row[0].substr(row[0].find('x') + 1));
    EXPECT_GE(threads, 1) << row[0];
    EXPECT_GT(std::stod(row[1]), 0) << "images/s of " << processes << " process(es): " << row[1];
    EXPECT_GT(std::stod(row[2]), 0) << "speed-up of " << processes << " process(es): " << row[2];
    // Peak resident memory: rank 0's, and with several processes the others' largest.
    EXPECT_GT(std::stod(row[4]), 0) << row[4];
    if (processes == 1) {
      EXPECT_EQ(row[2], "1.00x");
      EXPECT_EQ(row[3], "-");  // nothing to all-reduce in one process
      EXPECT_EQ(row[4].find('/'), std::string::npos) << row[4];
    } else {
      EXPECT_GE(std::stod(row[3]), 0) << "all-reduce ms/step: " << row[3];
      EXPECT_THAT(row[3], ::testing::HasSubstr("% of the step"));
      EXPECT_GT(std::stod(row[4].substr(row[4].find('/') + 1)), 0) << row[4];
    }
  }
}

TEST(BenchDataParallel, RejectsABadProcessList) {
  for (const char* list : {"0", "a", "1,", "2,,1"}) {
    const auto r = test::run_command(fmt::format("timeout 60 {} {} --processes '{}'", test::admis_exe(), kSmall, list));
    EXPECT_NE(r.status, 0) << list << ": " << r.output;
    EXPECT_THAT(r.output, ::testing::HasSubstr(fmt::format(
                              "--processes must be a comma-separated list of process counts, each at least 1 "
                              "(e.g. --processes 1,2); got '{}'",
                              list)));
  }
}

// A run that fails (here the backbone refuses its settings, in the launched worker) stops
// the benchmark with an error naming --processes and showing the worker's own message.
TEST(BenchDataParallel, AFailedRunNamesTheProcessCountAndShowsItsError) {
  const auto r = test::run_command(
      fmt::format("timeout 120 {} bench --backbone mobilefacenet --set embedding_size=0 --batch-size 8 --processes 2",
                  test::admis_exe()));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("--processes 2: the run with 2 process(es) failed"));
  EXPECT_THAT(r.output, ::testing::HasSubstr("embedding_size"));
}

// The same with synchronised batch norm: the launched runs attach it (their header says so)
// and a batch smaller than the processes is refused by the workers, named.
TEST(BenchDataParallel, SynchronisedBatchNorm) {
  auto r = test::run_command(
      fmt::format("timeout 300 {} {} --processes 2 --sync-batch-norm", test::admis_exe(), kSmall));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("global batch 8, synchronised batch norm; one admis launch per row"));
  EXPECT_EQ(table_row(r.output, 2).size(), 5u) << r.output;
  r = test::run_command(fmt::format("timeout 120 {} bench --backbone mobilefacenet --set embedding_size=64 "
                                    "--head-set out_features=10 --batch-size 1 --processes 2 --sync-batch-norm",
                                    test::admis_exe()));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("--sync-batch-norm needs a --batch-size of at least the 2 processes"));
}

// The class-sharded head: each launched run splits the classifier (its header says so),
// and a head without a sharded form is refused by name in the workers.
TEST(BenchDataParallel, ClassShardedHead) {
  auto r = test::run_command(fmt::format("timeout 300 {} {} --processes 2 --shard-head", test::admis_exe(), kSmall));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("global batch 8, class-sharded head; one admis launch per row"));
  EXPECT_EQ(table_row(r.output, 2).size(), 5u) << r.output;
  r = test::run_command(fmt::format("timeout 120 {} bench --backbone mobilefacenet --set embedding_size=64 --head "
                                    "elastic-arcface --head-set out_features=10 --batch-size 4 --processes 2 "
                                    "--shard-head",
                                    test::admis_exe()));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("head/elastic-arcface has no class-sharded form; --shard-head works "
                                             "with head arcface, cosface, curricularface"));
}
