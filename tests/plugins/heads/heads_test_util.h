#pragma once
// Helpers shared by the head tests: creating a head with named parameters and reading
// its state.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "support/support.h"

namespace admis::test::heads {

using ParamMap = std::map<std::string, Value>;

inline std::shared_ptr<Head> make_head(const std::string& name, ParamMap params) {
  return create<Head>(Kind::Head, name, params);
}

// The head's parameters and buffers by state-dict key.
inline std::vector<std::string> state_keys(Head& head) {
  std::vector<std::string> keys;
  for (const auto& [key, tensor] : host::module_state_dict(head.module())) keys.push_back(key);
  return keys;
}

inline torch::Tensor kernel_of(Head& head) { return host::module_state_dict(head.module()).at("kernel"); }

// The learnable tensor itself (for its gradient).
inline torch::Tensor parameter(Head& head, const std::string& name) {
  const torch::Tensor* p = head.module().named_parameters().find(name);
  if (p == nullptr) throw Error("test", "the head has no parameter '" + name + "'");
  return *p;
}

// Loads `kernel` (and keeps the rest of the head's state) strictly into the head.
inline std::shared_ptr<Head> head_with_kernel(const std::string& name, ParamMap params, const torch::Tensor& kernel) {
  params["in_features"] = Value(kernel.size(0));
  params["out_features"] = Value(kernel.size(1));
  auto head = make_head(name, params);
  StateDict state = host::module_state_dict(head->module());
  state["kernel"] = kernel;
  host::load_state_dict(head->module(), state, LoadOptions{}, "test kernel");
  return head;
}

// The TFace heads fixture (recognition_shared.json, tface_heads): embeddings [16,64],
// labels [16], kernel [64,10] and the reference outputs.
inline const torch::Tensor& tface_io(const std::string& key) {
  static const StateDict io = host::read_safetensors(parity_file("tface_heads.safetensors"));
  auto it = io.find(key);
  if (it == io.end()) throw Error("tface_heads.safetensors", "fixture has no tensor '" + key + "'");
  return it->second;
}

}  // namespace admis::test::heads
