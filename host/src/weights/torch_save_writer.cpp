// Writer of torch.save zip archives, laid out as PyTorch 1.13's torch.save writes them.
//
// torch.save pickles the object with protocol 2. A tensor pickles as the call
//   torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//                                   collections.OrderedDict())    # no backward hooks
// whose `storage` is a persistent id ('storage', torch.<Type>Storage, key, location, numel):
// the storage's bytes live in the archive record data/<key>, keys "0", "1", ... given in
// order of first use, so tensors sharing a storage share the record. The archive holds
// data.pkl, then the storages sorted by key (as strings, as Python sorts them), then the
// version record PyTorchStreamWriter adds itself.

#include <caffe2/serialize/inline_container.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "admis/host/weights.h"
#include "admis/sdk/error.h"
#include "weights_internal.h"

namespace admis::host {

// ---- TorchSaveObject ---------------------------------------------------------------------

namespace {

bool is_hashable(const TorchSaveObject& v) {
  switch (v.type()) {
    case TorchSaveObject::Type::None:
    case TorchSaveObject::Type::Bool:
    case TorchSaveObject::Type::Int:
    case TorchSaveObject::Type::Float:
    case TorchSaveObject::Type::String: return true;
    case TorchSaveObject::Type::Tuple:
      return std::all_of(v.items().begin(), v.items().end(), [](const auto& item) { return is_hashable(item); });
    default: return false;
  }
}

bool numeric_value(const TorchSaveObject& v, long double* out) {
  switch (v.type()) {
    case TorchSaveObject::Type::Bool: *out = v.boolean() ? 1 : 0; return true;
    case TorchSaveObject::Type::Int: *out = static_cast<long double>(v.integer()); return true;
    case TorchSaveObject::Type::Float: *out = v.real(); return true;
    default: return false;
  }
}

// Python's key equality: 1 == 1.0 == True, tuples element-wise. (A long double holds every
// int64 exactly on x86-64 and aarch64 Linux, so numbers compare exactly, as in Python.)
bool same_key(const TorchSaveObject& a, const TorchSaveObject& b) {
  long double x, y;
  if (numeric_value(a, &x) && numeric_value(b, &y)) return x == y;
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case TorchSaveObject::Type::None: return true;
    case TorchSaveObject::Type::String: return a.text() == b.text();
    case TorchSaveObject::Type::Tuple:
      if (a.items().size() != b.items().size()) return false;
      for (std::size_t i = 0; i < a.items().size(); ++i) {
        if (!same_key(a.items()[i], b.items()[i])) return false;
      }
      return true;
    default: return false;
  }
}

const char* type_label(TorchSaveObject::Type t) {
  switch (t) {
    case TorchSaveObject::Type::None: return "None";
    case TorchSaveObject::Type::Bool: return "bool";
    case TorchSaveObject::Type::Int: return "int";
    case TorchSaveObject::Type::Float: return "float";
    case TorchSaveObject::Type::String: return "str";
    case TorchSaveObject::Type::Tensor: return "tensor";
    case TorchSaveObject::Type::List: return "list";
    case TorchSaveObject::Type::Tuple: return "tuple";
    case TorchSaveObject::Type::Dict: return "dict";
  }
  return "?";
}

// How a key appears in an entry's dotted name in error messages (as read_torch_save
// flattens it: "optimizer.state.0.exp_avg").
std::string key_label(const TorchSaveObject& key) {
  switch (key.type()) {
    case TorchSaveObject::Type::String: return key.text();
    case TorchSaveObject::Type::Int: return std::to_string(key.integer());
    case TorchSaveObject::Type::Bool: return key.boolean() ? "True" : "False";
    case TorchSaveObject::Type::Float: return fmt::format("{}", key.real());
    case TorchSaveObject::Type::None: return "None";
    default: return std::string("(") + type_label(key.type()) + ")";
  }
}

}  // namespace

