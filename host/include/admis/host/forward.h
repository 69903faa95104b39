#pragma once
// Runs one plugin on named input tensors and returns named outputs; used by
// `admis forward`, the `forward` stage and the golden regression recorder.
//   backbone   input -> output
//   head       embeddings, labels -> logits, original_logits
//   denoiser   x, t, [context], [dropout_mask] -> output
//   codec      image -> latent   |   latent -> decoded
//   scheduler  model_output, x_t, step, [noise] -> prev_sample, pred_x0, [mean, log_variance];
//              always also betas, alpha_bars, model_timesteps

#include "admis/sdk.h"

namespace admis::host {

StateDict forward_plugin(Plugin& plugin, const StateDict& inputs, const std::string& who);

}  // namespace admis::host
