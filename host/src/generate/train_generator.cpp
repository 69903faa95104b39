// Identity-conditioned diffusion training: see train_generator.h.
#include "admis/host/train_generator.h"

#include <ATen/autocast_mode.h>
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <limits>
#include <fstream>
#include <ostream>
#include <sstream>

#include "admis/host/data_loader.h"
#include "admis/host/distributed.h"
#include "admis/host/distributed_reducer.h"
#include "admis/host/event_writer.h"
#include "admis/host/manifest.h"
#include "admis/host/runtime.h"
#include "admis/host/weights.h"
#include "admis/host/text.h"
#include "admis/host/train_recognition.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

constexpr const char* kWho = "train_generator";

// Autocast for the forward pass: float16 on CUDA ("16"), bfloat16 on the CPU or CUDA ("bf16").
class AutocastGuard {
 public:
  AutocastGuard(const std::string& precision, const torch::Device& device)
      : cuda_(device.is_cuda()), active_(precision != "32") {
    if (!active_) return;
    const auto dtype = precision == "16" ? at::kHalf : at::kBFloat16;
    if (cuda_) {
      at::autocast::set_autocast_gpu_dtype(dtype);
      at::autocast::set_enabled(true);
    } else {
      at::autocast::set_autocast_cpu_dtype(dtype);
      at::autocast::set_cpu_enabled(true);
    }
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (cuda_) at::autocast::set_enabled(false);
    else at::autocast::set_cpu_enabled(false);
    at::autocast::clear_cache();
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool cuda_, active_;
};

// Copies `weights` into the module's parameters and buffers, returning what was there.
StateDict swap_weights(torch::nn::Module& module, const StateDict& weights) {
  torch::NoGradGuard no_grad;
  StateDict previous;
  for (auto& p : module.named_parameters()) {
    previous[p.key()] = p.value().detach().clone();
    p.value().copy_(weights.at(p.key()));
  }
  for (auto& b : module.named_buffers()) {
    previous[b.key()] = b.value().detach().clone();
    b.value().copy_(weights.at(b.key()));
  }
  return previous;
}

// The reference's sample grid, reduced to what identifies progress: one row of samples
// drawn with the EMA weights for the first contexts, one row of the real images they
// belong to.
void write_preview(Denoiser& denoiser, Codec& codec, const Scheduler& scheduler, const ExponentialMovingAverage& ema,
                   const torch::Tensor& real_images, const torch::Tensor& contexts, std::uint64_t seed,
                   const std::string& path) {
  torch::Tensor latents_shape;
  {
    torch::InferenceMode guard;
    latents_shape = codec.encode(real_images);
  }
  auto generator = at::make_generator<at::CPUGeneratorImpl>(mix_seed(seed, 0x70726576ULL /* "prev" */));
  const torch::Tensor x_T =
      at::randn(latents_shape.sizes(), generator, torch::TensorOptions(torch::kFloat32)).to(real_images.device());
  const StateDict raw = swap_weights(denoiser.module(), ema.averaged());
  torch::Tensor samples;
  try {
    const torch::Tensor latents = sample_reverse(denoiser, scheduler, x_T, contexts, 1.0, generator);
    torch::InferenceMode guard;
    samples = codec.decode(latents);
  } catch (...) {
    swap_weights(denoiser.module(), raw);
    throw;
  }
  swap_weights(denoiser.module(), raw);
  const torch::Tensor grid = torch::cat({samples.to(torch::kCPU), real_images.to(torch::kCPU)}).add(1).div(2).clamp(0, 1);
  save_image_grid(grid, real_images.size(0), path);
}

// The reference's checkpoint files (main.py save_checkpoint): the EMA and the raw
// DenoisingDiffusionProbabilisticModel state dicts (its schedule buffers, then the UNet
// under 'eps_model.') and optimization.ckpt with torch.optim.Adam's and
// CosineAnnealingWarmRestarts' state dicts, so the reference code can load and resume them.
void save_reference_checkpoint(Denoiser& denoiser, const ExponentialMovingAverage& ema, const Adam& optimizer,
                               const CosineWarmRestarts& lr_schedule, const Scheduler& scheduler, std::int64_t step,
                               std::int64_t epoch, const std::string& output_dir) {
  const fs::path dir = fs::path(output_dir) / "checkpoints";
  fs::create_directories(dir);
  const StateDict buffers = ddpm_schedule_buffers(scheduler.betas());
  auto ddpm_state = [&](const StateDict& unet) {
    std::vector<std::pair<std::string, torch::Tensor>> ordered;
    for (const char* key : {"betas", "alphas", "sigmas", "sqrt_alphas_inv", "alpha_bars", "sqrt_alpha_bars",
                            "sqrt_one_minus_alpha_bars", "one_minus_alphas_over_sqrt_one_minus_alpha_bars"})
      ordered.emplace_back(key, buffers.at(key));
    for (const auto& p : denoiser.module().named_parameters()) ordered.emplace_back("eps_model." + p.key(), unet.at(p.key()));
    for (const auto& b : denoiser.module().named_buffers()) ordered.emplace_back("eps_model." + b.key(), unet.at(b.key()));
    return ordered;
  };
  write_state_dict_torch_save(ddpm_state(cpu_copy(ema.averaged())),
                              (dir / fmt::format("ema_averaged_model_{}.ckpt", step)).string());
  write_state_dict_torch_save(ddpm_state(cpu_state_dict(denoiser.module())),
                              (dir / fmt::format("model_{}.ckpt", step)).string());

  const StateDict adam = optimizer.state();
  TorchSaveObject state = TorchSaveObject::dict();
  TorchSaveObject indices = TorchSaveObject::list();
  const auto& params = optimizer.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    indices.append(static_cast<std::int64_t>(i));
    auto m = adam.find("exp_avg." + params[i].first);
    if (m == adam.end()) continue;
    TorchSaveObject entry = TorchSaveObject::dict();
    entry.set("step", torch::tensor(static_cast<float>(adam.at("step." + params[i].first).item<std::int64_t>())));
    entry.set("exp_avg", m->second);
    entry.set("exp_avg_sq", adam.at("exp_avg_sq." + params[i].first));
    state.set(static_cast<std::int64_t>(i), entry);
  }
  const double lr = lr_schedule.at(step);
  TorchSaveObject group = TorchSaveObject::dict();
  group.set("lr", lr);
  group.set("betas", TorchSaveObject::tuple({optimizer.beta1(), optimizer.beta2()}));
  group.set("eps", optimizer.eps());
  group.set("weight_decay", 0);
  group.set("amsgrad", false);
  group.set("maximize", false);
  group.set("foreach", nullptr);
  group.set("capturable", false);
  group.set("differentiable", false);
  group.set("fused", false);
  group.set("initial_lr", lr_schedule.base_lr);
  group.set("params", indices);
  TorchSaveObject optimizer_state = TorchSaveObject::dict();
  optimizer_state.set("state", state);
  optimizer_state.set("param_groups", TorchSaveObject::list({group}));