TorchSaveObject::TorchSaveObject(bool value) : type_(Type::Bool), boolean_(value) {}
TorchSaveObject::TorchSaveObject(IntTag, std::int64_t value) : type_(Type::Int), integer_(value) {}
TorchSaveObject::TorchSaveObject(double value) : type_(Type::Float), real_(value) {}
TorchSaveObject::TorchSaveObject(const char* text) : type_(Type::String), text_(text) {}
TorchSaveObject::TorchSaveObject(std::string text) : type_(Type::String), text_(std::move(text)) {}
TorchSaveObject::TorchSaveObject(torch::Tensor tensor) : type_(Type::Tensor), tensor_(std::move(tensor)) {}

void TorchSaveObject::throw_int_overflow() {
  throw Error("torch.save", "integer beyond the 64-bit signed range cannot be stored");
}

TorchSaveObject TorchSaveObject::list(std::vector<TorchSaveObject> items) {
  TorchSaveObject v;
  v.type_ = Type::List;
  v.items_ = std::move(items);
  return v;
}

TorchSaveObject TorchSaveObject::tuple(std::vector<TorchSaveObject> items) {
  TorchSaveObject v;
  v.type_ = Type::Tuple;
  v.items_ = std::move(items);
  return v;
}

TorchSaveObject TorchSaveObject::dict() {
  TorchSaveObject v;
  v.type_ = Type::Dict;
  return v;
}

TorchSaveObject TorchSaveObject::ordered_dict() {
  TorchSaveObject v = dict();
  v.ordered_ = true;
  return v;
}

TorchSaveObject& TorchSaveObject::set(TorchSaveObject key, TorchSaveObject value) {
  if (type_ != Type::Dict) {
    throw Error("torch.save", fmt::format("cannot set key '{}' on a {}, only on a dict", key_label(key),
                                          type_label(type_)));
  }
  if (!is_hashable(key)) {
    throw Error("torch.save", fmt::format("a {} cannot be a dict key (keys are str, int, float, bool, None "
                                          "or tuples of these)",
                                          type_label(key.type())));
  }
  for (auto& entry : entries_) {
    if (same_key(entry.first, key)) {
      entry.second = std::move(value);  // Python keeps the first key and its position
      return *this;
    }
  }
  entries_.emplace_back(std::move(key), std::move(value));
  return *this;
}

TorchSaveObject& TorchSaveObject::append(TorchSaveObject value) {
  if (type_ != Type::List) {
    throw Error("torch.save", fmt::format("cannot append to a {}, only to a list", type_label(type_)));
  }
  items_.push_back(std::move(value));
  return *this;
}

const TorchSaveObject* TorchSaveObject::find(const TorchSaveObject& key) const {
  for (const auto& entry : entries_) {
    if (same_key(entry.first, key)) return &entry.second;
  }
  return nullptr;
}

// ---- pickling ------------------------------------------------------------------------------

namespace {

// torch.<Name>Storage for each dtype torch.save can name a typed storage for.
const char* storage_type_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "FloatStorage";
    case torch::kFloat16: return "HalfStorage";
    case torch::kBFloat16: return "BFloat16Storage";
    case torch::kFloat64: return "DoubleStorage";
    case torch::kInt64: return "LongStorage";
    case torch::kInt32: return "IntStorage";
    case torch::kInt16: return "ShortStorage";
    case torch::kInt8: return "CharStorage";
    case torch::kUInt8: return "ByteStorage";
    case torch::kBool: return "BoolStorage";
    case torch::kComplexFloat: return "ComplexFloatStorage";
    case torch::kComplexDouble: return "ComplexDoubleStorage";
    default: return nullptr;
  }
}

