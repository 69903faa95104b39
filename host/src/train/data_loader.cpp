// Background decoding and augmentation for recognition training (see data_loader.h).
#include "admis/host/data_loader.h"

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <dlfcn.h>

#include <chrono>

namespace admis::host {

std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  auto splitmix = [](std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  };
  return splitmix(splitmix(splitmix(a) ^ b) ^ c);
}

std::vector<std::int64_t> epoch_permutation(std::int64_t size, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(size));
  for (std::int64_t i = 0; i < size; ++i) order[i] = i;
  std::uint64_t state = mix_seed(seed, 0x70657266ULL /* "perm" */, static_cast<std::uint64_t>(epoch));
  auto next = [&state] {  // splitmix64 stream
    state += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  for (std::int64_t i = size - 1; i > 0; --i) {
    // Uniform j in [0, i] by rejection, so the order has no modulo bias.
    const std::uint64_t range = static_cast<std::uint64_t>(i) + 1;
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % range);
    std::uint64_t r;
    do r = next();
    while (r >= limit);
    std::swap(order[i], order[static_cast<std::size_t>(r % range)]);
  }
  return order;
}

namespace {

torch::Tensor decode_image(const std::string& encoded, std::int64_t index) {
  cv::Mat bytes(1, static_cast<int>(encoded.size()), CV_8UC1, const_cast<char*>(encoded.data()));
  cv::Mat bgr = cv::imdecode(bytes, cv::IMREAD_COLOR);
  if (bgr.empty()) throw Error(fmt::format("sample {}", index), "cannot decode the encoded image (not a JPEG/PNG?)");
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return torch::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, torch::kUInt8).clone();
}

// Bilinear resize of an [H,W,3] uint8 image; area averaging when shrinking, which is what
// PIL's antialiased bilinear (torchvision's Resize) amounts to.
torch::Tensor resize_image(const torch::Tensor& image, std::int64_t size) {
  const torch::Tensor src = image.contiguous();
  cv::Mat in(static_cast<int>(src.size(0)), static_cast<int>(src.size(1)), CV_8UC3, src.data_ptr());
  cv::Mat out;
  const bool shrinking = src.size(0) > size || src.size(1) > size;
  cv::resize(in, out, cv::Size(static_cast<int>(size), static_cast<int>(size)), 0, 0,
             shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  return torch::from_blob(out.data, {out.rows, out.cols, 3}, torch::kUInt8).clone();
}

}  // namespace

torch::Tensor load_sample(const DatasetReader& reader, std::int64_t index, const std::vector<Augmenter*>& augmenters,
                          at::Generator& generator, std::int64_t image_size, std::int64_t* label, bool resize) {
  Sample sample = reader.read(index);
  const std::string where = fmt::format("sample {} ({}/{})", index, sample.label_name, sample.name);
  torch::Tensor image = sample.image.defined() ? sample.image : decode_image(sample.encoded, index);
  if (resize && (image.size(0) != image_size || image.size(1) != image_size)) image = resize_image(image, image_size);
  if (sample.label < 0) throw Error(where, "the dataset reader gave no label");
  *label = sample.label;
  for (Augmenter* augmenter : augmenters) image = augmenter->augment_image(image, generator);

  if (image.scalar_type() == torch::kUInt8) {
    if (image.dim() != 3 || image.size(2) != 3)
      throw Error(where, fmt::format("expected an [H,W,3] uint8 RGB image, got shape [{}]", fmt::join(image.sizes(), ",")));
    image = image.permute({2, 0, 1}).to(torch::kFloat32).div_(255.0).sub_(0.5).div_(0.5);
  } else {
    if (image.dim() != 3 || (image.size(0) != 3 && image.size(2) != 3))
      throw Error(where, fmt::format("expected a [3,H,W] or [H,W,3] image, got shape [{}]", fmt::join(image.sizes(), ",")));
    if (image.size(0) != 3) image = image.permute({2, 0, 1});
    image = image.to(torch::kFloat32);
  }
  if (image.size(1) != image_size || image.size(2) != image_size)
    throw Error(where, fmt::format("image is {}x{} after augmentation, the backbone expects {}x{} (align or resize the "
                                   "dataset, or add a crop/resize augmenter)",
                                   image.size(1), image.size(2), image_size, image_size));
  return image.contiguous();
}

DataLoader::DataLoader(const DatasetReader& reader, std::vector<Augmenter*> augmenters, LoaderOptions options)
    : reader_(reader), augmenters_(std::move(augmenters)), options_(options), size_(reader.size()) {
  if (options_.batch_size < 1) throw Error("data loader", "batch_size must be at least 1");
  if (options_.world_size < 1 || options_.rank < 0 || options_.rank >= options_.world_size)
    throw Error("data loader", fmt::format("rank {} is not in a world of {}", options_.rank, options_.world_size));
  if (options_.prefetch_batches < 1) options_.prefetch_batches = 1;
  for (Augmenter* a : augmenters_)
    if (a->scope() != AugmenterScope::Image)
      throw Error("data loader", "identity-scoped augmenters edit datasets, not training batches; use them in an "
                                 "augment stage");
}

