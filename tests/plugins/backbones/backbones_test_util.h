#pragma once
// Helpers shared by the backbone tests: creating a backbone with named parameters, its
// state by key, the parity fixtures and their tolerance.

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "support/support.h"

namespace admis::test::backbones {

using ParamMap = std::map<std::string, Value>;

inline std::shared_ptr<Backbone> make_backbone(const std::string& name, const ParamMap& params = {}) {
  return create<Backbone>(Kind::Backbone, name, params);
}

inline std::set<std::string> state_keys(Backbone& backbone) {
  std::set<std::string> keys;
  for (const auto& [key, tensor] : host::module_state_dict(backbone.module())) keys.insert(key);
  return keys;
}

inline std::set<std::string> keys_of(const StateDict& state) {
  std::set<std::string> keys;
  for (const auto& [key, tensor] : state) keys.insert(key);
  return keys;
}

inline std::vector<std::int64_t> shape_of(Backbone& backbone, const std::string& key) {
  const StateDict state = host::module_state_dict(backbone.module());
  auto it = state.find(key);
  if (it == state.end()) throw Error("test", "the backbone has no state '" + key + "'");
  return it->second.sizes().vec();
}

// A fixture's input/output file (recognition_shared.json): `input` [3,3,112,112] and the
// reference `output` [3,512].
inline StateDict fixture_io(const std::string& file) { return host::read_safetensors(parity_file(file)); }

// recognition_shared.json: max abs diff <= 1e-3 * max(1, max|output|).
inline double parity_tolerance(const torch::Tensor& expected) {
  return 1e-3 * std::max(1.0, expected.abs().max().item<double>());
}

// Loads a fixture checkpoint strictly, switches to eval mode.
inline void load_fixture_weights(Backbone& backbone, const std::string& file) {
  const std::string path = parity_file(file);
  const LoadReport report = host::load_state_dict(backbone.module(), host::read_weights(path), LoadOptions{}, path);
  if (!report.ok()) throw Error(path, "strict load reported problems");
  backbone.module().eval();
}

// Images in [-1, 1], as the backbones receive them.
inline torch::Tensor random_images(std::int64_t n, std::int64_t side) {
  return torch::rand({n, 3, side, side}) * 2 - 1;
}

}  // namespace admis::test::backbones
