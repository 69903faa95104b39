// Loading state dicts into modules (strict and not, prefixes, ignored keys, dtype
// conversion), and the `admis weights inspect / convert` commands.

#include <gtest/gtest.h>

#include <sstream>

#include "admis/host/weights.h"
#include "weights_fixtures.h"

namespace {

using admis::LoadOptions;
using admis::LoadReport;
using admis::StateDict;
using admis::host::convert_weights;
using admis::host::inspect_weights;
using admis::host::load_state_dict;
using admis::host::module_state_dict;
using admis::host::read_safetensors;
using admis::host::read_torch_save;
using admis::weights_test::error_of;
using admis::weights_test::fixture;
using admis::weights_test::same_tensor;

// The Python TinyNet of make_fixtures.py: body = Sequential(Linear(3, 2), BatchNorm1d(2)).
struct TinyNet : torch::nn::Module {
  explicit TinyNet(int out_features = 2) {
    body = register_module("body", torch::nn::Sequential(torch::nn::Linear(3, out_features),
                                                         torch::nn::BatchNorm1d(out_features)));
  }
  torch::nn::Sequential body{nullptr};
};

std::vector<std::string> keys_of(const StateDict& sd) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  return keys;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A module tree whose state dict has exactly the given names and shapes (float32
// parameters for floating entries, buffers of the stored type otherwise).
std::shared_ptr<torch::nn::Module> mirror_module(const StateDict& weights) {
  auto root = std::make_shared<torch::nn::Module>();
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules{{"", root}};
  for (const auto& [key, t] : weights) {
    std::string path;
    auto parent = root;
    std::size_t start = 0;
    for (std::size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', start)) {
      const std::string name = key.substr(start, dot - start);
      path += name + ".";
      auto& child = modules[path];
      if (!child) child = parent->register_module(name, std::make_shared<torch::nn::Module>());
      parent = child;
      start = dot + 1;
    }
    const std::string leaf = key.substr(start);
    if (t.is_floating_point()) {
      parent->register_parameter(leaf, torch::zeros(t.sizes(), torch::kFloat32));
    } else {
      parent->register_buffer(leaf, torch::zeros(t.sizes(), t.options()));
    }
  }
  return root;
}

const std::vector<std::string> kTinyNetKeys = {"body.0.bias",        "body.0.weight",
                                               "body.1.bias",        "body.1.num_batches_tracked",
                                               "body.1.running_mean", "body.1.running_var",
                                               "body.1.weight"};

TEST(ModuleStateDict, NamesParametersAndBuffersAsPython) {
  TinyNet net;
  EXPECT_EQ(keys_of(module_state_dict(net)), kTinyNetKeys);
  // The checkpoint PyTorch saved from the same network (behind DataParallel's 'module.').
  std::vector<std::string> python_keys;
  for (const auto& key : keys_of(read_torch_save(fixture("training_checkpoint.ckpt")))) {
    python_keys.push_back(key.substr(std::string("module.").size()));
  }
  EXPECT_EQ(python_keys, kTinyNetKeys);
}

TEST(LoadStateDict, StrictLoadWithAStrippedPrefix) {
  TinyNet net;
  const auto weights = read_torch_save(fixture("training_checkpoint.ckpt"));
  LoadOptions options;
  options.strip_prefixes = {"module."};
  const LoadReport report = load_state_dict(net, weights, options, "training_checkpoint.ckpt");
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.loaded, 7u);
  const auto expected = read_safetensors(fixture("training_checkpoint_expected.safetensors"));
  const auto loaded = module_state_dict(net);
  for (const auto& key : kTinyNetKeys) EXPECT_TRUE(same_tensor(loaded.at(key), expected.at("module." + key))) << key;
}

TEST(LoadStateDict, StrictFailureListsEveryKeyAndLeavesTheModuleAlone) {
  TinyNet net;
  const auto before = module_state_dict(net).at("body.0.weight").clone();
  const auto weights = read_torch_save(fixture("training_checkpoint.ckpt"));
  const std::string message = error_of([&] { load_state_dict(net, weights, LoadOptions{}, "tiny.ckpt"); });
  EXPECT_TRUE(contains(message, "tiny.ckpt: weights do not match the module: 7 missing, 7 unexpected, 0 shape "
                                "mismatches"))
      << message;
  EXPECT_TRUE(contains(message, "missing keys (in the module, not in the checkpoint) (7):")) << message;
  EXPECT_TRUE(contains(message, "unexpected keys (in the checkpoint, not in the module) (7):")) << message;
  for (const auto& key : kTinyNetKeys) {
    EXPECT_TRUE(contains(message, "\n    " + key + "\n")) << key;
    EXPECT_TRUE(contains(message, "\n    module." + key)) << key;
  }
  EXPECT_TRUE(contains(message, "carry the prefix 'module.'; add it to strip_prefixes")) << message;
  EXPECT_TRUE(same_tensor(module_state_dict(net).at("body.0.weight"), before)) << "nothing copied on failure";
}

TEST(LoadStateDict, ShapeMismatchesNameBothShapes) {
  TinyNet net(4);
  const auto weights = read_torch_save(fixture("training_checkpoint.ckpt"));
  LoadOptions options;
  options.strip_prefixes = {"module."};
  const std::string message = error_of([&] { load_state_dict(net, weights, options, "tiny.ckpt"); });
  EXPECT_TRUE(contains(message, "0 missing, 0 unexpected, 6 shape mismatches")) << message;
  EXPECT_TRUE(contains(message, "body.0.weight: checkpoint [2, 3] vs module [4, 3]")) << message;
  EXPECT_TRUE(contains(message, "body.1.running_var: checkpoint [2] vs module [4]")) << message;
  EXPECT_FALSE(contains(message, "num_batches_tracked")) << "scalars match";
}

TEST(LoadStateDict, NonStrictReportsAndLoadsWhatMatches) {
  TinyNet net;
  auto weights = read_torch_save(fixture("training_checkpoint.ckpt"));
  weights["module.extra"] = torch::ones({1});
  weights["module.body.0.weight"] = torch::ones({5, 3});
  weights.erase("module.body.1.running_var");
  LoadOptions options;
  options.strict = false;
  options.strip_prefixes = {"module."};
  const LoadReport report = load_state_dict(net, weights, options, "tiny.ckpt");
  EXPECT_EQ(report.missing, std::vector<std::string>{"body.1.running_var"});
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"extra"});
  EXPECT_EQ(report.mismatched, std::vector<std::string>{"body.0.weight: checkpoint [5, 3] vs module [2, 3]"});
  EXPECT_EQ(report.loaded, 5u);
  EXPECT_TRUE(same_tensor(module_state_dict(net).at("body.0.bias"), weights.at("module.body.0.bias")));
  EXPECT_TRUE(same_tensor(module_state_dict(net).at("body.1.running_var"), torch::ones({2})))
      << "missing entries keep their initial values";
}

