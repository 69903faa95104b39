// Reader of torch.save zip archives (PyTorch >= 1.6).
//
// The archive holds <top>/data.pkl, a pickle of the saved object, and one record
// <top>/data/<key> per tensor storage. The pickle refers to storages by persistent id
// ('storage', storage_type, key, location, numel) and rebuilds each tensor with
// torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...). We interpret the
// pickle with our own machine (LibTorch 1.13's pickle_load turns OrderedDicts into None),
// read every storage once, and view it with the saved offset and strides.

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <unordered_map>
#include <unordered_set>

#include "admis/host/pickle.h"
#include "admis/host/weights.h"
#include "admis/sdk/error.h"
#include "weights_internal.h"

namespace admis::host {

namespace {

using pickle::Type;
using pickle::Value;
using pickle::ValuePtr;

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// torch.<Name>Storage -> the element type; UntypedStorage (torch >= 1.13 when a storage is
// saved on its own) holds bytes.
bool storage_dtype(const Value& storage_type, torch::ScalarType* dtype) {
  static const std::unordered_map<std::string, torch::ScalarType> kTypes = {
      {"FloatStorage", torch::kFloat32},    {"HalfStorage", torch::kFloat16},
      {"BFloat16Storage", torch::kBFloat16}, {"DoubleStorage", torch::kFloat64},
      {"LongStorage", torch::kInt64},       {"IntStorage", torch::kInt32},
      {"ShortStorage", torch::kInt16},      {"CharStorage", torch::kInt8},
      {"ByteStorage", torch::kUInt8},       {"BoolStorage", torch::kBool},
      {"ComplexFloatStorage", torch::kComplexFloat}, {"ComplexDoubleStorage", torch::kComplexDouble},
      {"UntypedStorage", torch::kUInt8},    {"_UntypedStorage", torch::kUInt8},
  };
  if (!storage_type.is(Type::Global)) return false;
  const auto& m = storage_type.module;
  if (m != "torch" && m != "torch.storage" && m != "torch.cuda") return false;
  auto it = kTypes.find(storage_type.name);
  if (it == kTypes.end()) return false;
  *dtype = it->second;
  return true;
}

class TorchSaveReader {
 public:
  explicit TorchSaveReader(std::string path) : path_(std::move(path)) {}

  StateDict read() {
    check_magic();
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path_);
    } catch (const c10::Error& e) {
      throw Error(path_, "not a readable torch.save zip archive (truncated or corrupt?): " +
                             first_line(e.what_without_backtrace()));
    }
    if (!reader_->hasRecord("data.pkl")) {
      throw Error(path_, "zip archive without a data.pkl record: not written by torch.save");
    }
    if (reader_->hasRecord("constants.pkl")) {
      throw Error(path_, "a TorchScript archive (torch.jit.save), not a torch.save checkpoint; in Python, "
                         "torch.save(model.state_dict(), path) and read that");
    }
    const auto [data, size] = record("data.pkl");

    pickle::Hooks hooks;
    hooks.persistent_load = [this](const ValuePtr& pid) { return load_storage(*pid); };
    hooks.call = [this](const Value& callable, const ValuePtr& args) { return call(callable, *args); };
    ValuePtr root;
    try {
      root = pickle::unpickle(data.get(), size, hooks, path_ + " (data.pkl)");
    } catch (const c10::Error& e) {
      throw Error(path_, "cannot rebuild the tensors: " + first_line(e.what_without_backtrace()));
    }
    return to_state_dict(*root);
  }

 private:
  struct Storage {
    torch::Tensor flat;  // 1-D, the storage's dtype, owning the record's memory
    bool taken = false;  // a tensor already uses `flat` itself; later views must copy
  };

  void check_magic() const {
    std::ifstream in(path_, std::ios::binary);
    if (!in) throw Error(path_, fmt::format("cannot open: {}", std::strerror(errno)));
    unsigned char head[4] = {0, 0, 0, 0};
    in.read(reinterpret_cast<char*>(head), 4);
    const auto got = in.gcount();
    if (got == 4 && head[0] == 0x80 && head[1] == 0x02 && head[2] == 0x8a && head[3] == 0x0a) {
      throw Error(path_,
                  "legacy torch.save format (PyTorch < 1.6), which is not supported. Convert it in Python: "
                  "obj = torch.load(path, map_location='cpu'); torch.save(obj, new_path) with PyTorch >= 1.6 "
                  "(zip format), then use new_path directly or turn it into safetensors with "
                  "`admis weights convert`");
    }
    if (got < 4 || !(head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4)) {
      throw Error(path_, got < 4 ? "file too short to be a torch.save archive"
                                 : "not a torch.save zip archive (no zip header at the start of the file)");
    }
  }

