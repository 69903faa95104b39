// write_torch_save: round trips through admis's reader (every dtype, views, shared storages,
// empty and 0-d tensors, training checkpoints), the pickle and archive it writes, refused
// input and failed writes, and PyTorch 1.13 loading what it writes (/usr/bin/python3).

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <limits>

#include "admis/host/pickle.h"
#include "admis/host/weights.h"
#include "weights_fixtures.h"

namespace {

using admis::StateDict;
using admis::host::read_weights;
using admis::host::TorchSaveObject;
using admis::host::write_state_dict_torch_save;
using admis::host::write_torch_save;
using admis::weights_test::dtype_values;
using admis::weights_test::error_of;
using admis::weights_test::read_file_bytes;
using admis::weights_test::same_tensor;
namespace pickle = admis::host::pickle;

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

std::string temp_path(const std::string& name) {
  static const std::string dir = admis::test::temp_dir("torch-save-writer");
  return dir + "/" + name;
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::vector<std::string> keys_of(const StateDict& sd) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  return keys;
}

// dtype_values() in the order make_fixtures.py's dtype_tensors() lists them.
NamedTensors dtype_values_in_python_order() {
  const auto sd = dtype_values();
  NamedTensors out;
  for (const char* key : {"f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8", "flag", "scalar", "empty"}) {
    out.emplace_back(key, sd.at(key));
  }
  return out;
}

// The archive's data.pkl interpreted without rebuilding tensors: storages come back as
// Storage values keyed by record name (the persistent id in `items`), and each
// _rebuild_tensor_v2 call as a generic Object whose `args` can be inspected.
struct Archive {
  std::vector<std::string> records;  // in file order
  std::string data_pkl;
  pickle::ValuePtr root;
};

Archive open_archive(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  Archive a;
  a.records = reader.getAllRecords();
  auto [data, size] = reader.getRecord("data.pkl");
  a.data_pkl.assign(static_cast<const char*>(data.get()), size);
  pickle::Hooks hooks;
  hooks.persistent_load = [](const pickle::ValuePtr& pid) {
    auto v = pickle::Value::make(pickle::Type::Storage);
    v->text = pid->items.at(2)->as_text();
    v->items = pid->items;
    return v;
  };
  a.root = pickle::unpickle(a.data_pkl.data(), a.data_pkl.size(), hooks, path);
  return a;
}

std::size_t record_size(const std::string& path, const std::string& record) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  return std::get<1>(reader.getRecord(record));
}

// The arguments of the _rebuild_tensor_v2 call stored under `key` of a dict.
const std::vector<pickle::ValuePtr>& rebuild_args(const pickle::Value& dict, const std::string& key) {
  const auto v = dict.find(key);
  if (!v || v->qualified_name() != "torch._utils._rebuild_tensor_v2") {
    throw std::runtime_error("entry " + key + " is not a _rebuild_tensor_v2 call");
  }
  return v->args->items;
}

std::vector<std::string> dict_keys(const pickle::Value& dict) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : dict.entries) keys.push_back(k->is(pickle::Type::Int) ? std::to_string(k->integer) : k->text);
  return keys;
}