TEST(LoadStateDict, IgnoredKeysAreNeitherLoadedNorUnexpected) {
  TinyNet net;
  auto weights = read_torch_save(fixture("training_checkpoint.ckpt"));
  weights["module.schedule.betas"] = torch::ones({10});
  LoadOptions options;
  options.strip_prefixes = {"module."};
  options.ignore_keys = {"schedule.betas"};
  EXPECT_TRUE(load_state_dict(net, weights, options, "tiny.ckpt").ok());
}

TEST(LoadStateDict, PrefixesAreStrippedInOrder) {
  TinyNet net;
  StateDict weights;
  for (const auto& [key, t] : module_state_dict(net)) weights["module.eps_model." + key] = t.clone();
  LoadOptions options;
  options.strip_prefixes = {"module.", "eps_model."};
  EXPECT_EQ(load_state_dict(net, weights, options, "x").loaded, 7u);
  options.strip_prefixes = {"eps_model.", "module."};  // 'eps_model.' is not at the start yet
  options.strict = false;
  EXPECT_EQ(load_state_dict(net, weights, options, "x").unexpected.size(), 7u);
}

TEST(LoadStateDict, ConvertsDtypeIntoTheModule) {
  TinyNet net;
  StateDict weights;
  for (const auto& [key, t] : module_state_dict(net)) {
    // float16 and float64 checkpoints load into a float32 module, values rounded once.
    const auto values = torch::arange(t.numel(), torch::kFloat64).reshape(t.sizes()) * 0.25 + 1.0;
    weights[key] = t.is_floating_point() ? values.to(key.find("weight") != std::string::npos ? torch::kFloat16
                                                                                               : torch::kFloat64)
                                         : torch::full(t.sizes(), 3, torch::kInt64);
  }
  EXPECT_EQ(load_state_dict(net, weights, LoadOptions{}, "x").loaded, 7u);
  for (const auto& [key, t] : module_state_dict(net)) {
    if (key.find("num_batches_tracked") != std::string::npos) {
      EXPECT_TRUE(same_tensor(t, torch::full({}, 3, torch::kInt64)));
    } else {
      EXPECT_EQ(t.scalar_type(), torch::kFloat32) << key;
      EXPECT_TRUE(same_tensor(t, weights.at(key).to(torch::kFloat32))) << key;
    }
  }
}

TEST(LoadStateDict, LongListsAreCappedButCounted) {
  torch::nn::Module wide;
  for (int i = 0; i < 40; ++i) wide.register_parameter("p" + std::to_string(100 + i), torch::zeros({1}));
  const std::string message = error_of([&] { load_state_dict(wide, StateDict{}, LoadOptions{}, "empty.pt"); });
  EXPECT_TRUE(contains(message, "40 missing, 0 unexpected")) << message;
  EXPECT_TRUE(contains(message, "(40):\n    p100\n")) << message;
  EXPECT_TRUE(contains(message, "\n    p124\n    ... and 15 more")) << message;
  EXPECT_FALSE(contains(message, "p125")) << message;
}

