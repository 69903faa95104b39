// read_torch_save on checkpoints torch.save wrote: every dtype, GPU-tagged storages,
// shared storages and views, training checkpoints, the parity checkpoints, broken files.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "admis/host/weights.h"
#include "weights_fixtures.h"

namespace {

using admis::StateDict;
using admis::host::read_safetensors;
using admis::host::read_torch_save;
using admis::host::read_weights;
using admis::weights_test::dtype_values;
using admis::weights_test::error_of;
using admis::weights_test::fixture;
using admis::weights_test::read_file_bytes;
using admis::weights_test::same_tensor;
using admis::weights_test::write_file_bytes;

std::vector<std::string> keys_of(const StateDict& sd) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  return keys;
}

// Every entry equal (dtype, shape, values) to the expected safetensors export, same keys.
void expect_same_state_dict(const StateDict& actual, const StateDict& expected) {
  EXPECT_EQ(keys_of(actual), keys_of(expected));
  for (const auto& [key, tensor] : expected) {
    auto it = actual.find(key);
    if (it == actual.end()) continue;
    EXPECT_TRUE(same_tensor(it->second, tensor)) << key;
  }
}

TEST(TorchSave, ReadsEveryDtype) {
  expect_same_state_dict(read_torch_save(fixture("dtypes.pt")), dtype_values());
}

TEST(TorchSave, FindsRecordsWhateverTheArchiveFolderIsCalled) {
  // Rewritten by Python's zipfile under 'archive/' instead of the file's stem.
  expect_same_state_dict(read_torch_save(fixture("archive_folder.pt")), dtype_values());
}

TEST(TorchSave, ReadsProtocol4Pickles) {
  expect_same_state_dict(read_torch_save(fixture("dtypes_protocol4.pt")), dtype_values());
}

TEST(TorchSave, StoragesSavedOnAGpuLoadOnTheCpu) {
  // The pickle tags both storages 'cuda:0' (checked by make_fixtures.py).
  const auto sd = read_torch_save(fixture("cuda_location.pt"));
  ASSERT_EQ(keys_of(sd), (std::vector<std::string>{"bias", "weight"}));
  EXPECT_TRUE(sd.at("weight").device().is_cpu());
  EXPECT_TRUE(same_tensor(sd.at("weight"), torch::arange(6, torch::kFloat32).reshape({2, 3}) - 1.5));
  EXPECT_TRUE(same_tensor(sd.at("bias"), torch::tensor({0.5f, -0.5f})));
}

TEST(TorchSave, SharedStoragesAndViewsAreRebuiltAndOwnTheirMemory) {
  const auto sd = read_torch_save(fixture("views.pt"));
  const auto base = torch::arange(24, torch::kFloat32);
  EXPECT_TRUE(same_tensor(sd.at("base"), base));
  EXPECT_TRUE(same_tensor(sd.at("alias"), base));
  EXPECT_TRUE(same_tensor(sd.at("matrix"), base.view({4, 6})));
  EXPECT_TRUE(same_tensor(sd.at("transposed"), base.view({4, 6}).t().contiguous()));
  EXPECT_TRUE(same_tensor(sd.at("offset_view"), base.slice(0, 5, 11)));
  EXPECT_TRUE(same_tensor(sd.at("strided"), base.slice(0, 2, 24, 5)));
  EXPECT_TRUE(same_tensor(sd.at("offset_block"), base.slice(0, 6).view({3, 6}).slice(1, 1, 4).contiguous()));
  // Python's own view of the values agrees (written as contiguous copies).
  expect_same_state_dict(sd, read_safetensors(fixture("views_expected.safetensors")));

  // Results are contiguous and independent: writing one entry leaves the others alone.
  for (const auto& [key, t] : sd) {
    EXPECT_TRUE(t.is_contiguous()) << key;
    EXPECT_EQ(t.storage_offset(), 0) << key;
  }
  sd.at("alias").fill_(-1.0f);
  EXPECT_TRUE(same_tensor(sd.at("base"), base));
  EXPECT_TRUE(same_tensor(sd.at("offset_view"), base.slice(0, 5, 11)));
  // A view of part of a storage does not keep the whole storage alive.
  EXPECT_EQ(sd.at("offset_view").storage().nbytes(), 6 * sizeof(float));
}

