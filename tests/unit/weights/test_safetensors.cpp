// safetensors: round trips of every dtype, the reference writer's exact layout, files
// written by Python, atomic writes, and broken files.

#include <dirent.h>
#include <gtest/gtest.h>

#include "admis/host/weights.h"
#include "weights_fixtures.h"

namespace {

using admis::StateDict;
using admis::host::read_safetensors;
using admis::host::read_weights;
using admis::host::write_safetensors;
using admis::weights_test::dtype_values;
using admis::weights_test::error_of;
using admis::weights_test::fixture;
using admis::weights_test::read_file_bytes;
using admis::weights_test::same_tensor;
using admis::weights_test::write_file_bytes;

const std::map<std::string, std::string> kFixtureMetadata = {{"format", "pt"}, {"note", "made by make_fixtures.py"}};

void expect_same_state_dict(const StateDict& actual, const StateDict& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [key, tensor] : expected) {
    ASSERT_TRUE(actual.count(key)) << key;
    EXPECT_TRUE(same_tensor(actual.at(key), tensor)) << key;
  }
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  const std::string path = admis::test::temp_dir("safetensors") + "/all.safetensors";
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"source", "unit test"}, {"empty", ""}};
  write_safetensors(dtype_values(), path, metadata);
  std::map<std::string, std::string> read_back;
  expect_same_state_dict(read_safetensors(path, &read_back), dtype_values());
  EXPECT_EQ(read_back, metadata);
  // read_weights recognises the format by content, whatever the file is called.
  expect_same_state_dict(read_weights(path), dtype_values());
}

TEST(Safetensors, WritesTheReferenceLayoutByteForByte) {
  // dtypes.safetensors was written by make_fixtures.py following the reference writer:
  // dtype order, then names, metadata first, header padded with spaces to 8 bytes.
  const std::string path = admis::test::temp_dir("safetensors") + "/layout.safetensors";
  write_safetensors(dtype_values(), path, kFixtureMetadata);
  const std::string ours = read_file_bytes(path);
  const std::string reference = read_file_bytes(fixture("dtypes.safetensors"));
  EXPECT_EQ(ours, reference);
}

TEST(Safetensors, PadsTheHeaderWithSpacesTo8Bytes) {
  const std::string path = admis::test::temp_dir("safetensors") + "/padded.safetensors";
  // The JSON {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} is 54 bytes: 2 spaces follow.
  write_safetensors({{"a", torch::ones({1})}}, path);
  const std::string bytes = read_file_bytes(path);
  std::uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(bytes.at(i));
  EXPECT_EQ(header, 56u);
  EXPECT_EQ(bytes.substr(8, header), R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  )");
  EXPECT_EQ(bytes.size(), 8 + header + 4);
}

TEST(Safetensors, ReadsFilesWrittenByPython) {
  std::map<std::string, std::string> metadata;
  expect_same_state_dict(read_safetensors(fixture("dtypes.safetensors"), &metadata), dtype_values());
  EXPECT_EQ(metadata, kFixtureMetadata);

  // The heads' shared kernel, exported on its own and inside the heads' fixture.
  const auto kernel = read_safetensors(admis::test::parity_file("tface_heads_kernel.safetensors"));
  const auto heads = read_safetensors(admis::test::parity_file("tface_heads.safetensors"));
  ASSERT_EQ(kernel.size(), 1u);
  EXPECT_EQ(kernel.at("kernel").sizes().vec(), (std::vector<std::int64_t>{64, 10}));
  EXPECT_TRUE(same_tensor(kernel.at("kernel"), heads.at("kernel")));
  EXPECT_EQ(heads.at("labels").scalar_type(), torch::kInt64);
  EXPECT_EQ(heads.at("labels").sizes().vec(), std::vector<std::int64_t>{16});
}

TEST(Safetensors, WritesNonContiguousTensorsAsTheirValues) {
  const std::string path = admis::test::temp_dir("safetensors") + "/views.safetensors";
  const auto base = torch::arange(24, torch::kFloat32).view({4, 6});
  write_safetensors({{"t", base.t()}, {"slice", base.slice(1, 1, 3)}}, path);
  const auto back = read_safetensors(path);
  EXPECT_TRUE(same_tensor(back.at("t"), base.t().contiguous()));
  EXPECT_TRUE(same_tensor(back.at("slice"), base.slice(1, 1, 3).contiguous()));
}