  std::tuple<at::DataPtr, std::size_t> record(const std::string& name) {
    try {
      return reader_->getRecord(name);
    } catch (const c10::Error& e) {
      throw Error(path_, fmt::format("cannot read record '{}' (truncated or corrupt archive?): {}", name,
                                     first_line(e.what_without_backtrace())));
    }
  }

  // ('storage', storage_type, key, location, numel). The location ('cpu', 'cuda:0', ...)
  // only says where the tensor lived when saved: everything is read onto the CPU.
  ValuePtr load_storage(const Value& pid) {
    if (!pid.is(Type::Tuple) || pid.items.size() < 5 || !pid.items[0]->is(Type::String) ||
        pid.items[0]->text != "storage") {
      throw Error("", "unexpected persistent id " + pid.describe() + " (expected ('storage', type, key, location, numel))");
    }
    torch::ScalarType dtype;
    if (!storage_dtype(*pid.items[1], &dtype)) {
      throw Error("", "unsupported storage type " + pid.items[1]->describe());
    }
    const std::string& key = pid.items[2]->as_text();
    const std::int64_t numel = pid.items[4]->as_int();

    auto it = storages_.find(key);
    if (it == storages_.end()) {
      auto [data, nbytes] = record("data/" + key);
      const auto itemsize = static_cast<std::int64_t>(c10::elementSize(dtype));
      if (numel < 0 || static_cast<std::int64_t>(nbytes) != numel * itemsize) {
        throw Error(path_, fmt::format("storage data/{} holds {} bytes but the pickle describes {} elements of {}",
                                       key, nbytes, numel, weights_detail::dtype_name(dtype)));
      }
      c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), /*allocator=*/nullptr,
                           /*resizable=*/false);
      Storage entry;
      entry.flat = torch::empty({0}, torch::TensorOptions().dtype(dtype)).set_(storage);
      it = storages_.emplace(key, std::move(entry)).first;
    } else if (it->second.flat.scalar_type() != dtype) {
      throw Error(path_, fmt::format("storage data/{} is referenced as both {} and {}", key,
                                     weights_detail::dtype_name(it->second.flat.scalar_type()),
                                     weights_detail::dtype_name(dtype)));
    }
    auto v = Value::make(Type::Storage);
    v->text = key;
    v->tensor = it->second.flat;
    return v;
  }

  ValuePtr call(const Value& callable, const Value& args) {
    const auto& m = callable.module;
    const auto& n = callable.name;
    if (m == "torch._utils" && (n == "_rebuild_tensor_v2" || n == "_rebuild_tensor")) {
      // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
      if (args.items.size() < 4) throw Error("", fmt::format("{} arguments, expected at least 4", args.items.size()));
      return Value::tensor_value(view(*args.items[0], args.items[1]->as_int(), args.items[2]->as_int_sequence(),
                                      args.items[3]->as_int_sequence()));
    }
    if (m == "torch._utils" && (n == "_rebuild_parameter" || n == "_rebuild_parameter_with_state")) {
      // (data, requires_grad, backward_hooks[, state]): a Parameter is its tensor here.
      // Data we could not rebuild (a quantized tensor, say) leaves a generic object.
      if (!args.items.empty() && args.items[0]->is(Type::Tensor)) return Value::tensor_value(args.items[0]->tensor);
    }
    if (m == "torch._tensor" && n == "_rebuild_from_type_v2") {
      // (func, new_type, args, state): tensor subclasses; rebuild the plain tensor with func.
      if (args.items.size() >= 3 && args.items[0]->is(Type::Global) && args.items[2]->is(Type::Tuple)) {
        return call(*args.items[0], *args.items[2]);
      }
    }
    return nullptr;  // everything else stays a generic object
  }

  torch::Tensor view(const Value& storage_value, std::int64_t offset, const std::vector<std::int64_t>& size,
                     const std::vector<std::int64_t>& stride) {
    if (!storage_value.is(Type::Storage)) throw Error("", "tensor storage is " + storage_value.describe());
    if (size.size() != stride.size()) {
      throw Error("", fmt::format("tensor has {} sizes but {} strides", size.size(), stride.size()));
    }
    Storage& storage = storages_.at(storage_value.text);
    const std::int64_t capacity = storage.flat.numel();
    // The last element the view touches must lie inside the storage.
    std::int64_t numel = 1;
    std::int64_t last = offset;
    bool overflow = offset < 0;
    for (std::size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0 || stride[d] < 0) overflow = true;
      std::int64_t step = 0;
      overflow = overflow || __builtin_mul_overflow(size[d], numel, &numel);
      if (size[d] > 0) {
        overflow = overflow || __builtin_mul_overflow(size[d] - 1, stride[d], &step) ||
                   __builtin_add_overflow(last, step, &last);
      }
    }
    if (overflow || (numel > 0 && last >= capacity)) {
      throw Error("", fmt::format("tensor view (offset {}, size {}, stride {}) exceeds its storage data/{} of {} elements",
                                  offset, weights_detail::shape_string(size), weights_detail::shape_string(stride),
                                  storage_value.text, capacity));
    }
    torch::Tensor t = storage.flat.as_strided(size, stride, offset);
    // A tensor that is its whole storage keeps the record's memory; views of part of a
    // storage, transposed views and second users of a shared storage get their own copy,
    // so no result keeps a larger buffer alive or aliases another entry.
    if (!storage.taken && offset == 0 && numel == capacity && t.is_contiguous()) {
      storage.taken = true;
      return t;
    }
    return t.clone(at::MemoryFormat::Contiguous);
  }

  // The saved object -> flat {dotted key: tensor}.
  StateDict to_state_dict(const Value& root) const {
    const Value* dict = &root;
    if (!is_mapping(root)) {
      if (root.is(Type::Tensor)) {
        throw Error(path_, "holds a single tensor, not a state dict (a dict of named tensors)");
      }
      if (root.is(Type::Object)) {
        throw Error(path_, fmt::format("holds a pickled Python object ({}), not a state dict; in Python save "
                                       "model.state_dict() with torch.save instead",
                                       root.qualified_name()));
      }
      throw Error(path_, "holds " + root.describe() + ", not a state dict (a dict of named tensors)");
    }
    // Training checkpoints ({'state_dict': ..., 'epoch': ..., 'optimizer': ...}): the
    // model's weights are the state_dict entry, the rest is not for us.
    for (const auto& [key, value] : root.entries) {
      if (key->is(Type::String) && key->text == "state_dict" && is_mapping(*value)) dict = value.get();
    }
    StateDict out;
    flatten(*dict, "", out);
    // One tensor object saved under two names (tied weights) comes back as one value from
    // the pickle memo; give each name its own copy so the entries stay independent.
    std::unordered_set<const c10::TensorImpl*> seen;
    for (auto& [key, tensor] : out) {
      if (!seen.insert(tensor.unsafeGetTensorImpl()).second) tensor = tensor.clone();
    }
    return out;
  }

  // dict, OrderedDict, or an object of a dict subclass that received items.
  static bool is_mapping(const Value& v) { return v.is(Type::Dict) || (v.is(Type::Object) && !v.entries.empty()); }

  void flatten(const Value& dict, const std::string& prefix, StateDict& out) const {
    for (const auto& [key_value, value] : dict.entries) {
      std::string key;
      if (key_value->is(Type::String) || key_value->is(Type::Bytes)) {
        key = key_value->text;
      } else if (key_value->is(Type::Int)) {
        key = std::to_string(key_value->integer);  // e.g. optimizer state keyed by parameter index
      } else {
        continue;
      }
      key = prefix + key;
      if (value->is(Type::Tensor)) {
        if (!out.emplace(key, value->tensor).second) {
          throw Error(path_, "two entries flatten to the same key '" + key + "'");
        }
      } else if (is_mapping(*value)) {
        flatten(*value, key + ".", out);
      }
      // Anything else (numbers, strings, argparse namespaces, lists) is not a weight.
    }
  }

  std::string path_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
  std::unordered_map<std::string, Storage> storages_;
};

}  // namespace

StateDict read_torch_save(const std::string& path) { return TorchSaveReader(path).read(); }

}  // namespace admis::host