TEST(TorchSave, TrainingCheckpointUsesItsStateDictAndSkipsOtherObjects) {
  // Beside 'state_dict' the checkpoint holds an optimizer state, argparse.Namespace,
  // numpy scalars and arrays, torch.Size, a set, a Counter, 2**70, bytes, None.
  const auto sd = read_torch_save(fixture("training_checkpoint.ckpt"));
  expect_same_state_dict(sd, read_safetensors(fixture("training_checkpoint_expected.safetensors")));
  EXPECT_EQ(keys_of(sd), (std::vector<std::string>{
                             "module.body.0.bias", "module.body.0.weight", "module.body.1.bias",
                             "module.body.1.num_batches_tracked", "module.body.1.running_mean",
                             "module.body.1.running_var", "module.body.1.weight"}));
  EXPECT_EQ(sd.at("module.body.1.num_batches_tracked").item<std::int64_t>(), 7);
}

TEST(TorchSave, PlainNestedDictsAreFlattenedWithDots) {
  const auto sd = read_torch_save(fixture("plain_dict.pt"));
  // 'count', 'name' and the list are not weights.
  expect_same_state_dict(sd, read_safetensors(fixture("plain_dict_expected.safetensors")));
}

TEST(TorchSave, ParametersAreReadAsTensors) {
  const auto sd = read_torch_save(fixture("parameters.pt"));
  expect_same_state_dict(sd, read_safetensors(fixture("parameters_expected.safetensors")));
  EXPECT_FALSE(sd.at("weight").requires_grad());
}

TEST(TorchSave, LegacyFilesAreRefusedWithHowToConvert) {
  const std::string path = fixture("legacy.pt");
  for (auto read : {read_torch_save, read_weights}) {
    const std::string message = error_of([&] { read(path); });
    EXPECT_NE(message.find(path + ": legacy torch.save format (PyTorch < 1.6)"), std::string::npos) << message;
    EXPECT_NE(message.find("torch.save(obj, new_path) with PyTorch >= 1.6"), std::string::npos) << message;
    EXPECT_NE(message.find("admis weights convert"), std::string::npos) << message;
  }
}

TEST(TorchSave, TruncatedAndCorruptFilesNameTheFile) {
  const std::string truncated = fixture("truncated.pt");
  const std::string message = error_of([&] { read_torch_save(truncated); });
  EXPECT_NE(message.find(truncated + ": not a readable torch.save zip archive (truncated or corrupt?)"),
            std::string::npos)
      << message;

  // A damaged zip directory (its end record's signature overwritten).
  const std::string tmp = admis::test::temp_dir("weights") + "/damaged.pt";
  std::string bytes = read_file_bytes(fixture("cuda_location.pt"));
  const auto end_record = bytes.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(end_record, std::string::npos);
  bytes[end_record + 2] = 'X';
  write_file_bytes(tmp, bytes);
  const std::string damaged = error_of([&] { read_torch_save(tmp); });
  EXPECT_NE(damaged.find(tmp + ": not a readable torch.save zip archive (truncated or corrupt?)"), std::string::npos)
      << damaged;

  // The pickle and the storage record disagree on the storage's size.
  const std::string mismatch_path = fixture("storage_size_mismatch.pt");
  const std::string mismatch = error_of([&] { read_torch_save(mismatch_path); });
  EXPECT_NE(mismatch.find(mismatch_path + ": storage data/0 holds 24 bytes but the pickle describes 7 elements of "
                                          "float32"),
            std::string::npos)
      << mismatch;

  // data.pkl cut short.
  const std::string cut_path = fixture("truncated_pickle.pt");
  const std::string cut = error_of([&] { read_torch_save(cut_path); });
  EXPECT_NE(cut.find(cut_path + " (data.pkl): pickle: data ends early"), std::string::npos) << cut;

  const std::string text = admis::test::temp_dir("weights") + "/notes.pt";
  write_file_bytes(text, "these are not weights\n");
  EXPECT_NE(error_of([&] { read_torch_save(text); }).find(text + ": not a torch.save zip archive"), std::string::npos);
  EXPECT_NE(error_of([&] { read_weights(text); }).find(text + ": unrecognised weights format"), std::string::npos);

  const std::string absent = admis::test::temp_dir("weights") + "/absent.pt";
  EXPECT_NE(error_of([&] { read_weights(absent); }).find(absent + ": cannot open: No such file"), std::string::npos);
}

TEST(TorchSave, TorchScriptArchivesAreRefused) {
  const std::string path = fixture("torchscript.pt");
  const std::string message = error_of([&] { read_torch_save(path); });
  EXPECT_NE(message.find(path + ": a TorchScript archive"), std::string::npos) << message;
}

