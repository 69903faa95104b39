#pragma once
// Identity-conditioned diffusion training as IDiff-Face / ADMIS train their LDM
// (generative_model_training/main.py, diffusion/ddpm.py forward): images resized to
// image_size, randomly flipped, encoded by the codec; t ~ U{0..T-1}, eps ~ N(0, I),
// x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; loss = MSE(eps, eps_theta(x_t, t, c, mask))
// with a per-sample context dropout mask; Adam, cosine annealing with warm restarts
// stepped every step, an EMA of the weights; checkpoints that resume bit for bit, and the
// released checkpoint layout written at the configured steps.

#include <torch/torch.h>

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "admis/host/generation.h"
#include "admis/sdk/kinds.h"

namespace admis::host {

class Distributed;  // distributed.h

struct GeneratorTrainOptions {
  std::int64_t steps = 900000;
  std::int64_t batch_size = 64;
  std::int64_t image_size = 128;   // images are resized to this before the augmenters
  double lr = 1e-4;
  std::int64_t t_0 = 10000, t_mult = 2;  // CosineAnnealingWarmRestarts; t_0 = 0 keeps lr constant
  double eta_min = 0;
  double context_dropout = 0.25;    // probability that a sample's context is replaced by the empty context
  EmaOptions ema;
  double grad_clip = 0;             // max global L2 norm of the gradients; 0: off
  // "32": float32. "16": float16 autocast with dynamic loss scaling (CUDA only; the reference
  // trains with Lightning's precision 16). "bf16": bfloat16 autocast (CPU or CUDA), no scaling.
  std::string precision = "32";
  std::vector<std::int64_t> checkpoint_steps;  // steps at which the released-layout .ckpt files are written
  std::int64_t save_every = 1000;   // steps between resumable checkpoints (the last step is always saved)
  std::int64_t sample_every = 0;    // steps between preview grids; 0: only at the end
  std::int64_t preview_count = 4;
  int workers = 2;
  int prefetch_batches = 4;
  std::uint64_t seed = 0;
  bool resume = true;
  // A checkpoints folder written by the reference code (or by admis in its layout) to continue
  // from when this run has no checkpoint of its own: optimization.ckpt, model_<N>.ckpt,
  // ema_averaged_model_<N>.ckpt (or the unnumbered names the reference restores).
  std::string resume_from_reference;
  std::int64_t log_every = 50;
  std::ostream* progress = nullptr;
  // Data parallelism, as in recognition training: the process group (null: world(), from
  // the environment); batch_size stays the global batch, each rank taking a contiguous
  // share; only rank 0 writes files, previews and progress.
  std::shared_ptr<Distributed> distributed;
  std::int64_t bucket_bytes = 25 * 1024 * 1024;  // gradient all-reduce bucket size
};

struct GeneratorTrainSummary {
  std::int64_t start_step = 0;
  std::int64_t steps = 0;          // optimizer steps taken in this call
  double first_loss = 0;           // mean over the first logging window of this call
  double last_loss = 0;            // mean over the last logging window
  double steps_per_second = 0;
  std::string events_file;
  int world_size = 1;
  double allreduce_wait_seconds = 0;  // per step: gradient communication backward did not hide
};

// Trains `denoiser` on the open `reader` (images through the image `augmenters`, e.g.
// flip, then scaled to [-1,1] and encoded by `codec`). `contexts` holds one row per reader sample (row i
// for sample i), or is undefined for an unconditional model. `preview` (may be null) samples
// the preview grids with the EMA weights. With several ranks every rank calls this with the
// same options: rank 0's initial weights are broadcast, each rank encodes its share of every
// batch, the step's timesteps, noise and context dropout are drawn for the whole batch and
// sliced, gradients are averaged (GradientReducer), so every rank keeps the same weights and
// EMA; a checkpoint resumes at any world size. Writes to `output_dir` (rank 0 only):
//   checkpoints/step-<N>/{model,ema,optimizer}.safetensors   resumable state (folder renamed into place)
//   checkpoints/ema_averaged_model_<N>.ckpt, model_<N>.ckpt, optimization.ckpt
//                                   the reference's layout, at checkpoint_steps and at the end
//   denoiser.safetensors (EMA weights, the module's keys), denoiser_raw.safetensors
//   metrics.csv, events.out.tfevents.*, samples/sample_<step>.png
GeneratorTrainSummary train_generator(Denoiser& denoiser, Codec& codec, const Scheduler& scheduler,
                                      const DatasetReader& reader, const std::vector<Augmenter*>& augmenters,
                                      const torch::Tensor& contexts, const Scheduler* preview, const GeneratorTrainOptions& options,
                                      const std::string& output_dir);

}  // namespace admis::host
