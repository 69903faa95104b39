#pragma once
// Fixture lookup for the weights tests: tests/data/weights (made by make_fixtures.py) and
// the shared parity folder (through the test support library).

#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/support.h"

namespace admis::weights_test {

// tests/data/weights/<name>; throws (failing the test) when absent: re-make the fixtures
// with tests/data/weights/make_fixtures.py.
inline std::string fixture(const std::string& name) {
  const std::string path = std::string(ADMIS_SOURCE_DIR) + "/tests/data/weights/" + name;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    throw std::runtime_error("missing test fixture " + path + " (run tests/data/weights/make_fixtures.py)");
  }
  return path;
}

inline std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_file_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

using admis::test::error_of;

// The dtype as Python prints it after "torch.".
inline std::string dtype_string(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat64: return "float64";
    case torch::kInt64: return "int64";
    case torch::kInt32: return "int32";
    case torch::kInt16: return "int16";
    case torch::kInt8: return "int8";
    case torch::kUInt8: return "uint8";
    case torch::kBool: return "bool";
    default: return c10::toString(dtype);
  }
}

// Exact equality with matching dtype and shape, with a readable failure.
inline ::testing::AssertionResult same_tensor(const torch::Tensor& actual, const torch::Tensor& expected) {
  if (actual.scalar_type() != expected.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype " << actual.scalar_type() << " vs expected "
                                         << expected.scalar_type();
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " vs expected " << expected.sizes();
  }
  if (!torch::equal(actual, expected)) {
    return ::testing::AssertionFailure() << "values differ:\n" << actual << "\nexpected\n" << expected;
  }
  return ::testing::AssertionSuccess();
}

// The values make_fixtures.py dtype_tensors() writes, rebuilt here from the same formulas.
inline admis::StateDict dtype_values() {
  using torch::tensor;
  const auto f32 = torch::kFloat32;
  admis::StateDict sd;
  sd["f32"] = torch::arange(12, f32).reshape({3, 4}) * 0.5 - 2.0;
  sd["f16"] = ((torch::arange(6, f32) - 3.0) * 0.25).to(torch::kFloat16).reshape({2, 3});
  sd["bf16"] = (torch::arange(5, f32) * 0.125).to(torch::kBFloat16);
  sd["f64"] = torch::arange(4, torch::kFloat64) / 3.0;
  sd["i64"] = tensor({-(std::int64_t{1} << 40), std::int64_t{-1}, std::int64_t{0}, std::int64_t{7},
                      std::int64_t{1} << 62},
                     torch::kInt64);
  sd["i32"] = tensor({-5, 123456}, torch::kInt32);
  sd["i16"] = tensor({-300, 300}, torch::kInt16);
  sd["i8"] = tensor({-128, 127}, torch::kInt8);
  sd["u8"] = tensor({0, 255, 17}, torch::kUInt8);
  sd["flag"] = tensor({true, false, true}, torch::kBool);
  sd["scalar"] = torch::full({}, 3.5, f32);
  sd["empty"] = torch::zeros({0, 3}, f32);
  return sd;
}

}  // namespace admis::weights_test