  std::int64_t t_cur = 0, t_i = 0;
  lr_schedule.position(step, t_cur, t_i);
  TorchSaveObject scheduler_state = TorchSaveObject::dict();
  scheduler_state.set("T_0", lr_schedule.t_0);
  scheduler_state.set("T_i", t_i);
  scheduler_state.set("T_mult", lr_schedule.t_mult);
  scheduler_state.set("eta_min", lr_schedule.eta_min);
  scheduler_state.set("T_cur", t_cur);
  scheduler_state.set("base_lrs", TorchSaveObject::list({lr_schedule.base_lr}));
  scheduler_state.set("last_epoch", step);
  scheduler_state.set("_step_count", step + 1);
  scheduler_state.set("verbose", false);
  scheduler_state.set("_get_lr_called_within_step", false);
  scheduler_state.set("_last_lr", TorchSaveObject::list({lr}));

  TorchSaveObject checkpoint = TorchSaveObject::dict();
  checkpoint.set("global_step", step);
  checkpoint.set("epoch", epoch);
  checkpoint.set("optimizer", optimizer_state);
  checkpoint.set("lr_scheduler", scheduler_state);
  write_torch_save(checkpoint, (dir / "optimization.ckpt").string());
}

// Continues a run of the reference code: <dir>/optimization.ckpt (Adam's state by parameter
// index; its step is the global step), model_<step>.ckpt or model.ckpt (the raw weights) and
// ema_averaged_model_<step>.ckpt or ema_averaged_model.ckpt, as main.py saves and restores them.
std::int64_t load_reference_checkpoint(const std::string& dir, Denoiser& denoiser, Adam& optimizer, StateDict& ema) {
  const fs::path folder(dir);
  const std::string optimization = (folder / "optimization.ckpt").string();
  if (!fs::is_regular_file(optimization))
    throw Error(dir, "no optimization.ckpt: give the reference run's checkpoints folder");
  const StateDict saved = read_weights(optimization);
  StateDict adam;
  std::int64_t step = -1;
  const auto& params = optimizer.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::string prefix = fmt::format("optimizer.state.{}.", i);
    auto m = saved.find(prefix + "exp_avg"), v = saved.find(prefix + "exp_avg_sq"), t = saved.find(prefix + "step");
    if (m == saved.end() || v == saved.end() || t == saved.end())
      throw Error(optimization, fmt::format("no Adam state for parameter {} ({}): not an Adam checkpoint of this model",
                                            i, params[i].first));
    const auto param_step = static_cast<std::int64_t>(t->second.item<double>());
    if (step >= 0 && param_step != step)
      throw Error(optimization, fmt::format("parameters were stepped {} and {} times", step, param_step));
    step = param_step;
    adam["exp_avg." + params[i].first] = m->second;
    adam["exp_avg_sq." + params[i].first] = v->second;
    adam["step." + params[i].first] = torch::tensor(param_step, torch::kInt64);
  }
  if (saved.count(fmt::format("optimizer.state.{}.exp_avg", params.size())))
    throw Error(optimization, fmt::format("Adam state for more than the model's {} parameters", params.size()));
  optimizer.load_state(adam, optimization);
  auto pick = [&](const std::string& stem) {
    const fs::path numbered = folder / fmt::format("{}_{}.ckpt", stem, step), plain = folder / (stem + ".ckpt");
    if (fs::is_regular_file(numbered)) return numbered.string();
    if (fs::is_regular_file(plain)) return plain.string();
    throw Error(dir, fmt::format("neither {} nor {} exists", numbered.filename().string(), plain.filename().string()));
  };
  // The DDPM wrapper's layout (main.py saves the wrapper's state dict), plus the plugin's own.
  LoadOptions wrapper;
  wrapper.strip_prefixes = {"module.", "eps_model."};
  for (const auto& [key, value] : ddpm_schedule_buffers(torch::zeros({1}))) wrapper.ignore_keys.push_back(key);
  const LoadOptions layout = with_layout(wrapper, denoiser);
  const std::string model = pick("model");
  load_state_dict(denoiser.module(), read_weights(model), layout, model);
  // The EMA weights go through a copy of the module, so they are checked as strictly.
  const std::string averaged = pick("ema_averaged_model");
  StateDict raw;  // copies: the module's tensors are about to be overwritten
  for (const auto& [k, t] : cpu_state_dict(denoiser.module())) raw[k] = t.clone();
  load_state_dict(denoiser.module(), read_weights(averaged), layout, averaged);
  for (const auto& [k, t] : cpu_state_dict(denoiser.module())) ema[k] = t.clone();
  load_state_dict(denoiser.module(), raw, LoadOptions{}, model);
  return step;
}

}  // namespace

