// admis_codecs: the bundled codecs (images [N,3,H,W] in [-1,1] <-> latents).
//   vq-f4  the LDM VQ-f4 first stage as ADMIS/IDiff-Face use it (models/autoencoder/vqgan.py
//          VQEncoderInterface / VQDecoderInterface): 128 px faces <-> 3x32x32 latents
//   pixel  the identity, for diffusion in pixel space

#include "admis/sdk/plugin.h"

#include <sstream>

#include "codecs.h"

ADMIS_PLUGIN("admis_codecs", "1.0.0") {
  admis::codecs::register_vq_f4(registry);
  admis::codecs::register_pixel(registry);
}

namespace admis::codecs {

namespace {

std::string shape_text(const torch::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace

void check_batch(const torch::Tensor& t, std::int64_t channels, std::int64_t factor, const std::string& who,
                 const std::string& what) {
  const std::string expected = "[N, " + std::to_string(channels) + ", H, W]" +
                               (factor > 1 ? " with H and W multiples of " + std::to_string(factor) : "");
  const bool ok = t.defined() && t.dim() == 4 && t.size(1) == channels && t.size(2) > 0 && t.size(3) > 0 &&
                  t.size(2) % factor == 0 && t.size(3) % factor == 0;
  if (!ok) throw Error(who, what + " must have shape " + expected + ", got " + shape_text(t));
  if (!t.is_floating_point())
    throw Error(who, what + " must be floating point, got " + std::string(c10::toString(t.scalar_type())));
  if (t.size(0) == 0) throw Error(who, what + " hold no rows (the batch is empty)");
}

}  // namespace admis::codecs