TEST(TorchSaveWriter, RoundTripsEveryDtypeThroughTheReader) {
  const std::string path = temp_path("dtypes.pt");
  write_state_dict_torch_save(dtype_values(), path);
  const StateDict back = read_weights(path);
  const StateDict expected = dtype_values();
  ASSERT_EQ(keys_of(back), keys_of(expected));
  for (const auto& [key, tensor] : expected) EXPECT_TRUE(same_tensor(back.at(key), tensor)) << key;
  EXPECT_EQ(back.at("scalar").dim(), 0);
  EXPECT_EQ(back.at("empty").sizes(), torch::IntArrayRef({0, 3}));
  // Storage records follow data.pkl sorted by key as strings, as Python sorts them.
  EXPECT_EQ(open_archive(path).records,
            (std::vector<std::string>{"data.pkl", "data/0", "data/1", "data/10", "data/11", "data/2", "data/3", "data/4",
                                      "data/5", "data/6", "data/7", "data/8", "data/9", "version"}));

  // Complex tensors too (torch.save names their storages ComplexFloat/ComplexDoubleStorage).
  const auto c64 = torch::complex(torch::arange(3, torch::kFloat32), -torch::arange(3, torch::kFloat32));
  write_state_dict_torch_save(
      StateDict{{"c64", c64}, {"c128", c64.to(torch::kComplexDouble)}, {"conj", c64.conj()}}, path);
  const StateDict complex_back = read_weights(path);
  EXPECT_TRUE(same_tensor(complex_back.at("c64"), c64));
  EXPECT_TRUE(same_tensor(complex_back.at("c128"), c64.to(torch::kComplexDouble)));
  EXPECT_TRUE(same_tensor(complex_back.at("conj"), c64.conj().resolve_conj()));
  EXPECT_TRUE(complex_back.at("conj").is_complex() && !complex_back.at("conj").is_conj());
}

