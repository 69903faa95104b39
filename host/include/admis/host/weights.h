#pragma once
// Weights I/O: torch.save zip checkpoints (read), safetensors (read and write), strict
// loading into modules with a report by key name.

#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "admis/sdk/host.h"

namespace admis::host {

// torch.save zip archive (.pt/.pth/.ckpt). Accepts an OrderedDict or plain dict state
// dict, or a dict whose 'state_dict' entry is one (other entries are ignored); nested
// dicts are flattened with '.' joins. Legacy (pre-1.6) files are refused with an error
// telling how to convert them.
StateDict read_torch_save(const std::string& path);

StateDict read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);
// Atomic: writes PATH.tmp-<pid> and renames it over PATH.
void write_safetensors(const StateDict& tensors, const std::string& path,
                       const std::map<std::string, std::string>& metadata = {});

// Dispatches on the file's content (zip / safetensors header / legacy pickle).
StateDict read_weights(const std::string& path);

// The module's parameters and buffers by dotted name (as state_dict() in Python).
StateDict module_state_dict(const torch::nn::Module& module);
// The same, detached, contiguous and on the CPU, for writing checkpoints (CPU tensors are
// not copied: they share storage with the module).
StateDict cpu_state_dict(const torch::nn::Module& module);
StateDict cpu_copy(const StateDict& tensors);

// Copies `weights` into `module`, converting dtype and device. With options.strict, throws
// admis::Error naming `source` and listing every missing / unexpected / mismatched key.
LoadReport load_state_dict(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options,
                           const std::string& source);

// `admis weights inspect`: keys, dtypes, shapes, and total parameter count.
void inspect_weights(const std::string& path, std::ostream& out);
// `admis weights convert`: any readable format -> safetensors, stripping prefixes.
void convert_weights(const std::string& in, const std::string& out, const std::vector<std::string>& strip_prefixes);

}  // namespace admis::host

// ---- torch.save writer (host/src/weights/torch_save_writer.cpp) --------------------------
// Checkpoints that PyTorch >= 1.6 reads with torch.load(path, map_location='cpu'), written as
// PyTorch 1.13's torch.save does: a zip of data.pkl (pickle protocol 2, tensors rebuilt by
// torch._utils._rebuild_tensor_v2), one record per storage (shared storages written once,
// CUDA storages copied to the CPU first) and a version record.
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace admis::host {

// A Python value as torch.save pickles it: None, bool, int (64-bit), float, str, tensor,
// list, tuple, and dict (plain or collections.OrderedDict, insertion order kept; keys str,
// int, bool, float, None or tuples of these). Enough for a state dict and for a training
// checkpoint such as {'global_step': 100, 'optimizer': {'state': {0: {'exp_avg': t}},
// 'param_groups': [{'lr': 1e-4, 'betas': (0.9, 0.999), 'params': [0]}]}}.
class TorchSaveObject {
 public:
  enum class Type { None, Bool, Int, Float, String, Tensor, List, Tuple, Dict };
  using Entry = std::pair<TorchSaveObject, TorchSaveObject>;

  TorchSaveObject() = default;  // None
  TorchSaveObject(std::nullptr_t) {}
  TorchSaveObject(bool value);
  template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  TorchSaveObject(T value) : TorchSaveObject(IntTag{}, to_int64(value)) {}
  TorchSaveObject(double value);
  TorchSaveObject(const char* text);
  TorchSaveObject(std::string text);
  TorchSaveObject(torch::Tensor tensor);

  static TorchSaveObject list(std::vector<TorchSaveObject> items = {});
  static TorchSaveObject tuple(std::vector<TorchSaveObject> items = {});
  static TorchSaveObject dict();          // {}
  static TorchSaveObject ordered_dict();  // collections.OrderedDict(), as state_dict() returns

  // dict[key] = value: replaces the value of an existing key in place (keys compare as in
  // Python: 1, 1.0 and True are one key), otherwise appends. Throws admis::Error when this
  // is not a dict or the key is unhashable (list, dict, tensor).
  TorchSaveObject& set(TorchSaveObject key, TorchSaveObject value);
  // list.append(value); throws admis::Error when this is not a list.
  TorchSaveObject& append(TorchSaveObject value);
  // The value under `key` in a dict; nullptr when absent.
  const TorchSaveObject* find(const TorchSaveObject& key) const;

  Type type() const { return type_; }
  bool is_ordered_dict() const { return ordered_; }
  bool boolean() const { return boolean_; }
  std::int64_t integer() const { return integer_; }
  double real() const { return real_; }
  const std::string& text() const { return text_; }
  const torch::Tensor& tensor() const { return tensor_; }
  const std::vector<TorchSaveObject>& items() const { return items_; }  // List, Tuple
  const std::vector<Entry>& entries() const { return entries_; }        // Dict

 private:
  struct IntTag {};
  TorchSaveObject(IntTag, std::int64_t value);
  template <class T>
  static std::int64_t to_int64(T value) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(std::int64_t)) {
      if (value > static_cast<T>(INT64_MAX)) throw_int_overflow();
    }
    return static_cast<std::int64_t>(value);
  }
  [[noreturn]] static void throw_int_overflow();

  Type type_ = Type::None;
  bool ordered_ = false;
  bool boolean_ = false;
  std::int64_t integer_ = 0;
  double real_ = 0.0;
  std::string text_;
  torch::Tensor tensor_;
  std::vector<TorchSaveObject> items_;
  std::vector<Entry> entries_;
};

// Writes `object` to `path` atomically (PATH.tmp-<pid> renamed over PATH). Tensors are
// saved with requires_grad=False and their own storage offset and strides; every storage
// is written whole, once, little-endian, from the CPU (location 'cpu'). The archive's top
// folder is 'archive' (as torch.save names it for a file object). Dtypes: float32/16/64,
// bfloat16, int64/32/16/8, uint8, bool, complex64/128. Throws admis::Error naming the file
// (and the entry, dotted) on bad input or I/O failure; a failed write leaves `path` as it was.
void write_torch_save(const TorchSaveObject& object, const std::string& path);

// A collections.OrderedDict of tensors, as torch.save(module.state_dict(), path) writes it:
// in the map's (sorted) key order, or in the given order (e.g. module registration order).
void write_state_dict_torch_save(const StateDict& tensors, const std::string& path);
void write_state_dict_torch_save(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                 const std::string& path);

}  // namespace admis::host
