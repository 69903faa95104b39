#pragma once
// The recognition training data loader: a DatasetReader read in a per-epoch permutation,
// decoded and augmented on background threads, assembled into float batches.
//
// Reproducibility: the epoch order is a permutation drawn from (seed, epoch) alone, and
// each sample's augmentation generator is seeded from (seed, epoch, dataset index), so a
// batch's contents never depend on the number of workers, on thread scheduling, or on
// whether training was resumed.

#include <torch/torch.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "admis/sdk/kinds.h"

namespace admis::host {

struct LoaderOptions {
  std::int64_t batch_size = 64;
  int workers = 2;             // background threads; 0 decodes on the calling thread
  int prefetch_batches = 4;    // batches ready ahead of the training loop (bounded queue)
  std::uint64_t seed = 0;
  std::int64_t image_size = 112;  // H == W the backbone expects
  bool drop_last = false;         // TFace keeps the last short batch
  bool resize = false;            // resize decoded images to image_size first (else a size mismatch is an error)
  // Data parallelism: batch_size is the global batch; rank `rank` of `world_size` builds
  // only its contiguous share of each (sizes differ by at most one), so the ranks' batches
  // together are exactly the single-process batch for the same seed.
  int rank = 0;
  int world_size = 1;
};

struct Batch {
  torch::Tensor images;  // [B,3,S,S] float32 in [-1,1]
  torch::Tensor labels;  // [B] int64
  torch::Tensor indices;  // [B] int64, the samples' dataset indices
  std::int64_t index = 0;  // batch number within the epoch
  std::int64_t global_size = 0;  // samples in this batch over all ranks (== images.size(0) for one rank)
};

// The [begin, end) share of `count` items that rank `rank` of `world_size` takes.
std::pair<std::int64_t, std::int64_t> rank_share(std::int64_t count, int rank, int world_size);

// A 64-bit mix of several words (splitmix64 finaliser), used for every derived seed.
std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b, std::uint64_t c = 0);
// The order in which epoch `epoch` visits [0, size): Fisher-Yates with a generator seeded
// from (seed, epoch). Identical on every platform, run and resume.
std::vector<std::int64_t> epoch_permutation(std::int64_t size, std::uint64_t seed, std::int64_t epoch);

// One sample as the network sees it: read, decoded (cv::imdecode when only `encoded` is
// set), resized to image_size if `resize` (area when shrinking, else bilinear), passed
// through the image augmenters in order with `generator`, and converted to [3,S,S]
// float32 in [-1,1] ((x/255 - 0.5) / 0.5, TFace's RGB mean and std of 0.5; an augmenter
// that already returns float32 is taken as normalised, [3,S,S] or [S,S,3]).
torch::Tensor load_sample(const DatasetReader& reader, std::int64_t index, const std::vector<Augmenter*>& augmenters,
                          at::Generator& generator, std::int64_t image_size, std::int64_t* label,
                          bool resize = false);

class DataLoader {
 public:
  // `reader` must be open; `augmenters` must be image-scoped. Both must outlive the loader.
  DataLoader(const DatasetReader& reader, std::vector<Augmenter*> augmenters, LoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  std::int64_t size() const { return size_; }
  std::int64_t batches_per_epoch() const;

  // Starts producing the batches of `epoch`, from batch `first_batch` on (resume within
  // an epoch). Stops the previous epoch's workers first.
  void start_epoch(std::int64_t epoch, std::int64_t first_batch = 0);
  // The next batch in order; false at the end of the epoch. Rethrows a worker's error.
  bool next(Batch& batch);
  // Seconds next() spent blocked waiting for a batch since construction.
  double wait_seconds() const { return wait_seconds_; }

 private:
  Batch build(std::int64_t batch_index) const;
  void worker_loop();
  void stop();

  const DatasetReader& reader_;
  std::vector<Augmenter*> augmenters_;
  LoaderOptions options_;
  std::int64_t size_ = 0;

  std::int64_t epoch_ = 0;
  std::vector<std::int64_t> order_;
  std::int64_t next_to_claim_ = 0;    // the next batch a worker may start
  std::int64_t next_to_return_ = 0;   // the next batch next() hands out
  std::int64_t end_batch_ = 0;
  std::map<std::int64_t, Batch> ready_;
  std::exception_ptr error_;
  bool stopping_ = false;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::thread> threads_;
  double wait_seconds_ = 0;
};

}  // namespace admis::host
