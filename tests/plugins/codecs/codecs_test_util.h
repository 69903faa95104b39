#pragma once
// Helpers shared by the codec tests: creating a codec with named parameters, the VQ-f4
// parity fixture (generative_shared.json, entry vq_f4) and its tolerance.

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "support/support.h"

namespace admis::test::codecs {

using ParamMap = std::map<std::string, Value>;

inline std::shared_ptr<Codec> make_codec(const std::string& name, const ParamMap& params = {}) {
  return create<Codec>(Kind::Codec, name, params);
}

// The fixture's ddconfig (the released one at ch = 32 and resolution 64); every other
// parameter keeps the released default.
inline ParamMap fixture_config() { return {{"ch", Value(32)}, {"resolution", Value(64)}}; }

// The fixture config with both released-format halves loaded through the plugin's own
// encoder_weights / decoder_weights parameters.
inline ParamMap fixture_config_with_weights() {
  ParamMap p = fixture_config();
  p["encoder_weights"] = Value(parity_file("vq_f4_encoder_state_dict.pt"));
  p["decoder_weights"] = Value(parity_file("vq_f4_decoder_state_dict.pt"));
  return p;
}

// image [2,3,32,32], latent [2,3,8,8], decoded and decoded_unquantized [2,3,32,32].
inline StateDict fixture_io() { return host::read_safetensors(parity_file("vq_f4_io.safetensors")); }

// generative_shared.json: max abs diff <= 1e-4 * max(1, max|value|).
inline double parity_tolerance(const torch::Tensor& expected) {
  return 1e-4 * std::max(1.0, expected.abs().max().item<double>());
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

inline std::set<std::string> state_keys(torch::nn::Module& module) {
  std::set<std::string> keys;
  for (const auto& [key, tensor] : host::module_state_dict(module)) keys.insert(key);
  return keys;
}

// Images in [-1, 1], as the codecs receive them.
inline torch::Tensor random_images(std::int64_t n, std::int64_t side) {
  return torch::rand({n, 3, side, side}) * 2 - 1;
}

}  // namespace admis::test::codecs