GeneratorTrainSummary train_generator(Denoiser& denoiser, Codec& codec, const Scheduler& scheduler,
                                      const DatasetReader& reader, const std::vector<Augmenter*>& augmenters,
                                      const torch::Tensor& contexts, const Scheduler* preview,
                                      const GeneratorTrainOptions& options, const std::string& output_dir) {
  const std::int64_t dataset_size = reader.size();
  if (dataset_size == 0) throw Error(kWho, "the dataset is empty: the reader found no images to train on");
  const bool conditional = denoiser.context_size() > 0;
  if (conditional) {
    if (!contexts.defined())
      throw Error(kWho, "the denoiser is context-conditional but no contexts were given; set `contexts`");
    if (contexts.dim() != 2 || contexts.size(0) != dataset_size || contexts.size(1) != denoiser.context_size())
      throw Error(kWho, fmt::format("contexts have shape [{}], expected [{}, {}]: one embedding of the denoiser's "
                                    "context size per training image",
                                    fmt::join(contexts.sizes(), ", "), dataset_size, denoiser.context_size()));
  }
  if (options.steps < 1 || options.batch_size < 1 || options.save_every < 1 || options.log_every < 1)
    throw Error(kWho, "steps, batch_size, save_every and log_every must be at least 1");
  if (options.context_dropout < 0 || options.context_dropout > 1)
    throw Error(kWho, fmt::format("context_dropout must be in [0, 1], got {}", options.context_dropout));

  fs::create_directories(output_dir);
  torch::Device device(torch::kCPU);
  for (const auto& p : denoiser.module().parameters()) {
    device = p.device();
    break;
  }
  codec.module().eval();
  const std::int64_t T = scheduler.num_train_timesteps();
  const std::shared_ptr<Distributed> dist = options.distributed ? options.distributed : world(device);
  const bool main_rank = dist->is_main();
  std::ostream* const progress = main_rank ? options.progress : nullptr;

  LoaderOptions lo;
  lo.rank = dist->rank();
  lo.world_size = dist->world_size();
  lo.batch_size = options.batch_size;
  lo.workers = options.workers;
  lo.prefetch_batches = options.prefetch_batches;
  lo.seed = options.seed;
  lo.image_size = options.image_size;
  lo.resize = true;
  DataLoader loader(reader, augmenters, lo);
  const std::int64_t batches_per_epoch = loader.batches_per_epoch();

  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (const auto& p : denoiser.module().named_parameters())
    if (p.value().requires_grad()) named.emplace_back(p.key(), p.value());
  Adam optimizer(named);
  std::vector<torch::Tensor> parameters;
  for (const auto& [name, p] : named) parameters.push_back(p);
  const std::string precision = options.precision;
  if (precision != "32" && precision != "16" && precision != "bf16")
    throw Error(kWho, fmt::format("precision '{}': choose 32, 16 (CUDA) or bf16", precision));
  if (precision == "16" && !device.is_cuda())
    throw Error(kWho, "precision 16 (float16 autocast with loss scaling) needs a CUDA device (--device cuda); on the "
                      "CPU use bf16 or 32");
  LossScaler scaler;
  const CosineWarmRestarts lr_schedule{options.lr, options.t_0 > 0 ? options.t_0 : std::numeric_limits<std::int64_t>::max(),
                                      options.t_mult, options.eta_min};
  const std::map<std::string, std::string> identity = {{"seed", std::to_string(options.seed)},
                                                       {"batch_size", std::to_string(options.batch_size)},
                                                       {"dataset_size", std::to_string(dataset_size)},
                                                       {"precision", options.precision}};

  // Rank 0 picks the checkpoint, so all ranks continue the same one.
  std::int64_t start_step = -1;
  if (options.resume && main_rank) latest_checkpoint(output_dir, "step-", &start_step);
  start_step = rank0_value(*dist, start_step, "the checkpoint to resume from");
  std::string resume_from =
      start_step < 0 ? "" : (fs::path(output_dir) / "checkpoints" / fmt::format("step-{}", start_step)).string();
  StateDict reference_ema;
  if (resume_from.empty()) {
    start_step = 0;
    if (main_rank) fs::remove_all(fs::path(output_dir) / "checkpoints");
    if (!options.resume_from_reference.empty()) {
      start_step = load_reference_checkpoint(options.resume_from_reference, denoiser, optimizer, reference_ema);
      if (progress)
        *progress << fmt::format("[{}] continuing the reference checkpoint in {} (step {})", kWho,
                                         options.resume_from_reference, start_step)
                          << std::endl;
    }
  } else {
    const std::string model_path = (fs::path(resume_from) / "model.safetensors").string();
    const std::string state_path = (fs::path(resume_from) / "optimizer.safetensors").string();
    std::map<std::string, std::string> meta;
    const StateDict state = read_safetensors(state_path, &meta);
    for (const auto& [key, value] : identity) {
      auto it = meta.find(key);
      if (it == meta.end() || it->second != value)
        throw Error(state_path, fmt::format("this checkpoint was written with {} {}, this run has {}; resuming would "
                                            "not continue the same training (set resume: false or run with --force)",
                                            key, it == meta.end() ? "(unset)" : it->second, value));
    }
    load_state_dict(denoiser.module(), read_safetensors(model_path), LoadOptions{}, model_path);
    optimizer.load_state(state, state_path);
    if (meta.count("loss_scale"))
      scaler.restore(std::stod(meta.at("loss_scale")), std::stoll(meta.at("loss_scale_growth_tracker")));
  }
  // Every rank starts from rank 0's weights (fresh ones differ by rank's seed history); the
  // EMA, made from them and updated by identical steps, then stays identical too.
  broadcast_module(*dist, denoiser.module(), "denoiser");
  ExponentialMovingAverage ema(denoiser.module(), options.ema);
  if (!resume_from.empty()) {
    const std::string ema_path = (fs::path(resume_from) / "ema.safetensors").string();
    ema.load(read_safetensors(ema_path), ema_path);
    ema.set_optimization_step(start_step);
    if (progress)
      *progress << fmt::format("[{}] resuming from {} (step {})", kWho, resume_from, start_step) << std::endl;
  } else if (!reference_ema.empty()) {
    ema.load(reference_ema, options.resume_from_reference);
    ema.set_optimization_step(start_step);
  }
  if (start_step >= options.steps)
    throw Error(kWho, fmt::format("the checkpoint is at step {}, steps is {}: nothing left to train (raise steps)",
                                  start_step, options.steps));

  // The fixed preview batch: the first preview_count samples and their contexts.
  torch::Tensor preview_images, preview_contexts;
  if (preview && options.preview_count > 0 && main_rank) {
    const std::int64_t n = std::min(options.preview_count, dataset_size);
    std::vector<torch::Tensor> images;
    for (std::int64_t i = 0; i < n; ++i) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(mix_seed(options.seed, 0x76697321ULL, i));
      std::int64_t label = 0;
      images.push_back(load_sample(reader, i, {}, gen, options.image_size, &label, /*resize=*/true));
    }
    preview_images = torch::stack(images).to(device);
    if (conditional) preview_contexts = contexts.slice(0, 0, n).to(device);
  }
  auto save_preview = [&](std::int64_t step) {
    if (!preview_images.defined()) return;
    write_preview(denoiser, codec, *preview, ema, preview_images, preview_contexts, options.seed,
                  (fs::path(output_dir) / "samples" / fmt::format("sample_{:06d}.png", step)).string());
  };

  auto save_resumable = [&](std::int64_t step) {
    const fs::path dir = fs::path(output_dir) / "checkpoints";
    const fs::path final_dir = dir / fmt::format("step-{}", step);
    const fs::path tmp = dir / fmt::format(".step-{}.tmp-{}", step, ::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    write_safetensors(cpu_state_dict(denoiser.module()), (tmp / "model.safetensors").string());
    write_safetensors(cpu_copy(ema.averaged()), (tmp / "ema.safetensors").string());
    auto meta = identity;
    meta["step"] = std::to_string(step);
    meta["loss_scale"] = fmt::format("{:.17g}", scaler.scale());
    meta["loss_scale_growth_tracker"] = std::to_string(scaler.growth_tracker());
    write_safetensors(optimizer.state(), (tmp / "optimizer.safetensors").string(), meta);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
  };

  const std::string csv_path = (fs::path(output_dir) / "metrics.csv").string();
  const std::string csv_header = "step,epoch,loss,lr,steps_per_s,images_per_s,data_wait,eta_s\n";
  std::vector<std::string> csv_rows;
  if (!resume_from.empty() && main_rank) {  // keep the rows of the steps already done
    std::ifstream in(csv_path);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      const auto comma = line.find(',');
      if (comma != std::string::npos && std::stoll(line.substr(0, comma)) <= start_step) csv_rows.push_back(line);
    }
  }
  std::unique_ptr<EventWriter> events = main_rank ? std::make_unique<EventWriter>(output_dir) : nullptr;

  // The latent shape of one image, for drawing the noise of the whole batch on every rank
  // (also on a rank whose share of a short batch is empty).
  std::vector<std::int64_t> latent_shape;
  if (dist->active()) {
    if (options.batch_size < dist->world_size())
      throw Error(kWho, fmt::format("batch_size {} is smaller than the {} ranks: give every rank at least one image per "
                                    "step",
                                    options.batch_size, dist->world_size()));
    torch::NoGradGuard no_grad;
    latent_shape = codec.encode(torch::zeros({1, 3, options.image_size, options.image_size}, device)).sizes().vec();
    latent_shape.erase(latent_shape.begin());
  }
  GradientReducer reducer(dist, parameters, options.bucket_bytes);

  GeneratorTrainSummary summary;
  summary.start_step = start_step;
  summary.events_file = events ? events->path() : "";
  summary.world_size = dist->world_size();
  denoiser.module().train();
  using Clock = std::chrono::steady_clock;
  const auto run_start = Clock::now();
  auto window_start = run_start;
  double window_wait_start = loader.wait_seconds(), window_loss = 0;
  std::int64_t window_steps = 0, window_images = 0;
  bool first_window = true;

  std::int64_t epoch = start_step / batches_per_epoch;
  loader.start_epoch(epoch, start_step % batches_per_epoch);
  for (std::int64_t step = start_step; step < options.steps; ++step) {
    Batch batch;
    if (!loader.next(batch)) {
      loader.start_epoch(++epoch);
      if (!loader.next(batch)) throw Error(kWho, "the data loader produced no batch");
    }
    // Every draw of this step (timesteps, noise, dropout mask, the UNet's own dropout)
    // comes from a generator seeded by (seed, step): resuming reproduces the run exactly.
    // The timesteps, noise and dropout mask are drawn for the whole global batch, in the
    // order one process draws them, and each rank takes its rows: together the ranks train
    // on exactly what one process would.
    torch::manual_seed(mix_seed(options.seed, 0x67656eULL, static_cast<std::uint64_t>(step)));
    const std::int64_t n = batch.images.size(0);
    const std::int64_t global = dist->active() ? batch.global_size : n;
    const std::int64_t first = dist->active() ? rank_share(global, dist->rank(), dist->world_size()).first : 0;
    torch::Tensor x0;
    if (n > 0) {
      torch::NoGradGuard no_grad;
      x0 = codec.encode(batch.images.to(device));
      if (dist->active() && !x0.sizes().slice(1).equals(latent_shape))
        throw Error(kWho, fmt::format("the codec made latents [{}] from this batch but [{}] from one image",
                                      fmt::join(x0.sizes().slice(1), ","), fmt::join(latent_shape, ",")));
    }
    torch::Tensor context, dropout_mask;
    if (conditional) {
      context = contexts.index_select(0, batch.indices).to(device);
      if (options.context_dropout > 0)
        dropout_mask = (torch::rand({global}) < options.context_dropout).narrow(0, first, n).to(device);
    }
    const torch::Tensor t = torch::randint(0, T, {global}, torch::kInt64).narrow(0, first, n).to(device);
    std::vector<std::int64_t> noise_shape = x0.defined() ? x0.sizes().vec() : std::vector<std::int64_t>{0};
    if (dist->active()) {
      noise_shape = latent_shape;
      noise_shape.insert(noise_shape.begin(), global);
    }
    const torch::Tensor eps =
        torch::randn(noise_shape, x0.defined() ? x0.options() : torch::TensorOptions().device(device))
            .narrow(0, first, n);
    // The UNet's own dropout draws per rank: the same stream on every rank would repeat
    // rank 0's masks (PyTorch's DistributedDataParallel draws per rank as well).
    if (dist->active())
      torch::manual_seed(mix_seed(mix_seed(options.seed, 0x67656eULL, static_cast<std::uint64_t>(step)),
                                  0x72616e6bULL /* "rank" */, static_cast<std::uint64_t>(dist->rank())));
    optimizer.zero_grad();
    const double lr = lr_schedule.at(step);
    reducer.prepare();
    double step_loss = 0;  // this rank's part of the global batch's mean loss
    if (n > 0) {
      const torch::Tensor x_t = scheduler.add_noise(x0, eps, t);
      torch::Tensor predicted;
      {
        const AutocastGuard autocast(precision, device);
        predicted = denoiser.forward(x_t, t, context, dropout_mask);
      }
      if (!predicted.sizes().equals(eps.sizes()))
        throw Error(kWho, fmt::format("the denoiser returned [{}] for latents [{}]; an eps-prediction model must return "
                                      "the latent shape",
                                      fmt::join(predicted.sizes(), ","), fmt::join(eps.sizes(), ",")));
      const torch::Tensor loss = torch::mse_loss(predicted.to(torch::kFloat32), eps);
      // The reducer averages the ranks' gradients; weighting each rank's mean loss by its
      // share of the batch makes that the gradient of the whole batch's mean loss.
      const double share = static_cast<double>(n * dist->world_size()) / static_cast<double>(global);
      torch::Tensor objective = share == 1.0 ? loss : loss * share;
      // GradScaler: backward on the scaled loss; unscaled below, the step skipped on inf/NaN.
      if (precision == "16") objective = objective * scaler.scale();
      objective.backward();
      step_loss = dist->active() ? loss.item<double>() * static_cast<double>(n) / static_cast<double>(global)
                                 : loss.item<double>();
    }
    reducer.finish();
    if (precision == "16") {
      const bool finite = scaler.unscale(parameters);
      if (finite) {
        if (options.grad_clip > 0) torch::nn::utils::clip_grad_norm_(parameters, options.grad_clip);
        optimizer.step(lr);
      }
      scaler.update(finite);
    } else {
      if (options.grad_clip > 0) torch::nn::utils::clip_grad_norm_(parameters, options.grad_clip);
      optimizer.step(lr);
    }
    ema.step(denoiser.module());
    const std::int64_t done = step + 1;
    ++summary.steps;
    window_loss += step_loss;
    ++window_steps;
    window_images += global;

    if (done % options.log_every == 0 || done == options.steps) {
      if (dist->active()) {  // the ranks' parts of the window's losses
        torch::Tensor sum = torch::tensor({window_loss}, torch::kFloat64);
        dist->all_reduce_sum(sum, "the sum of the logged loss");
        window_loss = sum.item<double>();
      }
      const auto now = Clock::now();
      const double window_seconds = std::max(1e-9, std::chrono::duration<double>(now - window_start).count());
      const double elapsed = std::chrono::duration<double>(now - run_start).count();
      const double mean_loss = window_loss / static_cast<double>(window_steps);
      const double steps_per_s = static_cast<double>(window_steps) / window_seconds;
      const double images_per_s = static_cast<double>(window_images) / window_seconds;
      const double wait = std::min(1.0, (loader.wait_seconds() - window_wait_start) / window_seconds);
      const double eta = elapsed / static_cast<double>(summary.steps) * static_cast<double>(options.steps - done);
      if (progress)
        *progress << fmt::format("[{}] step {}/{} loss {:.5f} lr {:.3g} {:.2f} steps/s {:.1f} img/s "
                                         "data-wait {:.1f}% ETA {}",
                                         kWho, done, options.steps, mean_loss, lr, steps_per_s, images_per_s, 100 * wait,
                                         format_duration(eta))
                          << std::endl;
      if (main_rank) {
        csv_rows.push_back(fmt::format("{},{},{:.6f},{:.9g},{:.3f},{:.2f},{:.4f},{:.0f}", done, epoch + 1, mean_loss,
                                       lr, steps_per_s, images_per_s, wait, eta));
        write_file_atomic(csv_path, csv_header + fmt::format("{}\n", fmt::join(csv_rows, "\n")));
        const double wall = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        events->add_scalar("train/loss", static_cast<float>(mean_loss), done, wall);
        events->add_scalar("train/lr", static_cast<float>(lr), done, wall);
        events->add_scalar("train/steps_per_s", static_cast<float>(steps_per_s), done, wall);
        events->add_scalar("train/ema_decay", static_cast<float>(ema.decay(ema.optimization_step() - 1)), done, wall);
      }
      if (first_window) summary.first_loss = mean_loss;
      first_window = false;
      summary.last_loss = mean_loss;
      window_start = now;
      window_wait_start = loader.wait_seconds();
      window_loss = 0;
      window_steps = window_images = 0;
    }
    const bool previewing = options.sample_every > 0 && done % options.sample_every == 0 && done != options.steps;
    const bool reference_checkpoint = std::find(options.checkpoint_steps.begin(), options.checkpoint_steps.end(),
                                                done) != options.checkpoint_steps.end() ||
                                      done == options.steps;
    const bool resumable = done % options.save_every == 0 || done == options.steps;
    if (main_rank) {
      if (previewing) save_preview(done);
      if (reference_checkpoint)
        save_reference_checkpoint(denoiser, ema, optimizer, lr_schedule, scheduler, done, epoch, output_dir);
      if (resumable) save_resumable(done);
    }
    // Previews and large checkpoints can outlast the collectives' timeout: the other ranks
    // wait for rank 0 through the store instead.
    if (previewing || reference_checkpoint || resumable)
      dist->wait_for_all("train_generator/saved", fmt::format("rank 0 to save step {}", done));
  }

  if (main_rank) {
    write_safetensors(cpu_copy(ema.averaged()), (fs::path(output_dir) / "denoiser.safetensors").string());
    write_safetensors(cpu_state_dict(denoiser.module()), (fs::path(output_dir) / "denoiser_raw.safetensors").string());
    save_preview(options.steps);
  }
  // No rank returns before rank 0's files are complete (a caller may read them next).
  dist->wait_for_all("train_generator/end", "rank 0 to write the trained weights and preview");
  const double seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
  summary.steps_per_second = seconds > 0 ? static_cast<double>(summary.steps) / seconds : 0;
  summary.allreduce_wait_seconds = reducer.steps() > 0 ? reducer.wait_seconds() / reducer.steps() : 0;
  if (progress && dist->active())
    *progress << fmt::format("[{}] data-parallel over {} ranks: {:.2f} steps/s, {} gradient bucket(s), all-reduce "
                             "wait after backward {:.1f} ms/step",
                             kWho, dist->world_size(), summary.steps_per_second, reducer.bucket_count(),
                             1000 * summary.allreduce_wait_seconds)
              << std::endl;
  return summary;
}

}  // namespace admis::host