DataLoader::~DataLoader() { stop(); }

std::int64_t DataLoader::batches_per_epoch() const {
  return options_.drop_last ? size_ / options_.batch_size : (size_ + options_.batch_size - 1) / options_.batch_size;
}

std::pair<std::int64_t, std::int64_t> rank_share(std::int64_t count, int rank, int world_size) {
  const std::int64_t base = count / world_size, extra = count % world_size;
  const std::int64_t begin = rank * base + std::min<std::int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

Batch DataLoader::build(std::int64_t batch_index) const {
  const std::int64_t global_begin = batch_index * options_.batch_size;
  const std::int64_t global_end = std::min<std::int64_t>(global_begin + options_.batch_size, size_);
  const auto share = rank_share(global_end - global_begin, options_.rank, options_.world_size);
  const std::int64_t begin = global_begin + share.first, end = global_begin + share.second;
  Batch batch;
  batch.index = batch_index;
  batch.global_size = global_end - global_begin;
  batch.images = torch::empty({end - begin, 3, options_.image_size, options_.image_size});
  batch.labels = torch::empty({end - begin}, torch::kInt64);
  batch.indices = torch::empty({end - begin}, torch::kInt64);
  auto labels = batch.labels.accessor<std::int64_t, 1>();
  auto indices = batch.indices.accessor<std::int64_t, 1>();
  for (std::int64_t i = begin; i < end; ++i) {
    const std::int64_t index = order_[static_cast<std::size_t>(i)];
    // The generator depends on (seed, epoch, index) only: results are independent of
    // which thread builds the batch and of where training resumed.
    auto generator = at::make_generator<at::CPUGeneratorImpl>(
        mix_seed(options_.seed, static_cast<std::uint64_t>(epoch_), static_cast<std::uint64_t>(index)));
    std::int64_t label = 0;
    batch.images[i - begin].copy_(
        load_sample(reader_, index, augmenters_, generator, options_.image_size, &label, options_.resize));
    labels[i - begin] = label;
    indices[i - begin] = index;
  }
  return batch;
}

void DataLoader::start_epoch(std::int64_t epoch, std::int64_t first_batch) {
  stop();
  epoch_ = epoch;
  order_ = epoch_permutation(size_, options_.seed, epoch);
  next_to_claim_ = next_to_return_ = first_batch;
  end_batch_ = batches_per_epoch();
  ready_.clear();
  error_ = nullptr;
  stopping_ = false;
  for (int w = 0; w < options_.workers; ++w) threads_.emplace_back([this] { worker_loop(); });
}

namespace {

// One OpenMP thread for the tensor operations of this (decoding) thread, so that W workers
// do not each start a team of all cores against the training loop. omp_set_num_threads
// only changes the calling thread's setting, unlike at::set_num_threads, which also
// changes the process-wide default and LibTorch's shared thread pool. libgomp is loaded
// with LibTorch; looked up at run time so the host needs no OpenMP link of its own.
void single_threaded_tensor_ops() {
  using SetThreads = void (*)(int);
  static const auto set_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  if (set_threads) set_threads(1);
}

}  // namespace

void DataLoader::worker_loop() {
  single_threaded_tensor_ops();
  for (;;) {
    std::int64_t b;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Bounded prefetch: no batch further than prefetch_batches ahead of the consumer.
      changed_.wait(lock, [this] {
        return stopping_ || next_to_claim_ >= end_batch_ ||
               next_to_claim_ < next_to_return_ + options_.prefetch_batches;
      });
      if (stopping_ || next_to_claim_ >= end_batch_) return;
      b = next_to_claim_++;
    }
    try {
      Batch batch = build(b);
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.emplace(b, std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    changed_.notify_all();
  }
}

bool DataLoader::next(Batch& batch) {
  if (next_to_return_ >= end_batch_) return false;
  const auto start = std::chrono::steady_clock::now();
  if (threads_.empty()) {  // no workers: the loop waits while the batch is built here
    batch = build(next_to_return_++);
    wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return true;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return error_ || ready_.count(next_to_return_); });
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (error_) {
    auto e = error_;
    lock.unlock();
    stop();
    std::rethrow_exception(e);
  }
  auto it = ready_.find(next_to_return_);
  batch = std::move(it->second);
  ready_.erase(it);
  ++next_to_return_;
  lock.unlock();
  changed_.notify_all();
  return true;
}

void DataLoader::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

}  // namespace admis::host