TEST(TorchSaveWriter, WritesTheArchiveAndPickleTorchSaveWrites) {
  const std::string path = temp_path("layout.pt");
  write_state_dict_torch_save(NamedTensors{{"weight", torch::ones({2, 3})},
                                           {"bias", torch::zeros({3}, torch::kFloat16)},
                                           {"scalar", torch::full({}, 7, torch::kInt64)}},
                              path);
  // The archive: a zip whose first record is <top>/data.pkl, then storages, then version.
  const std::string bytes = read_file_bytes(path);
  ASSERT_GT(bytes.size(), 30u);
  const std::size_t name_length = static_cast<unsigned char>(bytes[26]) | (static_cast<unsigned char>(bytes[27]) << 8);
  EXPECT_EQ(bytes.substr(0, 4), std::string("PK\x03\x04", 4));
  EXPECT_EQ(bytes.substr(30, name_length), "archive/data.pkl");

  const Archive a = open_archive(path);
  EXPECT_EQ(a.records, (std::vector<std::string>{"data.pkl", "data/0", "data/1", "data/2", "version"}));
  caffe2::serialize::PyTorchStreamReader reader(path);
  auto [version, version_size] = reader.getRecord("version");
  EXPECT_EQ(std::string(static_cast<const char*>(version.get()), version_size), "3\n");
  EXPECT_EQ(record_size(path, "data/0"), 6u * 4);
  EXPECT_EQ(record_size(path, "data/1"), 3u * 2);
  EXPECT_EQ(record_size(path, "data/2"), 8u);

  // Protocol 2, the root an OrderedDict built by calling collections.OrderedDict().
  EXPECT_EQ(a.data_pkl.substr(0, 27), std::string("\x80\x02" "ccollections\nOrderedDict\n", 27));
  ASSERT_TRUE(a.root->is(pickle::Type::Dict));
  EXPECT_EQ(dict_keys(*a.root), (std::vector<std::string>{"weight", "bias", "scalar"}));  // the given order

  // _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', 6), 0, (2, 3), (3, 1), False, OrderedDict())
  const auto& w = rebuild_args(*a.root, "weight");
  ASSERT_EQ(w.size(), 6u);
  const auto& pid = w[0]->items;
  ASSERT_EQ(pid.size(), 5u);
  EXPECT_EQ(pid[0]->as_text(), "storage");
  EXPECT_EQ(pid[1]->qualified_name(), "torch.FloatStorage");
  EXPECT_EQ(pid[2]->as_text(), "0");
  EXPECT_EQ(pid[3]->as_text(), "cpu");
  EXPECT_EQ(pid[4]->as_int(), 6);
  EXPECT_EQ(w[1]->as_int(), 0);
  EXPECT_TRUE(w[2]->is(pickle::Type::Tuple));
  EXPECT_EQ(w[2]->as_int_sequence(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(w[3]->as_int_sequence(), (std::vector<std::int64_t>{3, 1}));
  EXPECT_TRUE(w[4]->is(pickle::Type::Bool) && !w[4]->boolean);
  EXPECT_TRUE(w[5]->is(pickle::Type::Dict) && w[5]->entries.empty());

  EXPECT_EQ(rebuild_args(*a.root, "bias")[0]->items[1]->qualified_name(), "torch.HalfStorage");
  // A 0-d tensor: size () and stride ().
  const auto& s = rebuild_args(*a.root, "scalar");
  EXPECT_EQ(s[0]->items[1]->qualified_name(), "torch.LongStorage");
  EXPECT_TRUE(s[2]->is(pickle::Type::Tuple) && s[2]->items.empty());
  EXPECT_TRUE(s[3]->is(pickle::Type::Tuple) && s[3]->items.empty());
}

TEST(TorchSaveWriter, ViewsKeepTheirStridesAndSharedStoragesAreWrittenOnce) {
  const auto base = torch::arange(24, torch::kFloat32).view({4, 6});
  const auto other = torch::arange(5, torch::kInt32);
  const std::string path = temp_path("views.pt");
  write_state_dict_torch_save(NamedTensors{{"base", base},
                                           {"transposed", base.t()},
                                           {"columns", base.narrow(1, 2, 3)},
                                           {"alias", base},
                                           {"strided", base.view({24}).slice(0, 1, 24, 5)},
                                           {"other", other},
                                           {"expanded", other.narrow(0, 4, 1).expand({3})}},
                              path);
  const StateDict back = read_weights(path);
  EXPECT_TRUE(same_tensor(back.at("base"), base));
  EXPECT_TRUE(same_tensor(back.at("transposed"), base.t().contiguous()));
  EXPECT_TRUE(same_tensor(back.at("columns"), base.narrow(1, 2, 3).contiguous()));
  EXPECT_TRUE(same_tensor(back.at("alias"), base));
  EXPECT_TRUE(same_tensor(back.at("strided"), torch::tensor({1.0f, 6.0f, 11.0f, 16.0f, 21.0f})));
  EXPECT_TRUE(same_tensor(back.at("other"), other));
  EXPECT_TRUE(same_tensor(back.at("expanded"), torch::tensor({4, 4, 4}, torch::kInt32)));

  // Two storages, each written once and whole; the views keep offsets and strides.
  const Archive a = open_archive(path);
  EXPECT_EQ(a.records, (std::vector<std::string>{"data.pkl", "data/0", "data/1", "version"}));
  EXPECT_EQ(record_size(path, "data/0"), 24u * 4);
  EXPECT_EQ(record_size(path, "data/1"), 5u * 4);
  for (const char* key : {"base", "transposed", "columns", "alias", "strided"}) {
    EXPECT_EQ(rebuild_args(*a.root, key)[0]->text, "0") << key;
  }
  EXPECT_EQ(rebuild_args(*a.root, "expanded")[0]->text, "1");
  EXPECT_EQ(rebuild_args(*a.root, "transposed")[3]->as_int_sequence(), (std::vector<std::int64_t>{1, 6}));
  EXPECT_EQ(rebuild_args(*a.root, "columns")[1]->as_int(), 2);
  EXPECT_EQ(rebuild_args(*a.root, "strided")[1]->as_int(), 1);
  EXPECT_EQ(rebuild_args(*a.root, "strided")[3]->as_int_sequence(), (std::vector<std::int64_t>{5}));
  EXPECT_EQ(rebuild_args(*a.root, "expanded")[1]->as_int(), 4);
  EXPECT_EQ(rebuild_args(*a.root, "expanded")[3]->as_int_sequence(), (std::vector<std::int64_t>{0}));
}

TEST(TorchSaveWriter, ParametersThatRequireGradAreSavedAsPlainTensors) {
  torch::nn::Linear linear(3, 2);
  ASSERT_TRUE(linear->weight.requires_grad());
  const std::string path = temp_path("linear.pt");
  write_state_dict_torch_save(admis::host::module_state_dict(*linear), path);
  const StateDict back = read_weights(path);
  EXPECT_TRUE(same_tensor(back.at("weight"), linear->weight.detach()));
  EXPECT_TRUE(same_tensor(back.at("bias"), linear->bias.detach()));
  EXPECT_FALSE(open_archive(path).root->find("weight")->args->items[4]->boolean);
}

// {'global_step', 'epoch', 'optimizer': Adam's state_dict()}, as IDiff-Face's trainer saves
// optimization.ckpt, over parameters `params`.
TorchSaveObject optimizer_checkpoint(const std::vector<torch::Tensor>& params, std::int64_t step) {
  TorchSaveObject state = TorchSaveObject::dict();
  TorchSaveObject indices = TorchSaveObject::list();
  for (std::size_t i = 0; i < params.size(); ++i) {
    TorchSaveObject entry = TorchSaveObject::dict();
    entry.set("step", torch::full({}, static_cast<double>(step), torch::kFloat32));
    entry.set("exp_avg", params[i] * 0.125 + static_cast<double>(i));
    entry.set("exp_avg_sq", params[i] * params[i] * 0.25);
    state.set(static_cast<int>(i), entry);
    indices.append(static_cast<int>(i));
  }
  TorchSaveObject group = TorchSaveObject::dict();
  group.set("lr", 1e-4);
  group.set("betas", TorchSaveObject::tuple({0.9, 0.999}));
  group.set("eps", 1e-8);
  group.set("weight_decay", 0);
  group.set("amsgrad", false);
  group.set("params", indices);
  TorchSaveObject optimizer = TorchSaveObject::dict();
  optimizer.set("state", state);
  optimizer.set("param_groups", TorchSaveObject::list({group}));
  TorchSaveObject checkpoint = TorchSaveObject::dict();
  checkpoint.set("global_step", step);
  checkpoint.set("epoch", 0);
  checkpoint.set("optimizer", optimizer);
  return checkpoint;
}

TEST(TorchSaveWriter, WritesNestedTrainingCheckpoints) {
  torch::manual_seed(0);
  const std::vector<torch::Tensor> params = {torch::randn({4, 3}), torch::randn({4})};
  TorchSaveObject checkpoint = optimizer_checkpoint(params, 100);
  // Values of every kind and integer width (each picks another pickle opcode).
  TorchSaveObject extra = TorchSaveObject::dict();
  extra.set("none", nullptr);
  extra.set("text", "naïve ✓");
  extra.set("ints", TorchSaveObject::list({0, 255, 256, 65535, 65536, -1, -129, INT32_MIN, std::int64_t{1} << 31,
                                           -(std::int64_t{1} << 40), INT64_MAX, INT64_MIN}));
  extra.set("floats", TorchSaveObject::tuple({-0.0, 1.5e300, std::numeric_limits<double>::infinity(), 0.1}));
  extra.set("long_tuple", TorchSaveObject::tuple({1, 2, 3, 4, "five"}));
  extra.set("empty", TorchSaveObject::tuple());
  extra.set(TorchSaveObject::tuple({1, "a"}), true);
  checkpoint.set("extra", extra);
  const std::string path = temp_path("optimization.ckpt");
  write_torch_save(checkpoint, path);

  // admis's reader flattens the tensors of nested dicts, int keys included.
  const StateDict back = read_weights(path);
  EXPECT_EQ(keys_of(back), (std::vector<std::string>{"optimizer.state.0.exp_avg", "optimizer.state.0.exp_avg_sq",
                                                     "optimizer.state.0.step", "optimizer.state.1.exp_avg",
                                                     "optimizer.state.1.exp_avg_sq", "optimizer.state.1.step"}));
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::string prefix = "optimizer.state." + std::to_string(i) + ".";
    EXPECT_TRUE(same_tensor(back.at(prefix + "exp_avg"), params[i] * 0.125 + static_cast<double>(i)));
    EXPECT_TRUE(same_tensor(back.at(prefix + "exp_avg_sq"), params[i] * params[i] * 0.25));
    EXPECT_TRUE(same_tensor(back.at(prefix + "step"), torch::full({}, 100.0, torch::kFloat32)));
  }

  // The other values, as the pickle interpreter sees them.
  const Archive a = open_archive(path);
  const auto& root = *a.root;
  EXPECT_EQ(a.data_pkl.substr(0, 3), std::string("\x80\x02}", 3));  // a plain dict
  EXPECT_EQ(dict_keys(root), (std::vector<std::string>{"global_step", "epoch", "optimizer", "extra"}));
  EXPECT_EQ(root.find("global_step")->as_int(), 100);
  EXPECT_EQ(root.find("epoch")->as_int(), 0);
  const auto& optimizer = *root.find("optimizer");
  EXPECT_EQ(dict_keys(*optimizer.find("state")), (std::vector<std::string>{"0", "1"}));
  EXPECT_TRUE(optimizer.find("state")->entries[1].first->is(pickle::Type::Int));
  const auto& groups = optimizer.find("param_groups")->as_sequence();
  ASSERT_EQ(groups.size(), 1u);
  const auto& group = *groups[0];
  EXPECT_EQ(dict_keys(group), (std::vector<std::string>{"lr", "betas", "eps", "weight_decay", "amsgrad", "params"}));
  EXPECT_TRUE(group.find("lr")->is(pickle::Type::Float));
  EXPECT_EQ(group.find("lr")->real, 1e-4);
  EXPECT_TRUE(group.find("betas")->is(pickle::Type::Tuple));
  EXPECT_EQ(group.find("betas")->items[0]->real, 0.9);
  EXPECT_EQ(group.find("betas")->items[1]->real, 0.999);
  EXPECT_EQ(group.find("eps")->real, 1e-8);
  EXPECT_TRUE(group.find("weight_decay")->is(pickle::Type::Int));
  EXPECT_TRUE(group.find("amsgrad")->is(pickle::Type::Bool));
  EXPECT_FALSE(group.find("amsgrad")->boolean);
  EXPECT_TRUE(group.find("params")->is(pickle::Type::List));
  EXPECT_EQ(group.find("params")->as_int_sequence(), (std::vector<std::int64_t>{0, 1}));

  const auto& x = *root.find("extra");
  EXPECT_TRUE(x.find("none")->is(pickle::Type::None));
  EXPECT_EQ(x.find("text")->as_text(), "naïve ✓");
  EXPECT_TRUE(x.find("text")->is(pickle::Type::String));
  EXPECT_EQ(x.find("ints")->as_int_sequence(),
            (std::vector<std::int64_t>{0, 255, 256, 65535, 65536, -1, -129, INT32_MIN, std::int64_t{1} << 31,
                                       -(std::int64_t{1} << 40), INT64_MAX, INT64_MIN}));
  const auto& floats = x.find("floats")->items;
  ASSERT_EQ(floats.size(), 4u);
  EXPECT_TRUE(std::signbit(floats[0]->real) && floats[0]->real == 0.0);
  EXPECT_EQ(floats[1]->real, 1.5e300);
  EXPECT_EQ(floats[2]->real, std::numeric_limits<double>::infinity());
  EXPECT_EQ(floats[3]->real, 0.1);
  EXPECT_EQ(x.find("long_tuple")->items.size(), 5u);
  EXPECT_EQ(x.find("long_tuple")->items[4]->as_text(), "five");
  EXPECT_TRUE(x.find("empty")->is(pickle::Type::Tuple) && x.find("empty")->items.empty());
  const auto& tuple_key = *x.entries.back().first;
  ASSERT_TRUE(tuple_key.is(pickle::Type::Tuple));
  EXPECT_EQ(tuple_key.items[0]->as_int(), 1);
  EXPECT_EQ(tuple_key.items[1]->as_text(), "a");
}

TEST(TorchSaveWriter, DictKeysFollowPython) {
  TorchSaveObject d = TorchSaveObject::dict();
  d.set("a", 1).set(1, "one").set("b", 2);
  d.set("a", 3);     // replaced in place, order kept
  d.set(true, "t");  // True == 1: replaces the value of key 1
  d.set(1.0, "f");   // and so does 1.0
  ASSERT_EQ(d.entries().size(), 3u);
  EXPECT_EQ(d.entries()[0].second.integer(), 3);
  EXPECT_EQ(d.entries()[1].first.type(), TorchSaveObject::Type::Int);
  EXPECT_EQ(d.entries()[1].second.text(), "f");
  EXPECT_EQ(d.find("b")->integer(), 2);
  EXPECT_EQ(d.find("missing"), nullptr);

  EXPECT_NE(error_of([&] { d.set(TorchSaveObject::list(), 1); }).find("a list cannot be a dict key"),
            std::string::npos);
  EXPECT_NE(error_of([&] { d.set(torch::zeros({1}), 1); }).find("a tensor cannot be a dict key"), std::string::npos);
  EXPECT_NE(error_of([&] { d.set(TorchSaveObject::tuple({TorchSaveObject::dict()}), 1); }).find("cannot be a dict key"),
            std::string::npos);
  EXPECT_NE(error_of([&] { TorchSaveObject::list().set("k", 1); }).find("cannot set key 'k' on a list"),
            std::string::npos);
  EXPECT_NE(error_of([&] { TorchSaveObject(1).append(2); }).find("cannot append to a int"), std::string::npos);
  EXPECT_NE(error_of([] { TorchSaveObject v(std::numeric_limits<std::uint64_t>::max()); }).find("64-bit"),
            std::string::npos);
}

TEST(TorchSaveWriter, RefusesWhatTorchLoadCouldNotRebuild) {
  const std::string path = temp_path("refused.pt");
  auto message = [&](const TorchSaveObject& object) { return error_of([&] { write_torch_save(object, path); }); };
  auto in_dict = [](const std::string& key, TorchSaveObject value) {
    TorchSaveObject d = TorchSaveObject::dict();
    TorchSaveObject inner = TorchSaveObject::dict();
    inner.set(key, std::move(value));
    d.set("model", inner);
    return d;
  };

  EXPECT_NE(message(in_dict("w", torch::Tensor())).find(path + " [model.w]: undefined tensor"), std::string::npos);
  const auto sparse = torch::eye(3).to_sparse();
  const std::string sparse_message = message(in_dict("s", sparse));
  EXPECT_NE(sparse_message.find("[model.s]: a Sparse tensor cannot be saved"), std::string::npos) << sparse_message;
  const auto floats = torch::zeros({4});
  TorchSaveObject two_views = TorchSaveObject::dict();
  two_views.set("f", floats);
  two_views.set("i", floats.view(torch::kInt32));
  EXPECT_NE(message(two_views).find("[i]: shares its storage with another tensor of dtype float32 but is int32"),
            std::string::npos);
  EXPECT_NE(message(in_dict("text", std::string("bad \xff byte"))).find("[model.text]: string is not valid UTF-8"),
            std::string::npos);
  const auto quantized = torch::quantize_per_tensor(torch::zeros({2}), 0.1, 0, torch::kQUInt8);
  EXPECT_NE(message(in_dict("q", quantized)).find("[model.q]: a quantized tensor cannot be saved"), std::string::npos);
  EXPECT_FALSE(exists(path));

  EXPECT_NE(error_of([&] {
              write_state_dict_torch_save(NamedTensors{{"w", torch::zeros({1})}, {"w", torch::ones({1})}}, path);
            }).find("the state dict names 'w' twice"),
            std::string::npos);
  const std::string missing_dir = temp_path("no/such/dir/x.pt");
  EXPECT_NE(error_of([&] { write_state_dict_torch_save(StateDict{{"w", torch::zeros({1})}}, missing_dir); })
                .find(missing_dir + ": cannot create " + missing_dir + ".tmp-"),
            std::string::npos);
}

TEST(TorchSaveWriter, AFailedWriteLeavesTheOldFileAndNoTemporary) {
  const std::string path = temp_path("atomic.pt");
  write_state_dict_torch_save(StateDict{{"old", torch::ones({3})}}, path);
  const std::string old_bytes = read_file_bytes(path);

  // Let the file system refuse to grow a file beyond 64 KB (EFBIG) while a 4 MB checkpoint
  // is written: the error must come back as admis::Error, not end the process.
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto* previous_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string message =
      error_of([&] { write_state_dict_torch_save(StateDict{{"new", torch::zeros({1 << 20})}}, path); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, previous_handler);
  EXPECT_NE(message.find(path + ": write failed: File too large"), std::string::npos) << message;

  EXPECT_EQ(read_file_bytes(path), old_bytes);
  EXPECT_FALSE(exists(path + ".tmp-" + std::to_string(::getpid())));
  EXPECT_TRUE(same_tensor(read_weights(path).at("old"), torch::ones({3})));

  // A successful write replaces the file.
  write_state_dict_torch_save(StateDict{{"new", torch::zeros({2})}}, path);
  EXPECT_EQ(keys_of(read_weights(path)), std::vector<std::string>{"new"});
}

// ---- PyTorch 1.13 ----------------------------------------------------------------------

const char* kPython = "/usr/bin/python3";

// Python with torch, or why not.
std::string python_torch_missing() {
  const auto r = admis::test::run_command(std::string(kPython) + " -c 'import torch' 2>&1");
  return r.status == 0 ? std::string() : r.output;
}

std::string write_script(const std::string& name, const std::string& text) {
  const std::string path = temp_path(name);
  std::ofstream(path) << text;
  return path;
}

// The module Python builds in the script below, with its state dict as admis would write
// it: registration order, a transposed (non-contiguous) conv weight and biases that share
// one storage.
NamedTensors conv_bn_state_dict() {
  torch::manual_seed(7);
  const auto weight = torch::randn({3, 3, 3, 4}).permute({3, 2, 0, 1});  // [4, 3, 3, 3], not contiguous
  const auto biases = torch::randn({8});
  return {{"0.weight", weight},
          {"0.bias", biases.narrow(0, 0, 4)},
          {"1.weight", torch::rand({4}) + 0.5},
          {"1.bias", biases.narrow(0, 4, 4)},
          {"1.running_mean", torch::randn({4})},
          {"1.running_var", torch::rand({4}) + 1.0},
          {"1.num_batches_tracked", torch::full({}, 1234, torch::kInt64)}};
}

TEST(TorchSaveWriter, PyTorchLoadsWhatWeWriteAndWeReadWhatItWrites) {
  if (const auto why = python_torch_missing(); !why.empty()) {
    GTEST_SKIP() << kPython << " cannot import torch (scripts/setup.sh installs python3-torch): " << why;
  }
  const std::string dtypes_path = temp_path("dtypes_for_python.pt");
  const std::string model_path = temp_path("model_100.ckpt");
  const std::string optim_path = temp_path("optimization_for_python.ckpt");
  write_state_dict_torch_save(dtype_values_in_python_order(), dtypes_path);
  const NamedTensors model = conv_bn_state_dict();
  write_state_dict_torch_save(model, model_path);
  std::vector<torch::Tensor> params;
  for (const char* key : {"0.weight", "0.bias", "1.weight", "1.bias"}) {
    for (const auto& [k, t] : model) {
      if (k == key) params.push_back(t);
    }
  }
  write_torch_save(optimizer_checkpoint(params, 100), optim_path);

  // Python checks values against its own formulas (make_fixtures.py), loads the state dict
  // into the module strictly and the optimizer state into Adam, then saves both again.
  const std::string script = write_script("load.py", R"PY(
import collections, sys, torch
dtypes_path, model_path, optim_path, out_model, out_optim, out_dtypes, fixtures = sys.argv[1:]
sys.path.insert(0, fixtures)
from make_fixtures import dtype_tensors

d = torch.load(dtypes_path, map_location='cpu')
expected = dtype_tensors()
assert type(d) is collections.OrderedDict, type(d)
assert list(d.keys()) == list(expected.keys()), list(d.keys())
for k, e in expected.items():
    t = d[k]
    assert t.dtype == e.dtype and t.shape == e.shape and torch.equal(t, e) and not t.requires_grad, (k, t, e)
print('dtypes', len(d))

model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
sd = torch.load(model_path, map_location='cpu')
print('model keys', list(sd.keys()))
print('conv weight', tuple(sd['0.weight'].shape), sd['0.weight'].stride(), sd['0.weight'].is_contiguous())
print('shared biases', sd['0.bias'].storage().data_ptr() == sd['1.bias'].storage().data_ptr())
print(model.load_state_dict(sd))

ckpt = torch.load(optim_path, map_location='cpu')
print('global_step', repr(ckpt['global_step']), 'epoch', repr(ckpt['epoch']))
print('param_groups', repr(ckpt['optimizer']['param_groups']))
print('state', {k: sorted(v.keys()) for k, v in ckpt['optimizer']['state'].items()})
optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
optimizer.load_state_dict(ckpt['optimizer'])
print('lr', optimizer.param_groups[0]['lr'], 'betas', optimizer.param_groups[0]['betas'])

torch.save(model.state_dict(), out_model)
torch.save(optimizer.state_dict(), out_optim)
torch.save(expected, out_dtypes)
print('OK')
)PY");
  const std::string out_model = temp_path("model_from_python.pt");
  const std::string out_optim = temp_path("optim_from_python.pt");
  const std::string out_dtypes = temp_path("dtypes_from_python.pt");
  const std::string python_log = temp_path("python_stderr.txt");  // warnings stay out of the compared output
  const auto r = admis::test::run_command(std::string(kPython) + " " + script + " " + dtypes_path + " " + model_path +
                                          " " + optim_path + " " + out_model + " " + out_optim + " " + out_dtypes +
                                          " " + ADMIS_SOURCE_DIR + "/tests/data/weights 2>" + python_log);
  std::cout << r.output;
  ASSERT_EQ(r.status, 0) << r.output << admis::test::read_text(python_log);
  const std::string expected_output =
      "dtypes 12\n"
      "model keys ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var', "
      "'1.num_batches_tracked']\n"
      "conv weight (4, 3, 3, 3) (1, 4, 36, 12) False\n"
      "shared biases True\n"
      "<All keys matched successfully>\n"
      "global_step 100 epoch 0\n"
      "param_groups [{'lr': 0.0001, 'betas': (0.9, 0.999), 'eps': 1e-08, 'weight_decay': 0, 'amsgrad': False, "
      "'params': [0, 1, 2, 3]}]\n"
      "state {0: ['exp_avg', 'exp_avg_sq', 'step'], 1: ['exp_avg', 'exp_avg_sq', 'step'], "
      "2: ['exp_avg', 'exp_avg_sq', 'step'], 3: ['exp_avg', 'exp_avg_sq', 'step']}\n"
      "lr 0.0001 betas (0.9, 0.999)\n"
      "OK\n";
  EXPECT_EQ(r.output, expected_output);

  // What Python saved after loading: the same values, bit for bit.
  const StateDict model_back = read_weights(out_model);
  ASSERT_EQ(model_back.size(), model.size());
  for (const auto& [key, tensor] : model) EXPECT_TRUE(same_tensor(model_back.at(key), tensor.contiguous())) << key;
  const StateDict optim_back = read_weights(out_optim);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::string prefix = "state." + std::to_string(i) + ".";
    EXPECT_TRUE(same_tensor(optim_back.at(prefix + "exp_avg"), params[i] * 0.125 + static_cast<double>(i))) << i;
    EXPECT_TRUE(same_tensor(optim_back.at(prefix + "exp_avg_sq"), params[i] * params[i] * 0.25)) << i;
    EXPECT_TRUE(same_tensor(optim_back.at(prefix + "step"), torch::full({}, 100.0, torch::kFloat32))) << i;
  }
  // torch.save of the same state dict (made in Python) reads as what we wrote reads.
  const StateDict ours = read_weights(dtypes_path);
  const StateDict theirs = read_weights(out_dtypes);
  ASSERT_EQ(keys_of(theirs), keys_of(ours));
  for (const auto& [key, tensor] : ours) EXPECT_TRUE(same_tensor(theirs.at(key), tensor)) << key;
}

}  // namespace
