#pragma once
// A small Python pickle interpreter (the binary opcodes of protocols 2 to 5).
//
// Python's pickle is a stack machine whose programs build objects by calling Python
// functions. We cannot call Python, so the interpreter builds a generic tree of values
// instead: containers become containers, and every call of a Python global becomes an
// `Object` that records what was called with which arguments. The caller decides what
// matters through two hooks: `persistent_load` (torch.save keeps tensor storages outside
// the pickle and refers to them by persistent id) and `call` (turns a call such as
// torch._utils._rebuild_tensor_v2(...) into a tensor). Anything the hooks do not claim
// stays a generic value, so unknown objects never stop a read.
//
// Readers built on it: torch.save checkpoints (weights I/O) and insightface verification
// .bin files (Python 2 protocol-2 and Python 3 protocol-4 pickles of
// (list of encoded images, list of bools)).

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace admis::host::pickle {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

enum class Type {
  None,
  Bool,
  Int,     // fits in int64
  BigInt,  // a Python int beyond int64: `text` holds its two's complement bytes, little-endian
  Float,
  String,  // Python str, UTF-8 in `text`
  Bytes,   // Python bytes (and Python 2 str, which is bytes), raw in `text`
  Tuple,
  List,
  Set,     // set and frozenset, elements in `items`
  Dict,    // dict and collections.OrderedDict, insertion order in `entries`
  Global,  // a reference to a Python global: `module` and `name`
  Object,  // the result of calling a global the hooks did not claim
  Storage, // a tensor storage (from a persistent_load hook): a flat 1-D tensor in `tensor`
  Tensor,  // a tensor (from a call hook) in `tensor`
};

// Values are shared: the pickle memo lets one object appear in several places, and a list
// may be filled (APPENDS) after it has been memoised and referenced.
struct Value {
  Type type = Type::None;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0.0;
  std::string text;  // String, Bytes, BigInt; Storage: its key in the archive
  std::string module, name;  // Global; Object: copied from its callable for convenience
  std::vector<ValuePtr> items;                          // Tuple, List, Set; Object: appended items
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // Dict; Object: items set by SETITEMS
  ValuePtr callable;  // Object: the Global that made it
  ValuePtr args;      // Object: the argument tuple of the call (REDUCE / NEWOBJ)
  ValuePtr state;     // Object or Dict: the argument of BUILD (__setstate__ / __dict__), if any
  torch::Tensor tensor;  // Storage, Tensor

  static ValuePtr make(Type type);
  static ValuePtr none();
  static ValuePtr boolean_value(bool v);
  static ValuePtr int_value(std::int64_t v);
  static ValuePtr float_value(double v);
  static ValuePtr string_value(std::string v);
  static ValuePtr bytes_value(std::string v);
  static ValuePtr tuple(std::vector<ValuePtr> items);
  static ValuePtr global(std::string module, std::string name);
  static ValuePtr tensor_value(torch::Tensor t);

  bool is(Type t) const { return type == t; }
  // "module.name" of a Global or an Object, empty otherwise.
  std::string qualified_name() const;
  // A short description for error messages: "int 3", "tuple of 5", "object argparse.Namespace".
  std::string describe() const;

  // Checked accessors; they throw admis::Error (with `where` empty) naming the expected
  // and the actual type.
  std::int64_t as_int() const;
  double as_float() const;          // Float, or Int converted
  bool as_bool() const;             // Bool, or Int (Python 2 pickles of booleans may be ints)
  const std::string& as_text() const;  // String or Bytes
  const std::vector<ValuePtr>& as_sequence() const;  // Tuple or List
  std::vector<std::int64_t> as_int_sequence() const;  // Tuple or List of Int
  // Dict lookup by string key; nullptr when absent (or when this is not a Dict).
  ValuePtr find(const std::string& key) const;
};

struct Hooks {
  // Called for BINPERSID / PERSID with the persistent id. Without it, a pickle that uses
  // persistent ids is an error.
  std::function<ValuePtr(const ValuePtr& pid)> persistent_load;
  // Called for REDUCE (callable(*args)) and NEWOBJ (cls.__new__(cls, *args)) with the
  // callable (a Global) and the argument tuple. Return nullptr to leave the call to the
  // built-in handling: collections.OrderedDict and dict make a Dict, set/frozenset a Set,
  // _codecs.encode(text, 'latin1') Bytes (Python 3 protocol-2 bytes), anything else a
  // generic Object.
  std::function<ValuePtr(const Value& callable, const ValuePtr& args)> call;
};

// Runs the pickle program in `data` and returns the object it builds. `where` (a file
// name, a record) prefixes every error. Errors (truncated data, an unknown opcode, a stack
// underflow, a bad memo index) are admis::Error and say at which byte offset they occur.
ValuePtr unpickle(const void* data, std::size_t size, const Hooks& hooks, const std::string& where);

}  // namespace admis::host::pickle
