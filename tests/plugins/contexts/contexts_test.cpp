// Context sources `gaussian` and `npy`: index-addressable determinism, IDiff-Face's
// normalised Gaussian statistics, the .npy reader against the NumPy-written fixtures
// (float32, float64, Fortran order; format versions 1.0 to 3.0), its errors, the ADMIS
// face folder next to the embeddings, and the family's conformance.
//
// Golden file: tests/golden/contexts_gaussian.safetensors. To re-record it after an
// intended change:
//   ADMIS_RECORD_GOLDEN=1 build/bin/test_contexts --gtest_filter='*GaussianGolden*'

#include <boost/filesystem.hpp>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "admis/host/conformance.h"
#include "contexts_test_util.h"

namespace admis::test::contexts {
namespace {

using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------
// gaussian

TEST(Gaussian, AnySubsetRegeneratesIdentically) {
  auto source = make_source("gaussian", {{"count", 20}});
  const auto all = source->read(0, 10).embeddings;
  ASSERT_EQ(all.sizes(), (std::vector<std::int64_t>{10, 512}));
  EXPECT_EQ(all.scalar_type(), torch::kFloat32);
  const auto part = source->read(5, 3).embeddings;
  EXPECT_TRUE(torch::equal(part, all.slice(0, 5, 8)));
  // Another object, other reads before: the same rows.
  auto again = make_source("gaussian", {{"count", 20}});
  again->read(12, 8);
  EXPECT_TRUE(torch::equal(again->read(7, 1).embeddings, all.slice(0, 7, 8)));
  EXPECT_FALSE(source->read(0, 1).faces.defined());
  EXPECT_EQ(source->read(3, 0).embeddings.size(0), 0);
}

TEST(Gaussian, SeedSelectsTheIdentities) {
  const auto a = make_source("gaussian", {{"count", 4}, {"seed", 1}})->read(0, 4).embeddings;
  const auto b = make_source("gaussian", {{"count", 4}, {"seed", 2}})->read(0, 4).embeddings;
  EXPECT_FALSE(torch::allclose(a, b));
  EXPECT_TRUE(torch::equal(a, make_source("gaussian", {{"count", 4}, {"seed", 1}})->read(0, 4).embeddings));
}

TEST(Gaussian, RowsAreUnitVectorsUniformOnTheSphere) {
  const std::int64_t n = 4000, d = 512;
  auto source = make_source("gaussian", {{"count", n}, {"embedding_size", d}});
  EXPECT_EQ(source->size(), n);
  EXPECT_EQ(source->embedding_size(), d);
  const auto x = source->read(0, n).embeddings.to(torch::kFloat64);
  const double max_norm_error = (x.norm(2, {1}) - 1).abs().max().item<double>();
  std::cout << "max | |x| - 1 | = " << max_norm_error << std::endl;
  EXPECT_LT(max_norm_error, 1e-6);
  // Each coordinate of a uniform unit vector has mean 0 and variance 1/d.
  const double mean = x.mean().item<double>();
  EXPECT_LT(std::abs(mean), 5 / std::sqrt(static_cast<double>(n * d)));
  const double var0 = x.select(1, 0).var().item<double>();
  EXPECT_NEAR(var0 * d, 1.0, 0.15);
  // Neighbouring indices are independent: their cosine has mean 0, variance 1/d.
  const auto cos = (x.slice(0, 0, n - 1) * x.slice(0, 1, n)).sum(1);
  EXPECT_LT(std::abs(cos.mean().item<double>()), 5 / std::sqrt(static_cast<double>(d * (n - 1))));
  EXPECT_NEAR(cos.var().item<double>() * d, 1.0, 0.15);
}

TEST(Gaussian, ReadOutsideTheRangeIsRefused) {
  auto source = make_source("gaussian", {{"count", 10}});
  const std::string msg = error_of([&] { source->read(8, 3); });
  EXPECT_THAT(msg, HasSubstr("context-source/gaussian"));
  EXPECT_THAT(msg, HasSubstr("read(8, 3) is outside the 10 contexts"));
  EXPECT_THAT(error_of([&] { source->read(-1, 1); }), HasSubstr("read(-1, 1)"));
}

bool recording() {
  const char* v = std::getenv("ADMIS_RECORD_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

StateDict gaussian_golden_run() {
  StateDict out;
  out["seed0.rows0_4"] = make_source("gaussian", {{"count", 1000}})->read(0, 4).embeddings;
  out["seed0.rows997_3"] = make_source("gaussian", {{"count", 1000}})->read(997, 3).embeddings;
  out["seed42.d128.rows10_2"] =
      make_source("gaussian", {{"count", 50}, {"seed", 42}, {"embedding_size", 128}})->read(10, 2).embeddings;
  return out;
}

TEST(GaussianGolden, ReproducesTheRecordedIdentities) {
  const std::string path = golden_dir() + "/contexts_gaussian.safetensors";
  if (recording()) {
    host::write_safetensors(gaussian_golden_run(), path,
                            {{"context-source", "gaussian"}, {"recorded_with", "ADMIS_RECORD_GOLDEN=1 test_contexts"}});
    std::cout << "recorded " << path << std::endl;
  }
  ASSERT_TRUE(boost::filesystem::exists(path))
      << path << " is missing; record it with ADMIS_RECORD_GOLDEN=1 test_contexts --gtest_filter='*GaussianGolden*'";
  const StateDict golden = host::read_safetensors(path);
  for (const auto& [key, actual] : gaussian_golden_run()) {
    ASSERT_TRUE(golden.count(key)) << path << " has no '" << key << "'";
    // The same generator draws; only the normalisation's rounding may differ between builds.
    EXPECT_TRUE(all_close(actual, golden.at(key), 1e-6)) << key;
  }
}

// ---------------------------------------------------------------------------------------
// npy: parity with the NumPy-written fixtures

torch::Tensor expected_contexts() { return host::read_safetensors(parity_file("formats_expected.safetensors")).at("contexts"); }

class NpyParity : public ::testing::TestWithParam<std::string> {};

TEST_P(NpyParity, ReadsTheFixtureAsNumPyWroteIt) {
  const torch::Tensor expected = expected_contexts();
  ASSERT_EQ(expected.sizes(), (std::vector<std::int64_t>{5, 512}));
  const std::string path = parity_file(GetParam());
  auto raw = make_source("npy", {{"path", path}, {"normalize", false}});
  EXPECT_EQ(raw->size(), 5);
  EXPECT_EQ(raw->embedding_size(), 512);
  const torch::Tensor got = raw->read(0, 5).embeddings;
  EXPECT_EQ(got.scalar_type(), torch::kFloat32);
  const double diff = (got - expected).abs().max().item<double>();
  std::cout << GetParam() << ": max abs diff (raw) = " << diff << " (tolerance 0: the same float32 values)" << std::endl;
  EXPECT_TRUE(torch::equal(got, expected));
  EXPECT_FALSE(raw->read(0, 1).faces.defined());

  // Default: rows divided by their norm, as ADMIS sample.py.
  auto normalized = make_source("npy", {{"path", path}});
  const torch::Tensor want = expected / expected.norm(2, {1}, true);
  const torch::Tensor n = normalized->read(0, 5).embeddings;
  std::cout << GetParam() << ": max abs diff (normalised) = " << (n - want).abs().max().item<double>()
            << " (tolerance 1e-6)" << std::endl;
  EXPECT_TRUE(all_close(n, want, 1e-6));
  EXPECT_TRUE(torch::equal(normalized->read(2, 2).embeddings, n.slice(0, 2, 4)));
}

INSTANTIATE_TEST_SUITE_P(Formats, NpyParity,
                         ::testing::Values("contexts_f32.npy", "contexts_f64.npy", "contexts_fortran.npy"));

TEST(Npy, CountTakesTheFirstRows) {
  auto source = make_source("npy", {{"path", parity_file("contexts_f32.npy")}, {"count", 3}, {"normalize", false}});
  EXPECT_EQ(source->size(), 3);
  EXPECT_TRUE(torch::equal(source->read(0, 3).embeddings, expected_contexts().slice(0, 0, 3)));
  EXPECT_THAT(error_of([&] { source->read(2, 2); }), HasSubstr("read(2, 2) is outside the 3 contexts"));
}

TEST(Npy, ReadsFormatVersions2And3AndFortranOrderedFloat64) {
  const std::string dir = temp_dir("npy-versions");
  const torch::Tensor values = torch::arange(12, torch::kFloat32).view({3, 4}) / 7;
  write_raw_npy(dir + "/v2.npy", 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", bytes_of(values));
  write_raw_npy(dir + "/v3.npy", 3, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3, 4)}", bytes_of(values));
  // Column-major float64: the transposed array's row-major bytes.
  write_raw_npy(dir + "/f8.npy", 1, "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 4), }",
                bytes_of(values.to(torch::kFloat64).t().contiguous()));
  for (const char* name : {"v2.npy", "v3.npy", "f8.npy"}) {
    auto s = make_source("npy", {{"path", dir + "/" + name}, {"normalize", false}});
    EXPECT_TRUE(torch::equal(s->read(0, 3).embeddings, values)) << name;
  }
}

TEST(Npy, RefusesWhatItCannotReadNamingTheFile) {
  const std::string dir = temp_dir("npy-errors");
  const auto message = [](const std::string& path, ParamMap extra = {}) {
    extra["path"] = Value(path);
    return error_of([&] { make_source("npy", extra); });
  };
  {
    const std::string path = dir + "/text.npy";
    std::ofstream(path) << "0.1 0.2 0.3\n";
    const std::string msg = message(path);
    EXPECT_THAT(msg, HasSubstr(path));
    EXPECT_THAT(msg, HasSubstr("not a .npy file"));
  }
  for (const std::string descr : {"<i4", ">f4", "<f2"}) {
    const std::string path = dir + "/dtype.npy";
    write_raw_npy(path, 1, "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (2, 2), }", std::string(32, '\0'));
    const std::string msg = message(path);
    EXPECT_THAT(msg, HasSubstr(path));
    EXPECT_THAT(msg, HasSubstr("unsupported .npy dtype '" + descr + "'"));
  }
  {
    const std::string path = dir + "/three_d.npy";
    write_raw_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }", std::string(32, '\0'));
    const std::string msg = message(path);
    EXPECT_THAT(msg, HasSubstr(path));
    EXPECT_THAT(msg, HasSubstr("expected a 2-D (N, D) array"));
    EXPECT_THAT(msg, HasSubstr("[2, 2, 2]"));
  }
  {
    const std::string msg = message(parity_file("contexts_f32.npy"), {{"count", 6}});
    EXPECT_THAT(msg, HasSubstr("contexts_f32.npy"));
    EXPECT_THAT(msg, HasSubstr("count = 6 but the file holds only 5 embeddings"));
  }
  {
    const std::string path = dir + "/truncated.npy";
    write_raw_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }", std::string(40, '\0'));
    const std::string msg = message(path);
    EXPECT_THAT(msg, HasSubstr(path));
    EXPECT_THAT(msg, HasSubstr("truncated"));
  }
  {
    const std::string path = dir + "/bad_header.npy";
    write_raw_npy(path, 1, "{'descr': '<f4', 'shape': (4, 4), }", std::string(64, '\0'));
    EXPECT_THAT(message(path), HasSubstr("no 'fortran_order' entry"));
  }
  {
    const std::string path = dir + "/missing.npy";
    const std::string msg = message(path);
    EXPECT_THAT(msg, HasSubstr(path));
    EXPECT_THAT(msg, HasSubstr("cannot open"));
  }
}

// ---------------------------------------------------------------------------------------
// npy with the faces ADMIS keeps next to the embeddings (context_database/images)

TEST(Npy, ReturnsTheFacesInFileNameOrderAsAdmisSortsThem) {
  const std::string dir = temp_dir("npy-images");
  const std::string images = dir + "/images";
  fs::create_directories(images);
  // 12 faces named 0.png..11.png: sorted as strings, ADMIS pairs row 2 with 10.png.
  for (int i = 0; i < 12; ++i) write_png(test_face(i, 40, 36), images + "/" + std::to_string(i) + ".png");
  std::ofstream(images + "/notes.txt") << "not a face";
  const torch::Tensor values = torch::randn({12, 8});
  write_raw_npy(dir + "/e.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (12, 8), }", bytes_of(values));
  auto source = make_source("npy", {{"path", dir + "/e.npy"}, {"images", images}});
  const IdentityContexts c = source->read(1, 3);
  ASSERT_TRUE(c.faces.defined());
  EXPECT_EQ(c.faces.sizes(), (std::vector<std::int64_t>{3, 40, 36, 3}));
  EXPECT_EQ(c.faces.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(torch::equal(c.faces[0], test_face(1, 40, 36)));   // "1.png"
  EXPECT_TRUE(torch::equal(c.faces[1], test_face(10, 40, 36)));  // "10.png"
  EXPECT_TRUE(torch::equal(c.faces[2], test_face(11, 40, 36)));  // "11.png"
  EXPECT_TRUE(all_close(c.embeddings, values.slice(0, 1, 4) / values.slice(0, 1, 4).norm(2, {1}, true), 1e-6));

  // Fewer faces than embeddings: refused, naming the folder.
  auto msg = error_of([&] { make_source("npy", {{"path", dir + "/e.npy"}, {"images", dir}}); });
  EXPECT_THAT(msg, HasSubstr("holds 0 faces but 12 embeddings"));
  // Faces of different sizes cannot be stacked: the read names the file.
  write_png(test_face(3, 20, 20), images + "/3.png");
  msg = error_of([&] { source->read(4, 3); });  // 2.png, 3.png, 4.png
  EXPECT_THAT(msg, HasSubstr("3.png"));
  EXPECT_THAT(msg, HasSubstr("must share a size"));
}

// ---------------------------------------------------------------------------------------
// The family passes the context-source conformance suite.

TEST(ContextsConformance, EveryPluginOfTheLibraryPasses) {
  const host::LoadedLibrary* library = nullptr;
  for (const auto& lib : registry().libraries())
    if (lib->name == "admis_contexts") library = lib.get();
  ASSERT_NE(library, nullptr) << "admis_contexts was not discovered";
  const auto report = host::check_plugins(registry(), library->path, runtime());
  std::ostringstream text;
  host::print_report(report, text);
  std::cout << text.str();
  EXPECT_FALSE(report.failed()) << text.str();
  // gaussian runs the whole contract with its defaults; npy and image-folder need inputs.
  bool gaussian_contract = false;
  for (const auto& r : report.results)
    if (r.plugin == "context-source/gaussian" && r.check == "context source contract") gaussian_contract = r.passed;
  EXPECT_TRUE(gaussian_contract) << text.str();
  for (const std::string name : {"gaussian", "npy", "image-folder"})
    EXPECT_NE(registry().find(Kind::ContextSource, name), nullptr) << name;
}

}  // namespace
}  // namespace admis::test::contexts