// Python decodes BINUNICODE as UTF-8: other bytes would make torch.load fail.
bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t extra;
    std::uint32_t code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1, code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, code = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      code = (code << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and code points beyond U+10FFFF are not UTF-8.
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMin[extra] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

// A storage to write: the whole of it, as a flat tensor of its dtype (still on its device).
struct SavedStorage {
  std::string key;
  torch::Tensor flat;
};

class Pickler {
 public:
  explicit Pickler(std::string path) : path_(std::move(path)) {}

  std::string run(const TorchSaveObject& root) {
    out_ = "\x80\x02";  // PROTO 2
    save(root, "");
    out_ += '.';  // STOP
    return std::move(out_);
  }

  std::vector<SavedStorage> take_storages() { return std::move(storages_); }

 private:
  [[noreturn]] void fail(const std::string& where, const std::string& message) const {
    throw Error(where.empty() ? path_ : path_ + " [" + where + "]", message);
  }

  void op(unsigned char code) { out_ += static_cast<char>(code); }
  void u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }

  // Globals and strings are memoised (BINPUT/BINGET) so repeated ones cost a few bytes,
  // as Python's pickler does for the objects it meets again.
  bool fetch_memo(const std::string& memo_key) {
    auto it = memo_.find(memo_key);
    if (it == memo_.end()) return false;
    if (it->second < 256) {
      op('h');  // BINGET
      op(static_cast<unsigned char>(it->second));
    } else {
      op('j');  // LONG_BINGET
      u32(it->second);
    }
    return true;
  }
  void put_memo(const std::string& memo_key) {
    const auto index = static_cast<std::uint32_t>(memo_.size());
    memo_.emplace(memo_key, index);
    if (index < 256) {
      op('q');  // BINPUT
      op(static_cast<unsigned char>(index));
    } else {
      op('r');  // LONG_BINPUT
      u32(index);
    }
  }

  void global(const std::string& module, const std::string& name) {
    const std::string memo_key = "g" + module + "\n" + name;
    if (fetch_memo(memo_key)) return;
    op('c');  // GLOBAL
    out_ += module + "\n" + name + "\n";
    put_memo(memo_key);
  }

  void string(const std::string& text, const std::string& where) {
    if (!valid_utf8(text)) fail(where, "string is not valid UTF-8, which Python cannot load");
    if (text.size() > 0xffffffffu) fail(where, "string longer than 4 GiB");
    const std::string memo_key = "s" + text;
    if (fetch_memo(memo_key)) return;
    op('X');  // BINUNICODE
    u32(static_cast<std::uint32_t>(text.size()));
    out_ += text;
    put_memo(memo_key);
  }

  // The shortest opcode Python's pickler would use for the value.
  void integer(std::int64_t v) {
    if (v >= 0 && v <= 0xff) {
      op('K');  // BININT1
      op(static_cast<unsigned char>(v));
    } else if (v >= 0 && v <= 0xffff) {
      op('M');  // BININT2
      op(static_cast<unsigned char>(v & 0xff));
      op(static_cast<unsigned char>(v >> 8));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');  // BININT
      u32(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
    } else {
      // LONG1: little-endian two's complement, without redundant sign bytes.
      unsigned char bytes[8];
      const auto u = static_cast<std::uint64_t>(v);
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(u >> (8 * i));
      int n = 8;
      while (n > 1 && ((bytes[n - 1] == 0x00 && !(bytes[n - 2] & 0x80)) ||
                       (bytes[n - 1] == 0xff && (bytes[n - 2] & 0x80)))) {
        --n;
      }
      op(0x8a);
      op(static_cast<unsigned char>(n));
      out_.append(reinterpret_cast<const char*>(bytes), n);
    }
  }

  void real(double v) {
    op('G');  // BINFLOAT: big-endian IEEE 754 double
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    for (int i = 7; i >= 0; --i) out_ += static_cast<char>((bits >> (8 * i)) & 0xff);
  }

  void int_tuple(torch::IntArrayRef values) {
    std::vector<TorchSaveObject> items(values.begin(), values.end());
    tuple(items, "");
  }

  void tuple(const std::vector<TorchSaveObject>& items, const std::string& where) {
    static constexpr unsigned char kTupleN[] = {')', 0x85, 0x86, 0x87};  // EMPTY_TUPLE, TUPLE1..3
    if (items.size() <= 3) {
      for (std::size_t i = 0; i < items.size(); ++i) save(items[i], where + "." + std::to_string(i));
      op(kTupleN[items.size()]);
      return;
    }
    op('(');  // MARK
    for (std::size_t i = 0; i < items.size(); ++i) save(items[i], where + "." + std::to_string(i));
    op('t');  // TUPLE
  }

  void save(const TorchSaveObject& v, const std::string& where) {
    using T = TorchSaveObject::Type;
    switch (v.type()) {
      case T::None: op('N'); return;
      case T::Bool: op(v.boolean() ? 0x88 : 0x89); return;  // NEWTRUE / NEWFALSE
      case T::Int: integer(v.integer()); return;
      case T::Float: real(v.real()); return;
      case T::String: string(v.text(), where); return;
      case T::Tensor: tensor(v.tensor(), where); return;
      case T::Tuple: tuple(v.items(), where); return;
      case T::List:
        op(']');  // EMPTY_LIST
        if (!v.items().empty()) {
          op('(');  // MARK
          for (std::size_t i = 0; i < v.items().size(); ++i) save(v.items()[i], where + "." + std::to_string(i));
          op('e');  // APPENDS
        }
        return;
      case T::Dict:
        if (v.is_ordered_dict()) {
          global("collections", "OrderedDict");
          op(')');
          op('R');  // OrderedDict()
        } else {
          op('}');  // EMPTY_DICT
        }
        if (!v.entries().empty()) {
          op('(');  // MARK
          for (const auto& [key, value] : v.entries()) {
            const std::string name = where.empty() ? key_label(key) : where + "." + key_label(key);
            save(key, name);
            save(value, name);
          }
          op('u');  // SETITEMS
        }
        return;
    }
  }

  // Registers the tensor's storage (once per storage) and returns its key.
  const SavedStorage& storage_of(const torch::Tensor& t, const std::string& where) {
    const c10::Storage& storage = t.storage();
    const auto itemsize = c10::elementSize(t.scalar_type());
    auto it = storage_index_.find(storage.unsafeGetStorageImpl());
    if (it != storage_index_.end()) {
      const SavedStorage& saved = storages_[it->second];
      if (saved.flat.scalar_type() != t.scalar_type()) {
        // torch.save refuses this too: one storage record has one element type.
        fail(where, fmt::format("shares its storage with another tensor of dtype {} but is {}; save a copy "
                                "(.clone()) of one of them",
                                weights_detail::dtype_name(saved.flat.scalar_type()),
                                weights_detail::dtype_name(t.scalar_type())));
      }
      return saved;
    }
    if (storage.nbytes() % itemsize != 0) {
      fail(where, fmt::format("its storage of {} bytes is not a whole number of {} elements", storage.nbytes(),
                              weights_detail::dtype_name(t.scalar_type())));
    }
    torch::Tensor flat = torch::empty({0}, torch::TensorOptions().dtype(t.scalar_type()).device(t.device()));
    flat.set_(storage);  // 1-D over the whole storage
    storage_index_.emplace(storage.unsafeGetStorageImpl(), storages_.size());
    storages_.push_back({std::to_string(storages_.size()), std::move(flat)});
    return storages_.back();
  }

  void tensor(const torch::Tensor& t, const std::string& where) {
    if (!t.defined()) fail(where, "undefined tensor");
    if (t.layout() != torch::kStrided || t.is_quantized()) {
      std::ostringstream kind;
      if (t.is_quantized()) {
        kind << "quantized";
      } else {
        kind << t.layout();  // "Sparse", "SparseCsr", "Mkldnn"
      }
      fail(where, fmt::format("a {} tensor cannot be saved; only dense tensors are supported", kind.str()));
    }
    if (!t.device().is_cpu() && !t.device().is_cuda()) {
      fail(where, fmt::format("tensor on device {} cannot be saved; move it to the CPU first", t.device().str()));
    }
    const char* storage_type = storage_type_name(t.scalar_type());
    if (!storage_type) {
      fail(where, "dtype " + weights_detail::dtype_name(t.scalar_type()) + " cannot be saved");
    }
    if (!t.has_storage()) fail(where, "tensor without storage cannot be saved");
    // A lazily conjugated (or negated) view's storage holds the unconjugated values.
    if (t.is_conj() || t.is_neg()) return tensor(t.resolve_conj().resolve_neg(), where);
    const SavedStorage& saved = storage_of(t, where);

    global("torch._utils", "_rebuild_tensor_v2");
    op('(');  // MARK: the argument tuple
    // The persistent id. Data is written from the CPU, so the location is 'cpu' whatever
    // device the tensor is on; torch.load then needs no map_location.
    op('(');
    string("storage", where);
    global("torch", storage_type);
    string(saved.key, where);
    string("cpu", where);
    integer(saved.flat.numel());
    op('t');
    op('Q');  // BINPERSID
    integer(t.storage_offset());
    int_tuple(t.sizes());
    int_tuple(t.strides());
    op(0x89);  // requires_grad=False, as state_dict() returns detached tensors
    global("collections", "OrderedDict");
    op(')');
    op('R');  // backward_hooks: OrderedDict()
    op('t');
    op('R');
  }

  std::string path_;
  std::string out_;
  std::unordered_map<std::string, std::uint32_t> memo_;
  std::unordered_map<const c10::StorageImpl*, std::size_t> storage_index_;
  std::vector<SavedStorage> storages_;
};

// PyTorchStreamWriter throws from its destructor's writeEndOfFile() when its output fails
// (which terminates the process): it writes through this function, which never reports a
// failure to it but remembers the first error for us to raise afterwards.
struct FdSink {
  int fd = -1;
  int error = 0;

  std::size_t write(const void* data, std::size_t size) {
    const char* p = static_cast<const char*>(data);
    std::size_t left = size;
    while (left > 0 && error == 0) {
      const ssize_t n = ::write(fd, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        error = errno;
        break;
      }
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    return size;
  }
};

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

void write_archive(const std::string& path, const std::string& data_pkl, std::vector<SavedStorage> storages) {
  // Python writes the storage records in sorted key order ("0", "1", "10", "2", ...).
  std::sort(storages.begin(), storages.end(), [](const auto& a, const auto& b) { return a.key < b.key; });

  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  FdSink sink;
  sink.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (sink.fd < 0) throw Error(path, fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
  bool open = true;
  try {
    // Written through a function, the archive's top folder is 'archive', as torch.save
    // names it when given a file object; torch.load does not look at the name.
    auto writer = std::make_unique<caffe2::serialize::PyTorchStreamWriter>(
        [&sink](const void* data, std::size_t size) { return sink.write(data, size); });
    try {
      writer->writeRecord("data.pkl", data_pkl.data(), data_pkl.size());
      for (const auto& s : storages) {
        const torch::Tensor cpu = s.flat.to(torch::kCPU);  // a GPU storage is copied one at a time
        writer->writeRecord("data/" + s.key, cpu.data_ptr(), cpu.nbytes());
      }
      writer->writeEndOfFile();
    } catch (const c10::Error& e) {
      // Its destructor would try to finish the archive and throw again: let it go.
      static_cast<void>(writer.release());
      throw Error(path, "cannot write the archive: " + first_line(e.what_without_backtrace()));
    }
    writer.reset();
    if (sink.error != 0) throw Error(path, fmt::format("write failed: {}", std::strerror(sink.error)));
    if (::fsync(sink.fd) != 0) throw Error(path, fmt::format("fsync failed: {}", std::strerror(errno)));
    open = false;
    if (::close(sink.fd) != 0) throw Error(path, fmt::format("close failed: {}", std::strerror(errno)));
  } catch (...) {
    if (open) ::close(sink.fd);
    ::unlink(tmp.c_str());
    throw;
  }
  weights_detail::publish_file(tmp, path);
}

}  // namespace

void write_torch_save(const TorchSaveObject& object, const std::string& path) {
  // Storages are written in the machine's byte order, which torch.load takes to be
  // little-endian (as read_torch_save does).
  if constexpr (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__) {
    throw Error(path, "torch.save checkpoints can only be written on little-endian machines");
  }
  torch::NoGradGuard no_grad;
  Pickler pickler(path);
  const std::string data_pkl = pickler.run(object);
  write_archive(path, data_pkl, pickler.take_storages());
}

void write_state_dict_torch_save(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                 const std::string& path) {
  TorchSaveObject dict = TorchSaveObject::ordered_dict();
  std::unordered_set<std::string> seen;
  for (const auto& [name, tensor] : tensors) {
    if (!seen.insert(name).second) throw Error(path, "the state dict names '" + name + "' twice");
    dict.set(name, tensor);
  }
  write_torch_save(dict, path);
}

void write_state_dict_torch_save(const StateDict& tensors, const std::string& path) {
  write_state_dict_torch_save(std::vector<std::pair<std::string, torch::Tensor>>(tensors.begin(), tensors.end()),
                              path);
}

}  // namespace admis::host