// The parity checkpoints, saved as the reference projects save theirs. parity_sums.json
// holds float64 sums computed by torch.load at fixture time.
TEST(TorchSave, EveryParityCheckpointLoadsWithTheValuesTorchLoadSees) {
  const auto sums = nlohmann::json::parse(read_file_bytes(fixture("parity_sums.json")));
  ASSERT_GE(sums.size(), 8u);
  for (const auto& [name, expected] : sums.items()) {
    SCOPED_TRACE(name);
    const auto sd = read_torch_save(admis::test::parity_file(name));
    ASSERT_EQ(sd.size(), expected["count"].get<std::size_t>());
    double total = 0.0;
    std::int64_t values = 0;
    for (const auto& [key, t] : sd) {
      total += t.to(torch::kFloat64).sum().item<double>();
      values += t.numel();
    }
    EXPECT_EQ(values, expected["total_values"].get<std::int64_t>());
    const double want_total = expected["total_sum"].get<double>();
    EXPECT_NEAR(total, want_total, 1e-9 * std::max(1.0, std::abs(want_total)));
    for (const auto& [key, info] : expected["tensors"].items()) {
      SCOPED_TRACE(key);
      ASSERT_TRUE(sd.count(key));
      const auto& t = sd.at(key);
      EXPECT_EQ(admis::weights_test::dtype_string(t.scalar_type()), info["dtype"].get<std::string>());
      EXPECT_EQ(t.sizes().vec(), info["shape"].get<std::vector<std::int64_t>>());
      // Sums in float64 over the same values: equal up to summation order.
      const double sum = t.to(torch::kFloat64).sum().item<double>();
      const double abs_sum = t.to(torch::kFloat64).abs().sum().item<double>();
      const double scale = std::max(1.0, info["abs_sum"].get<double>());
      EXPECT_NEAR(sum, info["sum"].get<double>(), 1e-12 * scale);
      EXPECT_NEAR(abs_sum, info["abs_sum"].get<double>(), 1e-12 * scale);
    }
  }
}

TEST(TorchSave, ParityCheckpointsHaveTheReferenceLayout) {
  // IDiff-Face DDPM checkpoints: UNet under 'eps_model.', schedule buffers at top level
  // (float32 in the CA checkpoint, float16 in the two others, like their UNet weights).
  for (const char* name : {"idiff_unet_ca.ckpt", "idiff_unet_adagn.ckpt", "idiff_unet_uncond.ckpt"}) {
    SCOPED_TRACE(name);
    const auto sd = read_torch_save(admis::test::parity_file(name));
    const auto dtype = sd.at("eps_model.image_proj.weight").scalar_type();
    EXPECT_TRUE(dtype == torch::kFloat32 || dtype == torch::kFloat16);
    for (const char* buffer : {"betas", "alphas", "alpha_bars", "sigmas", "sqrt_alpha_bars"}) {
      ASSERT_TRUE(sd.count(buffer)) << buffer;
      EXPECT_EQ(sd.at(buffer).sizes().vec(), std::vector<std::int64_t>{1000});
      EXPECT_EQ(sd.at(buffer).scalar_type(), dtype) << buffer;
    }
    // Linear schedule from 1e-4 to 0.02 over T=1000 steps, to the stored precision.
    const double eps = dtype == torch::kFloat16 ? 1e-3 : 1e-6;
    EXPECT_NEAR(sd.at("betas")[0].item<double>(), 1e-4, 1e-4 * eps);
    EXPECT_NEAR(sd.at("betas")[999].item<double>(), 0.02, 0.02 * eps);
    std::size_t unet = 0;
    for (const auto& [key, t] : sd) {
      if (key.rfind("eps_model.", 0) == 0) {
        ++unet;
        EXPECT_EQ(t.scalar_type(), dtype) << key;
      }
    }
    EXPECT_EQ(unet + 8, sd.size()) << "all but the 8 schedule buffers are UNet weights";
  }
  // Recognition backbones stored in float16, BatchNorm counters in int64.
  for (const char* name : {"tface_ir_18.pt", "elasticface_iresnet18.pt"}) {
    SCOPED_TRACE(name);
    const auto sd = read_torch_save(admis::test::parity_file(name));
    std::size_t halves = 0;
    for (const auto& [key, t] : sd) {
      if (key.size() > 20 && key.compare(key.size() - 19, 19, "num_batches_tracked") == 0) {
        EXPECT_EQ(t.scalar_type(), torch::kInt64) << key;
      } else {
        EXPECT_EQ(t.scalar_type(), torch::kFloat16) << key;
        ++halves;
      }
    }
    EXPECT_GT(halves, 100u);
  }
  const auto ir18 = read_torch_save(admis::test::parity_file("tface_ir_18.pt"));
  EXPECT_EQ(ir18.at("input_layer.0.weight").sizes().vec(), (std::vector<std::int64_t>{64, 3, 3, 3}));
}

}  // namespace