TEST(Safetensors, WritesAreAtomic) {
  const std::string dir = admis::test::temp_dir("safetensors-atomic");
  const std::string path = dir + "/model.safetensors";
  write_safetensors({{"a", torch::ones({2})}}, path);
  write_safetensors({{"b", torch::zeros({3})}}, path);  // replaces the file
  const auto back = read_safetensors(path);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_TRUE(same_tensor(back.at("b"), torch::zeros({3})));
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"model.safetensors"}) << "no temporary file is left";

  // A write that fails (a dtype safetensors cannot hold) leaves the old file as it was.
  const std::string message =
      error_of([&] { write_safetensors({{"ok", torch::ones({2})}, {"z", torch::ones({2}, torch::kComplexFloat)}}, path); });
  EXPECT_NE(message.find(path + " [z]: dtype complex64 cannot be stored in safetensors"), std::string::npos)
      << message;
  EXPECT_TRUE(same_tensor(read_safetensors(path).at("b"), torch::zeros({3})));
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"model.safetensors"});

  const std::string nowhere = dir + "/missing-folder/model.safetensors";
  const std::string cannot = error_of([&] { write_safetensors({{"a", torch::ones({2})}}, nowhere); });
  EXPECT_NE(cannot.find(nowhere + ": cannot create " + nowhere + ".tmp-"), std::string::npos) << cannot;
}

// Byte surgery on a valid file: each kind of damage gets a message naming file and tensor.
class BrokenSafetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = admis::test::temp_dir("safetensors-broken");
    write_safetensors({{"w", torch::arange(4, torch::kFloat32)}}, dir_ + "/good.safetensors");
    good_ = read_file_bytes(dir_ + "/good.safetensors");
    header_length_ = 0;
    for (int i = 7; i >= 0; --i) header_length_ = (header_length_ << 8) | static_cast<unsigned char>(good_[i]);
  }
  // Writes `bytes` and returns the error reading them.
  std::string read_error(const std::string& bytes) {
    const std::string path = dir_ + "/broken.safetensors";
    write_file_bytes(path, bytes);
    path_ = path;
    return error_of([&] { read_safetensors(path); });
  }
  // The file with its JSON header replaced.
  std::string with_header(const std::string& json) {
    std::string length(8, '\0');
    for (int i = 0; i < 8; ++i) length[i] = static_cast<char>(json.size() >> (8 * i));
    return length + json + good_.substr(8 + header_length_);
  }
  std::string dir_, good_, path_;
  std::uint64_t header_length_ = 0;
};

TEST_F(BrokenSafetensors, TruncatedData) {
  const std::string message = read_error(good_.substr(0, good_.size() - 3));
  EXPECT_NE(message.find(path_ + " [w]: data_offsets [0, 16] run past the end of the file (13 data bytes"),
            std::string::npos)
      << message;
}

TEST_F(BrokenSafetensors, HeaderLongerThanTheFile) {
  std::string bytes = good_;
  bytes[5] = 0x01;
  const std::string message = read_error(bytes);
  EXPECT_NE(message.find(path_ + ": not a safetensors file, or truncated: header length"), std::string::npos)
      << message;
  EXPECT_NE(read_error("abc").find("too short for a header"), std::string::npos);
}

TEST_F(BrokenSafetensors, BadJson) {
  const std::string message = read_error(with_header("{\"w\": [1, 2"));
  EXPECT_NE(message.find(path_ + ": safetensors header is not valid JSON"), std::string::npos) << message;
}

TEST_F(BrokenSafetensors, OffsetsThatDisagreeWithTheShape) {
  const std::string message =
      read_error(with_header(R"({"w":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})"));
  EXPECT_NE(message.find(path_ + " [w]: data_offsets [0, 16] do not match dtype F32 and shape [5] (20 bytes)"),
            std::string::npos)
      << message;
}

TEST_F(BrokenSafetensors, OverlappingTensors) {
  const std::string message = read_error(with_header(
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})"));
  EXPECT_NE(message.find(path_ + " [b]: data_offsets [8, 16] overlap the previous tensor's data, which ends at 16"),
            std::string::npos)
      << message;
}

TEST_F(BrokenSafetensors, TrailingBytes) {
  const std::string message = read_error(good_ + "extra");
  EXPECT_NE(message.find(path_ + ": the tensors' data ends at byte 16 but the file holds 21 data bytes"),
            std::string::npos)
      << message;
}

TEST_F(BrokenSafetensors, UnknownDtype) {
  const std::string message =
      read_error(with_header(R"({"w":{"dtype":"F8_E4M3","shape":[16],"data_offsets":[0,16]}})"));
  EXPECT_NE(message.find(path_ + " [w]: unsupported dtype \"F8_E4M3\""), std::string::npos) << message;
}

TEST_F(BrokenSafetensors, MissingFields) {
  const std::string message = read_error(with_header(R"({"w":{"dtype":"F32","shape":[4]}})"));
  EXPECT_NE(message.find(path_ + " [w]: tensor entry needs dtype, shape and data_offsets"), std::string::npos)
      << message;
}

}  // namespace
