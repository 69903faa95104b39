// The training data loader: order, determinism across worker counts, decoding, value
// range, bounded prefetch, errors.
#include <algorithm>
#include <numeric>

#include "admis/host/data_loader.h"
#include "support/support.h"
#include "toy.h"

using namespace admis;
using namespace admis::host;

namespace {

std::vector<Batch> epoch_batches(const DatasetReader& reader, int workers, std::int64_t epoch, std::int64_t batch,
                                 test::ToyFlip* flip) {
  LoaderOptions o;
  o.batch_size = batch;
  o.workers = workers;
  o.prefetch_batches = 2;
  o.seed = 5;
  std::vector<Augmenter*> augs;
  if (flip) augs.push_back(flip);
  DataLoader loader(reader, augs, o);
  loader.start_epoch(epoch);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  EXPECT_EQ(static_cast<std::int64_t>(out.size()), loader.batches_per_epoch());
  return out;
}

}  // namespace

TEST(EpochPermutation, IsAPermutationFixedBySeedAndEpoch) {
  auto a = epoch_permutation(1000, 7, 3);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> iota(1000);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  EXPECT_EQ(a, epoch_permutation(1000, 7, 3));
  EXPECT_NE(a, epoch_permutation(1000, 7, 4));
  EXPECT_NE(a, epoch_permutation(1000, 8, 3));
  EXPECT_NE(a, iota);
}

TEST(DataLoader, BatchesDoNotDependOnTheNumberOfWorkers) {
  test::ToyReader reader(6, 10);  // 60 samples: 4 batches of 16, the last one short
  test::ToyFlip flip;
  auto serial = epoch_batches(reader, 0, 1, 16, &flip);
  ASSERT_EQ(serial.size(), 4u);
  EXPECT_EQ(serial.back().images.size(0), 60 - 3 * 16);
  for (int workers : {1, 3}) {
    auto parallel = epoch_batches(reader, workers, 1, 16, &flip);
    ASSERT_EQ(parallel.size(), serial.size());
    for (std::size_t i = 0; i < serial.size(); ++i) {
      EXPECT_EQ(parallel[i].index, static_cast<std::int64_t>(i));
      EXPECT_TRUE(torch::equal(parallel[i].images, serial[i].images)) << "workers " << workers << " batch " << i;
      EXPECT_TRUE(torch::equal(parallel[i].labels, serial[i].labels));
    }
  }
  // Another epoch visits another order, with other flips.
  auto next_epoch = epoch_batches(reader, 2, 2, 16, &flip);
  EXPECT_FALSE(torch::equal(next_epoch[0].labels, serial[0].labels) &&
               torch::equal(next_epoch[0].images, serial[0].images));
}

TEST(DataLoader, BatchHoldsTheEpochOrderDecodedAndScaledToPlusMinusOne) {
  test::ToyReader reader(6, 10);
  auto batches = epoch_batches(reader, 2, 0, 16, nullptr);
  const auto order = epoch_permutation(60, 5, 0);
  for (std::int64_t i = 0; i < 16; ++i) {
    const std::int64_t index = order[static_cast<std::size_t>(i)];
    Sample s = reader.read(index);
    EXPECT_EQ(batches[0].labels[i].item<std::int64_t>(), s.label);
    // Decoded PNG (index % 3 == 0) and raw samples both equal the pixels / 127.5 - 1.
    torch::Tensor pixels = s.image;
    if (!pixels.defined()) {
      EXPECT_EQ(index % 3, 0);
      cv::Mat bgr = cv::imdecode(cv::Mat(1, static_cast<int>(s.encoded.size()), CV_8UC1, s.encoded.data()),
                                 cv::IMREAD_COLOR);
      cv::Mat rgb;
      cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
      pixels = torch::from_blob(rgb.data, {112, 112, 3}, torch::kUInt8).clone();
    }
    auto expected = pixels.permute({2, 0, 1}).to(torch::kFloat32) / 255.0 * 2 - 1;
    EXPECT_TRUE(test::all_close(batches[0].images[i], expected, 1e-6)) << "sample " << index;
  }
  EXPECT_GE(batches[0].images.min().item<float>(), -1.0f);
  EXPECT_LE(batches[0].images.max().item<float>(), 1.0f);
  EXPECT_EQ(batches[0].images.sizes(), torch::IntArrayRef({16, 3, 112, 112}));
}

TEST(DataLoader, ResumesWithinAnEpochAtTheSameBatches) {
  test::ToyReader reader(6, 10);
  test::ToyFlip flip;
  auto all = epoch_batches(reader, 2, 3, 16, &flip);
  LoaderOptions o;
  o.batch_size = 16;
  o.workers = 2;
  o.seed = 5;
  DataLoader loader(reader, {&flip}, o);
  loader.start_epoch(3, 2);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.index, 2);
  EXPECT_TRUE(torch::equal(b.images, all[2].images));
}

class FailingReader : public test::ToyReader {
 public:
  Sample read(std::int64_t index) const override {
    Sample s = test::ToyReader::read(index);
    if (index == 13) {
      s.image = torch::Tensor();
      s.encoded = "not an image";
    }
    return s;
  }
};

TEST(DataLoader, WorkerErrorsReachTheTrainingLoopNamingTheSample) {
  FailingReader reader;
  LoaderOptions o;
  o.batch_size = 8;
  o.workers = 2;
  DataLoader loader(reader, {}, o);
  loader.start_epoch(0);
  const std::string message = test::error_of([&] {
    Batch b;
    while (loader.next(b)) {
    }
  });
  EXPECT_THAT(message, ::testing::HasSubstr("sample 13"));
  EXPECT_THAT(message, ::testing::HasSubstr("cannot decode"));
}

class SmallReader : public test::ToyReader {
 public:
  Sample read(std::int64_t index) const override {
    Sample s = test::ToyReader::read(index);
    s.encoded.clear();
    s.image = torch::zeros({96, 96, 3}, torch::kUInt8);
    return s;
  }
};

TEST(DataLoader, WrongImageSizeIsAnErrorNamingBothSizes) {
  SmallReader reader;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  std::int64_t label = 0;
  const std::string message = test::error_of([&] { load_sample(reader, 4, {}, gen, 112, &label); });
  EXPECT_THAT(message, ::testing::HasSubstr("96x96"));
  EXPECT_THAT(message, ::testing::HasSubstr("112x112"));
  EXPECT_THAT(message, ::testing::HasSubstr("sample 4"));
}