TEST(LoadStateDict, IDiffCheckpointLoadsByStrippingItsPrefixAndIgnoringTheSchedule) {
  const std::string path = admis::test::parity_file("idiff_unet_ca.ckpt");
  const auto weights = read_torch_save(path);
  StateDict unet;
  std::vector<std::string> schedule;
  for (const auto& [key, t] : weights) {
    if (key.rfind("eps_model.", 0) == 0) {
      unet[key.substr(10)] = t;
    } else {
      schedule.push_back(key);
    }
  }
  EXPECT_EQ(schedule.size(), 8u);
  auto module = mirror_module(unet);
  LoadOptions options;
  options.strip_prefixes = {"eps_model."};
  options.ignore_keys = schedule;
  const LoadReport report = load_state_dict(*module, weights, options, path);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.loaded, unet.size());
  const auto loaded = module_state_dict(*module);
  for (const auto& [key, t] : unet) ASSERT_TRUE(same_tensor(loaded.at(key), t.to(torch::kFloat32))) << key;

  // Without the ignore list the schedule buffers are the only complaint.
  options.ignore_keys.clear();
  const std::string message = error_of([&] { load_state_dict(*module, weights, options, path); });
  EXPECT_TRUE(contains(message, path + ": weights do not match the module: 0 missing, 8 unexpected")) << message;
  EXPECT_TRUE(contains(message, "\n    betas\n")) << message;
}

TEST(InspectWeights, ListsKeysDtypesShapesAndTotals) {
  std::ostringstream out;
  inspect_weights(fixture("dtypes.pt"), out);
  const std::string text = out.str();
  EXPECT_TRUE(contains(text, "dtypes.pt: torch.save zip archive, 12 tensors\n")) << text;
  EXPECT_TRUE(contains(text, "\nf16     float16   [2, 3]\n")) << text;
  EXPECT_TRUE(contains(text, "\nempty   float32   [0, 3]\n")) << text;
  EXPECT_TRUE(contains(text, "\nscalar  float32   []\n")) << text;
  EXPECT_TRUE(contains(text, "\nbf16    bfloat16  [5]\n")) << text;
  // 12+6+5+4+5+2+2+2+3+3+1+0 values; 48+12+10+32+40+8+4+2+3+3+4 bytes.
  EXPECT_TRUE(contains(text, "total: 45 values (parameters and buffers) in 12 tensors, 166 bytes")) << text;

  std::ostringstream st;
  inspect_weights(fixture("dtypes.safetensors"), st);
  EXPECT_TRUE(contains(st.str(), ": safetensors, 12 tensors\nmetadata format = pt\n")) << st.str();
}

TEST(ConvertWeights, WritesSafetensorsWithPrefixesStripped) {
  const std::string dir = admis::test::temp_dir("convert");
  const std::string out = dir + "/tiny.safetensors";
  admis::host::write_safetensors({{"old", torch::ones({1})}}, out);  // an existing output is replaced
  convert_weights(fixture("training_checkpoint.ckpt"), out, {"module."});
  std::map<std::string, std::string> metadata;
  const auto converted = read_safetensors(out, &metadata);
  EXPECT_EQ(keys_of(converted), kTinyNetKeys);
  const auto expected = read_safetensors(fixture("training_checkpoint_expected.safetensors"));
  for (const auto& key : kTinyNetKeys) EXPECT_TRUE(same_tensor(converted.at(key), expected.at("module." + key)));
  EXPECT_EQ(metadata.at("format"), "pt");
  EXPECT_EQ(metadata.at("converted_from"), "training_checkpoint.ckpt");
  // The converted file loads strictly without options.
  TinyNet net;
  EXPECT_TRUE(load_state_dict(net, admis::host::read_weights(out), LoadOptions{}, out).ok());
}

TEST(ConvertWeights, RefusesCollisionsAndLegacyFilesWithoutWritingAnything) {
  const std::string dir = admis::test::temp_dir("convert-errors");
  const std::string out = dir + "/x.safetensors";
  const std::string twice = dir + "/twice.safetensors";
  admis::host::write_safetensors({{"module.w", torch::ones({1})}, {"w", torch::zeros({1})}}, twice);
  const std::string collision = error_of([&] { convert_weights(twice, out, {"module."}); });
  EXPECT_TRUE(contains(collision, twice + ": keys 'module.w' and 'w' both become 'w' after stripping prefixes"))
      << collision;
  const std::string empty = error_of([&] { convert_weights(fixture("plain_dict.pt"), out, {"b.", "c"}); });
  EXPECT_TRUE(contains(empty, "key 'b.c' becomes empty after stripping prefixes")) << empty;
  const std::string legacy = error_of([&] { convert_weights(fixture("legacy.pt"), out, {}); });
  EXPECT_TRUE(contains(legacy, "legacy torch.save format")) << legacy;
  struct stat st;
  EXPECT_NE(::stat(out.c_str(), &st), 0) << "no output written";
}

}  // namespace
