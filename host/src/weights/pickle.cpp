// The pickle interpreter: a stack machine over the binary opcodes of protocols 2 to 5
// (plus the few text opcodes old pickles still mix in), building generic Values.

#include "admis/host/pickle.h"

#include <fmt/format.h>

#include <cstring>
#include <unordered_map>

#include "admis/sdk/error.h"

namespace admis::host::pickle {

namespace {

const char* type_name(Type t) {
  switch (t) {
    case Type::None: return "None";
    case Type::Bool: return "bool";
    case Type::Int: return "int";
    case Type::BigInt: return "int (beyond 64 bits)";
    case Type::Float: return "float";
    case Type::String: return "str";
    case Type::Bytes: return "bytes";
    case Type::Tuple: return "tuple";
    case Type::List: return "list";
    case Type::Set: return "set";
    case Type::Dict: return "dict";
    case Type::Global: return "global";
    case Type::Object: return "object";
    case Type::Storage: return "storage";
    case Type::Tensor: return "tensor";
  }
  return "?";
}

[[noreturn]] void wrong_type(const Value& v, const char* expected) {
  throw Error("", fmt::format("expected {} in the pickle, found {}", expected, v.describe()));
}

bool same_key(const Value& a, const Value& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case Type::String:
    case Type::Bytes: return a.text == b.text;
    case Type::Int: return a.integer == b.integer;
    default: return false;  // other keys (tuples, objects) are kept as they come
  }
}

// Python 2 modules have other names than their Python 3 counterparts.
bool is_builtins(const std::string& module) { return module == "builtins" || module == "__builtin__"; }

class Machine {
 public:
  Machine(const unsigned char* data, std::size_t size, const Hooks& hooks, const std::string& where)
      : data_(data), size_(size), hooks_(hooks), where_(where) {}

  ValuePtr run() {
    while (true) {
      op_offset_ = pos_;
      const unsigned char op = read_u8();
      switch (op) {
        // Framing and protocol markers carry no objects.
        case 0x80: read_u8(); break;                      // PROTO
        case 0x95: read_bytes(8); break;                  // FRAME
        case '.': return finish();                        // STOP

        // Stack manipulation.
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '0': pop(); break;                            // POP
        case '1': pop_mark(); break;                       // POP_MARK
        case '2': push(top()); break;                      // DUP

        // Memo.
        case 'q': memo_put(read_u8()); break;               // BINPUT
        case 'r': memo_put(read_u32()); break;              // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break;           // MEMOIZE
        case 'p': memo_put(parse_decimal(read_line())); break;  // PUT
        case 'h': push(memo_get(read_u8())); break;         // BINGET
        case 'j': push(memo_get(read_u32())); break;        // LONG_BINGET
        case 'g': push(memo_get(parse_decimal(read_line()))); break;  // GET

        // Scalars.
        case 'N': push(Value::none()); break;
        case 0x88: push(Value::boolean_value(true)); break;   // NEWTRUE
        case 0x89: push(Value::boolean_value(false)); break;  // NEWFALSE
        case 'K': push(Value::int_value(read_u8())); break;   // BININT1
        case 'M': push(Value::int_value(read_u16())); break;  // BININT2
        case 'J': push(Value::int_value(static_cast<std::int32_t>(read_u32()))); break;  // BININT
        case 0x8a: push(read_long(read_u8())); break;         // LONG1
        case 0x8b: push(read_long(read_length32())); break;   // LONG4
        case 'I': push(parse_text_int(read_line())); break;   // INT (protocol 0; "01"/"00" are bools)
        case 'L': push(parse_text_int(read_line())); break;   // LONG (protocol 0)
        case 'G': push(Value::float_value(read_f64_be())); break;  // BINFLOAT

        // Strings and bytes.
        case 'X': push(Value::string_value(read_bytes(read_length32()))); break;  // BINUNICODE
        case 0x8c: push(Value::string_value(read_bytes(read_u8()))); break;       // SHORT_BINUNICODE
        case 0x8d: push(Value::string_value(read_bytes(read_length64()))); break; // BINUNICODE8
        // Python 2 str is bytes; Python 3 reads it as bytes with encoding='bytes'.
        case 'U': push(Value::bytes_value(read_bytes(read_u8()))); break;         // SHORT_BINSTRING
        case 'T': push(Value::bytes_value(read_bytes(read_length32()))); break;   // BINSTRING
        case 'C': push(Value::bytes_value(read_bytes(read_u8()))); break;         // SHORT_BINBYTES
        case 'B': push(Value::bytes_value(read_bytes(read_length32()))); break;   // BINBYTES
        case 0x8e: push(Value::bytes_value(read_bytes(read_length64()))); break;  // BINBYTES8
        case 0x96: push(Value::bytes_value(read_bytes(read_length64()))); break;  // BYTEARRAY8

        // Containers.
        case ')': push(Value::tuple({})); break;                 // EMPTY_TUPLE
        case 0x85: push(tuple_of_top(1)); break;                 // TUPLE1
        case 0x86: push(tuple_of_top(2)); break;                 // TUPLE2
        case 0x87: push(tuple_of_top(3)); break;                 // TUPLE3
        case 't': push(Value::tuple(pop_mark())); break;         // TUPLE
        case ']': push(Value::make(Type::List)); break;          // EMPTY_LIST
        case 'l': push(list_of(pop_mark())); break;              // LIST
        case '}': push(Value::make(Type::Dict)); break;          // EMPTY_DICT
        case 'd': push(dict_of(pop_mark())); break;              // DICT
        case 0x8f: push(Value::make(Type::Set)); break;          // EMPTY_SET
        case 0x91: push(set_of(pop_mark())); break;              // FROZENSET
        case 'a': append({pop()}); break;                        // APPEND
        case 'e': append(pop_mark()); break;                     // APPENDS
        case 0x90: add_items(pop_mark()); break;                 // ADDITEMS
        case 's': {                                              // SETITEM
          auto value = pop();
          auto key = pop();
          set_items({key, value});
          break;
        }
        case 'u': set_items(pop_mark()); break;                  // SETITEMS

        // Globals, calls and object state.
        case 'c': {  // GLOBAL: "module\nname\n"
          auto module = read_line();
          auto name = read_line();
          push(Value::global(std::move(module), std::move(name)));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop();
          auto module = pop();
          push(Value::global(text_of(*module, "module name"), text_of(*name, "global name")));
          break;
        }
        case 'R': {  // REDUCE: callable(*args)
          auto args = pop();
          auto callable = pop();
          push(call(callable, args));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
          auto args = pop();
          auto cls = pop();
          push(call(cls, args));
          break;
        }
        case 0x92: {  // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs); keyword arguments are kept as state
          auto kwargs = pop();
          auto args = pop();
          auto cls = pop();
          auto object = call(cls, args);
          if (!kwargs->entries.empty() && !object->state) object->state = kwargs;
          push(object);
          break;
        }
        case 'b': {  // BUILD: obj.__setstate__(state) or obj.__dict__.update(state)
          auto state = pop();
          top()->state = state;
          break;
        }
        case 'Q': {  // BINPERSID
          auto pid = pop();
          push(persistent_load(pid));
          break;
        }
        case 'P': push(persistent_load(Value::string_value(read_line()))); break;  // PERSID

        default:
          fail(fmt::format("unsupported pickle opcode 0x{:02x}", op));
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw Error(where_, fmt::format("pickle: {} at byte {}", message, op_offset_));
  }

  // --- input ---------------------------------------------------------------------------
  void need(std::size_t n) const {
    if (n > size_ - pos_) fail(fmt::format("data ends early (truncated pickle: needed {} more bytes)", n));
  }
  unsigned char read_u8() {
    need(1);
    return data_[pos_++];
  }
  std::uint16_t read_u16() {
    need(2);
    std::uint16_t v = data_[pos_] | (data_[pos_ + 1] << 8);
    pos_ += 2;
    return v;
  }
  std::uint32_t read_u32() {
    need(4);
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | data_[pos_ + i];
    pos_ += 4;
    return v;
  }
  std::uint64_t read_u64() {
    need(8);
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | data_[pos_ + i];
    pos_ += 8;
    return v;
  }
  // BINSTRING and LONG4 store signed lengths; a negative one is corruption.
  std::size_t read_length32() {
    const auto n = static_cast<std::int32_t>(read_u32());
    if (n < 0) fail("negative length");
    return static_cast<std::size_t>(n);
  }
  std::size_t read_length64() {
    const std::uint64_t n = read_u64();
    if (n > size_) fail("length beyond the end of the data");
    return static_cast<std::size_t>(n);
  }
  double read_f64_be() {
    need(8);
    std::uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits = (bits << 8) | data_[pos_ + i];
    pos_ += 8;
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  std::string read_bytes(std::size_t n) {
    need(n);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  std::string read_line() {
    const std::size_t start = pos_;
    while (pos_ < size_ && data_[pos_] != '\n') ++pos_;
    if (pos_ == size_) fail("data ends early (truncated pickle: unterminated line)");
    std::string s(reinterpret_cast<const char*>(data_ + start), pos_ - start);
    ++pos_;
    if (!s.empty() && s.back() == '\r') s.pop_back();
    return s;
  }
  std::uint64_t parse_decimal(const std::string& s) const {
    std::uint64_t v = 0;
    if (s.empty()) fail("empty memo index");
    for (char c : s) {
      if (c < '0' || c > '9') fail("bad memo index '" + s + "'");
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return v;
  }
  ValuePtr parse_text_int(std::string s) const {
    if (s == "01") return Value::boolean_value(true);
    if (s == "00") return Value::boolean_value(false);
    if (!s.empty() && s.back() == 'L') s.pop_back();
    try {
      std::size_t used = 0;
      const long long v = std::stoll(s, &used);
      if (used != s.size()) throw std::invalid_argument(s);
      return Value::int_value(v);
    } catch (const std::exception&) {
      fail("bad integer literal '" + s + "'");
    }
  }
  // LONG1 / LONG4: two's complement little-endian of n bytes.
  ValuePtr read_long(std::size_t n) {
    auto bytes = read_bytes(n);
    if (n == 0) return Value::int_value(0);
    if (n > 8) {
      // Keep it exact if the extra bytes are only sign extension, else as a big integer.
      const unsigned char sign = (static_cast<unsigned char>(bytes[n - 1]) & 0x80) ? 0xff : 0x00;
      bool fits = (static_cast<unsigned char>(bytes[7]) & 0x80) == (sign & 0x80);
      for (std::size_t i = 8; i < n && fits; ++i) fits = static_cast<unsigned char>(bytes[i]) == sign;
      if (!fits) {
        auto v = Value::make(Type::BigInt);
        v->text = std::move(bytes);
        return v;
      }
      bytes.resize(8);
      n = 8;
    }
    std::uint64_t u = 0;
    for (std::size_t i = n; i-- > 0;) u = (u << 8) | static_cast<unsigned char>(bytes[i]);
    if (n < 8 && (static_cast<unsigned char>(bytes[n - 1]) & 0x80)) u |= ~std::uint64_t{0} << (8 * n);
    return Value::int_value(static_cast<std::int64_t>(u));
  }

  // --- stack and memo ------------------------------------------------------------------
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("stack underflow");
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const ValuePtr& top() const {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  ValuePtr tuple_of_top(std::size_t n) {
    std::vector<ValuePtr> items(n);
    for (std::size_t i = n; i-- > 0;) items[i] = pop();
    return Value::tuple(std::move(items));
  }
  void memo_put(std::uint64_t index) { memo_[index] = top(); }
  ValuePtr memo_get(std::uint64_t index) const {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail(fmt::format("memo index {} was never stored", index));
    return it->second;
  }

  // --- containers ----------------------------------------------------------------------
  static ValuePtr list_of(std::vector<ValuePtr> items) {
    auto v = Value::make(Type::List);
    v->items = std::move(items);
    return v;
  }
  static ValuePtr set_of(std::vector<ValuePtr> items) {
    auto v = Value::make(Type::Set);
    v->items = std::move(items);
    return v;
  }
  ValuePtr dict_of(std::vector<ValuePtr> flat) {
    auto d = Value::make(Type::Dict);
    insert_pairs(*d, flat);
    return d;
  }
  void append(std::vector<ValuePtr> items) {
    auto& target = *top();
    if (!target.is(Type::List) && !target.is(Type::Object)) fail("APPEND(S) onto " + target.describe());
    target.items.insert(target.items.end(), std::make_move_iterator(items.begin()),
                        std::make_move_iterator(items.end()));
  }
  void add_items(std::vector<ValuePtr> items) {
    auto& target = *top();
    if (!target.is(Type::Set) && !target.is(Type::Object)) fail("ADDITEMS onto " + target.describe());
    target.items.insert(target.items.end(), std::make_move_iterator(items.begin()),
                        std::make_move_iterator(items.end()));
  }
  void set_items(std::vector<ValuePtr> flat) {
    auto& target = *top();
    if (!target.is(Type::Dict) && !target.is(Type::Object)) fail("SETITEM(S) onto " + target.describe());
    insert_pairs(target, flat);
  }
  void insert_pairs(Value& target, const std::vector<ValuePtr>& flat) {
    if (flat.size() % 2 != 0) fail("odd number of items for a dict");
    for (std::size_t i = 0; i < flat.size(); i += 2) {
      bool replaced = false;
      for (auto& entry : target.entries) {
        if (same_key(*entry.first, *flat[i])) {
          entry.second = flat[i + 1];  // a repeated key overwrites, as in Python
          replaced = true;
          break;
        }
      }
      if (!replaced) target.entries.emplace_back(flat[i], flat[i + 1]);
    }
  }

  // --- calls ---------------------------------------------------------------------------
  std::string text_of(const Value& v, const char* what) const {
    if (!v.is(Type::String) && !v.is(Type::Bytes)) fail(fmt::format("{} is {}, not a string", what, v.describe()));
    return v.text;
  }

  ValuePtr call(const ValuePtr& callable, const ValuePtr& args) {
    if (!callable->is(Type::Global)) fail("call of " + callable->describe() + ", not of a global");
    if (!args->is(Type::Tuple)) fail("call arguments are " + args->describe() + ", not a tuple");
    if (hooks_.call) {
      try {
        if (auto v = hooks_.call(*callable, args)) return v;
      } catch (const Error& e) {
        // A hook's error without a `where` gets the call it comes from and the pickle offset.
        if (!e.where().empty()) throw;
        fail(fmt::format("{}: {}", callable->qualified_name(), e.what()));
      }
    }
    const auto& module = callable->module;
    const auto& name = callable->name;
    if ((module == "collections" && name == "OrderedDict") || (is_builtins(module) && name == "dict")) {
      auto d = Value::make(Type::Dict);
      // OrderedDict(iterable of pairs) appears in protocol-0/1 pickles; protocol 2+ passes ().
      if (!args->items.empty() && (args->items[0]->is(Type::List) || args->items[0]->is(Type::Tuple))) {
        for (const auto& pair : args->items[0]->items) {
          if (!pair->is(Type::Tuple) || pair->items.size() != 2) fail("dict built from a non-pair");
          insert_pairs(*d, {pair->items[0], pair->items[1]});
        }
      }
      return d;
    }
    if (is_builtins(module) && (name == "set" || name == "frozenset")) {
      auto s = Value::make(Type::Set);
      if (!args->items.empty()) s->items = args->items[0]->items;
      return s;
    }
    // Python 3 pickles bytes at protocol 2 as _codecs.encode(str, 'latin1').
    if (module == "_codecs" && name == "encode" && args->items.size() == 2 && args->items[0]->is(Type::String) &&
        args->items[1]->is(Type::String) && (args->items[1]->text == "latin1" || args->items[1]->text == "latin-1")) {
      return Value::bytes_value(utf8_to_latin1(args->items[0]->text));
    }
    if (is_builtins(module) && name == "bytearray" && args->items.size() == 1 && args->items[0]->is(Type::Bytes)) {
      return Value::bytes_value(args->items[0]->text);
    }
    auto object = Value::make(Type::Object);
    object->callable = callable;
    object->module = module;
    object->name = name;
    object->args = args;
    return object;
  }

  std::string utf8_to_latin1(const std::string& s) const {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
      } else if ((c & 0xe0) == 0xc0 && i + 1 < s.size() && c <= 0xc3) {
        out.push_back(static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3f)));
        ++i;
      } else {
        fail("latin1-encoded bytes contain a character beyond U+00FF");
      }
    }
    return out;
  }

  ValuePtr persistent_load(const ValuePtr& pid) {
    if (!hooks_.persistent_load) fail("persistent id " + pid->describe() + " but no persistent_load hook");
    try {
      auto v = hooks_.persistent_load(pid);
      if (!v) fail("persistent id " + pid->describe() + " was not resolved");
      return v;
    } catch (const Error& e) {
      if (!e.where().empty()) throw;  // the hook already named what it was about
      fail(e.what());
    }
  }

  ValuePtr finish() {
    if (stack_.size() != 1 || !marks_.empty()) {
      fail(fmt::format("STOP with {} values and {} marks on the stack (expected one value)", stack_.size(),
                       marks_.size()));
    }
    return stack_.back();
  }

  const unsigned char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::size_t op_offset_ = 0;
  const Hooks& hooks_;
  const std::string& where_;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, ValuePtr> memo_;
};

}  // namespace

// --- Value ---------------------------------------------------------------------------

ValuePtr Value::make(Type type) {
  auto v = std::make_shared<Value>();
  v->type = type;
  return v;
}
ValuePtr Value::none() { return make(Type::None); }
ValuePtr Value::boolean_value(bool b) {
  auto v = make(Type::Bool);
  v->boolean = b;
  return v;
}
ValuePtr Value::int_value(std::int64_t i) {
  auto v = make(Type::Int);
  v->integer = i;
  return v;
}
ValuePtr Value::float_value(double d) {
  auto v = make(Type::Float);
  v->real = d;
  return v;
}
ValuePtr Value::string_value(std::string s) {
  auto v = make(Type::String);
  v->text = std::move(s);
  return v;
}
ValuePtr Value::bytes_value(std::string s) {
  auto v = make(Type::Bytes);
  v->text = std::move(s);
  return v;
}
ValuePtr Value::tuple(std::vector<ValuePtr> items) {
  auto v = make(Type::Tuple);
  v->items = std::move(items);
  return v;
}
ValuePtr Value::global(std::string module, std::string name) {
  auto v = make(Type::Global);
  v->module = std::move(module);
  v->name = std::move(name);
  return v;
}
ValuePtr Value::tensor_value(torch::Tensor t) {
  auto v = make(Type::Tensor);
  v->tensor = std::move(t);
  return v;
}

std::string Value::qualified_name() const {
  if (!is(Type::Global) && !is(Type::Object)) return {};
  return module.empty() ? name : module + "." + name;
}

std::string Value::describe() const {
  switch (type) {
    case Type::Bool: return boolean ? "bool True" : "bool False";
    case Type::Int: return fmt::format("int {}", integer);
    case Type::Float: return fmt::format("float {}", real);
    case Type::String: return text.size() <= 40 ? fmt::format("str '{}'", text) : fmt::format("str of {} bytes", text.size());
    case Type::Bytes: return fmt::format("bytes of length {}", text.size());
    case Type::Tuple:
    case Type::List:
    case Type::Set: return fmt::format("{} of {}", type_name(type), items.size());
    case Type::Dict: return fmt::format("dict of {}", entries.size());
    case Type::Global: return "global " + qualified_name();
    case Type::Object: return "object " + qualified_name();
    case Type::Storage: return fmt::format("storage '{}'", text);
    case Type::Tensor: return "tensor";
    default: return type_name(type);
  }
}

std::int64_t Value::as_int() const {
  if (is(Type::Int)) return integer;
  if (is(Type::Bool)) return boolean ? 1 : 0;
  wrong_type(*this, "an int");
}
double Value::as_float() const {
  if (is(Type::Float)) return real;
  if (is(Type::Int)) return static_cast<double>(integer);
  wrong_type(*this, "a float");
}
bool Value::as_bool() const {
  if (is(Type::Bool)) return boolean;
  if (is(Type::Int)) return integer != 0;
  wrong_type(*this, "a bool");
}
const std::string& Value::as_text() const {
  if (is(Type::String) || is(Type::Bytes)) return text;
  wrong_type(*this, "a str or bytes");
}
const std::vector<ValuePtr>& Value::as_sequence() const {
  if (is(Type::Tuple) || is(Type::List)) return items;
  wrong_type(*this, "a tuple or list");
}
std::vector<std::int64_t> Value::as_int_sequence() const {
  std::vector<std::int64_t> out;
  // torch.Size pickles as torch.Size((..,)): accept it as its tuple.
  if (is(Type::Object) && args && args->items.size() == 1) return args->items[0]->as_int_sequence();
  for (const auto& item : as_sequence()) out.push_back(item->as_int());
  return out;
}
ValuePtr Value::find(const std::string& key) const {
  if (!is(Type::Dict)) return nullptr;
  for (const auto& [k, v] : entries) {
    if ((k->is(Type::String) || k->is(Type::Bytes)) && k->text == key) return v;
  }
  return nullptr;
}

ValuePtr unpickle(const void* data, std::size_t size, const Hooks& hooks, const std::string& where) {
  Machine machine(static_cast<const unsigned char*>(data), size, hooks, where);
  return machine.run();
}

}  // namespace admis::host::pickle
