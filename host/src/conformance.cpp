#include "admis/host/conformance.h"

#include <boost/filesystem.hpp>
#include <fmt/format.h>

#include <set>

#include "admis/host/text.h"

namespace fs = boost::filesystem;

namespace admis::host {

bool ConformanceReport::failed() const {
  for (const auto& r : results)
    if (!r.passed) return true;
  return false;
}

std::size_t ConformanceReport::passed_count() const {
  std::size_t n = 0;
  for (const auto& r : results) n += r.passed ? 1 : 0;
  return n;
}

namespace {

// A check failed: the message says what the contract expected.
struct Violation : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void expect(bool condition, const std::string& what) {
  if (!condition) throw Violation(what);
}

std::string shape(const torch::Tensor& t) {
  return t.defined() ? "[" + fmt::format("{}", fmt::join(t.sizes().vec(), ", ")) + "]" : "(undefined)";
}

void expect_shape(const torch::Tensor& t, std::vector<std::int64_t> want, const std::string& what) {
  expect(t.defined() && t.sizes().vec() == want,
         fmt::format("{} has shape {}, expected [{}]", what, shape(t), fmt::join(want, ", ")));
}

void expect_finite(const torch::Tensor& t, const std::string& what) {
  expect(torch::isfinite(t).all().item<bool>(), what + " has non-finite values");
}

void expect_same(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  expect(a.sizes() == b.sizes() && torch::equal(a, b), what + " differs between two identical calls");
}

class Checker {
 public:
  Checker(const Registry& registry, Runtime& runtime, ConformanceReport& report)
      : registry_(registry), runtime_(runtime), report_(report) {}

  void check(const RegisteredPlugin& p) {
    const Factory& f = *p.factory;
    id_ = fmt::format("{}/{}", to_string(f.kind), f.name);
    run("schema is well formed", [&] { check_schema(f); });
    run("unknown parameter is refused with its name", [&] { check_unknown_parameter(f); });
    std::vector<std::string> required;
    for (const auto& s : f.params)
      if (s.required()) required.push_back(s.name);
    if (!required.empty()) {
      // Such plugins need real inputs (a weights file, a dataset); their own tests cover them.
      add("contract with default parameters", true,
          fmt::format("not run: parameters {} have no defaults", join(required, ", ")));
      return;
    }
    std::shared_ptr<Plugin> object;
    run("creates with default parameters", [&] {
      torch::manual_seed(0);
      object = runtime_.create(f.kind, f.name, {});
      expect(object != nullptr, "no object");
    });
    if (!object) return;
    switch (f.kind) {
      case Kind::Backbone: run("backbone contract", [&] { backbone(dynamic_cast<Backbone&>(*object)); }); break;
      case Kind::Head: run("head contract", [&] { head(dynamic_cast<Head&>(*object)); }); break;
      case Kind::Denoiser: run("denoiser contract", [&] { denoiser(dynamic_cast<Denoiser&>(*object)); }); break;
      case Kind::Scheduler: run("scheduler contract", [&] { scheduler(dynamic_cast<Scheduler&>(*object)); }); break;
      case Kind::Codec: run("codec contract", [&] { codec(dynamic_cast<Codec&>(*object)); }); break;
      case Kind::ContextSource:
        run("context source contract", [&] { context_source(dynamic_cast<ContextSource&>(*object)); });
        break;
      case Kind::Augmenter: run("augmenter contract", [&] { augmenter(dynamic_cast<Augmenter&>(*object)); }); break;
      case Kind::DatasetWriter:
        run("dataset writer contract", [&] { writer(dynamic_cast<DatasetWriter&>(*object)); });
        break;
      case Kind::DatasetReader:
        add("dataset reader contract", true, "not run: a reader needs a source; its own tests cover it");
        break;
    }
  }

 private:
  void add(const std::string& check, bool passed, const std::string& detail) {
    report_.results.push_back(CheckResult{id_, check, passed, detail});
  }

  template <class F>
  void run(const std::string& check, F&& body) {
    try {
      body();
      add(check, true, "");
    } catch (const Violation& v) {
      add(check, false, v.what());
    } catch (const std::exception& e) {
      add(check, false, fmt::format("threw: {}", describe(e)));
    }
  }

  void check_schema(const Factory& f) {
    expect(!f.name.empty() && f.name.find('/') == std::string::npos, "plugin name is empty or contains '/'");
    expect(!f.summary.empty(), "plugin has no one-line summary");
    expect(!f.version.empty(), "plugin has no version");
    std::set<std::string> names;
    for (const auto& s : f.params) {
      expect(!s.name.empty(), "a parameter has no name");
      expect(names.insert(s.name).second, fmt::format("parameter '{}' is declared twice", s.name));
      expect(!s.doc.empty(), fmt::format("parameter '{}' has no doc line", s.name));
      if (!s.required() && s.type != ParamType::Plugin) {
        try {
          validate_value(s, s.default_value, id_);
        } catch (const Error& e) {
          throw Violation(fmt::format("default of '{}' violates its own declaration: {}", s.name, e.what()));
        }
      }
      if (s.type == ParamType::Plugin) {
        try {
          if (!s.plugin_kind.empty()) parse_kind(s.plugin_kind);
        } catch (const Error&) {
          throw Violation(fmt::format("parameter '{}' names unknown plugin kind '{}'", s.name, s.plugin_kind));
        }
      }
    }
  }

  void check_unknown_parameter(const Factory& f) {
    try {
      registry_.complete_params(registry_.get(f.kind, f.name), {{"no_such_parameter_xyz", Value(1)}});
    } catch (const Error& e) {
      const std::string msg = e.what();
      expect(msg.find("no_such_parameter_xyz") != std::string::npos && msg.find(f.name) != std::string::npos,
             "the refusal does not name the plugin and the key: " + msg);
      return;
    }
    throw Violation("an unknown parameter was accepted");
  }

  void backbone(Backbone& b) {
    const std::int64_t s = b.input_size();
    expect(s > 0 && b.embedding_size() > 0, "input_size and embedding_size must be positive");
    expect(!b.module().parameters().empty(), "a backbone must have trainable parameters");
    b.module().eval();
    torch::NoGradGuard ng;
    auto x = torch::rand({2, 3, s, s}) * 2 - 1;
    auto y = b.forward(x);
    expect_shape(y, {2, b.embedding_size()}, "output");
    expect_finite(y, "output");
    expect_same(y, b.forward(x), "eval-mode output");
  }

  void head(Head& h) {
    const auto d = h.in_features(), c = h.out_features();
    expect(d > 0 && c > 0, "in_features and out_features must be positive");
    auto e = torch::randn({4, d}, torch::requires_grad());
    auto labels = torch::arange(4, torch::kInt64) % c;
    h.module().train();
    HeadOutput out = h.forward(e, labels);
    expect_shape(out.logits, {4, c}, "logits");
    expect_shape(out.original_logits, {4, c}, "original_logits");
    expect_finite(out.logits, "logits");
    torch::nn::functional::cross_entropy(out.logits, labels).backward();
    expect(e.grad().defined() && torch::isfinite(e.grad()).all().item<bool>(),
           "the loss does not back-propagate finite gradients to the embeddings");
    bool bad_label_refused = false;
    try {
      torch::NoGradGuard ng;
      h.forward(e.detach(), torch::full({4}, c, torch::kInt64));
    } catch (const std::exception&) {
      bad_label_refused = true;
    }
    expect(bad_label_refused, "a label >= out_features was accepted");
  }

  void denoiser(Denoiser& d) {
    d.module().eval();
    torch::NoGradGuard ng;
    auto x = torch::randn({2, d.in_channels(), 32, 32});
    auto t = torch::tensor({10, 500}, torch::kInt64);
    torch::Tensor context = d.context_size() > 0 ? torch::randn({2, d.context_size()}) : torch::Tensor();
    auto y = d.forward(x, t, context);
    expect_shape(y, {2, d.out_channels(), 32, 32}, "output");
    expect_finite(y, "output");
    expect_same(y, d.forward(x, t, context), "eval-mode output");
  }

  void scheduler(Scheduler& s) {
    const auto T = s.num_train_timesteps();
    expect(T > 0, "num_train_timesteps must be positive");
    auto betas = s.betas(), alpha_bars = s.alpha_bars();
    expect_shape(betas, {T}, "betas");
    expect_shape(alpha_bars, {T}, "alpha_bars");
    expect((betas > 0).all().item<bool>() && (betas < 1).all().item<bool>(), "betas must lie in (0, 1)");
    expect((alpha_bars.slice(0, 1) <= alpha_bars.slice(0, 0, T - 1)).all().item<bool>(),
           "alpha_bars must not increase");
    expect(s.num_steps() > 0, "num_steps must be positive");
    std::int64_t previous = T;
    for (std::int64_t i = 0; i < s.num_steps(); ++i) {
      const auto t = s.model_timestep(i);
      expect(t >= 0 && t < previous, fmt::format("model_timestep({}) = {} is not below the previous step's and >= 0", i, t));
      previous = t;
    }
    auto x0 = torch::randn({2, 3, 8, 8});
    auto eps = torch::randn({2, 3, 8, 8});
    expect_shape(s.add_noise(x0, eps, torch::tensor({std::int64_t{0}, T - 1}, torch::kInt64)), {2, 3, 8, 8}, "add_noise output");
    const std::int64_t out_c = s.expects_learned_variance() ? 6 : 3;
    auto model_output = torch::randn({2, out_c, 8, 8});
    for (std::int64_t i : {std::int64_t{0}, s.num_steps() - 1}) {
      torch::Tensor noise = s.uses_noise(i) ? torch::randn({2, 3, 8, 8}) : torch::Tensor();
      StepOutput a = s.step(model_output, i, x0, noise);
      expect_shape(a.prev_sample, {2, 3, 8, 8}, fmt::format("step {} prev_sample", i));
      expect_finite(a.prev_sample, fmt::format("step {} prev_sample", i));
      expect_same(a.prev_sample, s.step(model_output, i, x0, noise).prev_sample, fmt::format("step {}", i));
    }
  }

  void codec(Codec& c) {
    c.module().eval();
    torch::NoGradGuard ng;
    auto image = torch::rand({1, 3, 32, 32}) * 2 - 1;
    auto latent = c.encode(image);
    const auto f = c.downsampling_factor();
    expect_shape(latent, {1, c.latent_channels(), 32 / f, 32 / f}, "latent");
    auto decoded = c.decode(latent);
    expect_shape(decoded, {1, 3, 32, 32}, "decoded");
    expect_finite(decoded, "decoded");
  }

  void context_source(ContextSource& s) {
    expect(s.size() > 0 && s.embedding_size() > 0, "size and embedding_size must be positive");
    const auto k = std::min<std::int64_t>(2, s.size());
    IdentityContexts a = s.read(0, k);
    expect_shape(a.embeddings, {k, s.embedding_size()}, "embeddings");
    expect_finite(a.embeddings, "embeddings");
    expect_same(a.embeddings, s.read(0, k).embeddings, "read(0, k)");
  }

  void augmenter(Augmenter& a) {
    if (a.scope() == AugmenterScope::Image) {
      auto image = torch::randint(0, 256, {112, 112, 3}, torch::kUInt8);
      auto g1 = at::detail::createCPUGenerator(7), g2 = at::detail::createCPUGenerator(7);
      auto x = a.augment_image(image, g1);
      auto y = a.augment_image(image, g2);
      expect(x.defined(), "augment_image returned nothing");
      expect_same(x, y, "augment_image with equally seeded generators");
    } else {
      IdentitySamples id;
      id.label_name = "0";
      for (int i = 0; i < 2; ++i) {
        Sample s;
        s.image = torch::randint(0, 256, {112, 112, 3}, torch::kUInt8);
        s.label_name = "0";
        s.name = fmt::format("{}.png", i);
        id.samples.push_back(s);
      }
      id.context_face = torch::randint(0, 256, {112, 112, 3}, torch::kUInt8);
      a.augment_identity(id);
      expect(id.samples.size() >= 2, "augment_identity dropped the identity's images");
    }
  }

  void writer(DatasetWriter& w) {
    const fs::path dir = fs::temp_directory_path() / fs::unique_path("admis-check-%%%%%%%%");
    fs::create_directories(dir);
    const std::string dest = (dir / "out").string();
    try {
      w.open(dest);
      for (int i = 0; i < 2; ++i) {
        Sample s;
        s.image = torch::randint(0, 256, {112, 112, 3}, torch::kUInt8);
        s.label = i;
        s.label_name = std::to_string(i);
        s.name = "0.png";
        w.write(s);
      }
      bool visible_before_commit = false;
      for (const auto& e : fs::directory_iterator(dir))
        if (e.path().filename().string().rfind("out", 0) == 0 && e.path().filename().string().find("tmp") == std::string::npos)
          visible_before_commit = true;
      expect(!visible_before_commit, "output is visible before commit()");
      w.commit();
      expect(!fs::is_empty(dir), "commit() left nothing at the destination");
    } catch (...) {
      fs::remove_all(dir);
      throw;
    }
    fs::remove_all(dir);
  }

  const Registry& registry_;
  Runtime& runtime_;
  ConformanceReport& report_;
  std::string id_;
};

}  // namespace

ConformanceReport check_plugins(const Registry& registry, const std::string& library, Runtime& runtime) {
  ConformanceReport report;
  report.library = library;
  Checker checker(registry, runtime, report);
  const std::string wanted = fs::weakly_canonical(library).string();
  bool any = false;
  for (const auto* p : registry.plugins()) {
    if (fs::weakly_canonical(p->library->path).string() != wanted) continue;
    any = true;
    checker.check(*p);
  }
  if (!any) report.results.push_back(CheckResult{library, "registers at least one plugin", false, "no plugins found"});
  return report;
}

ConformanceReport check_library(const std::string& library, const std::vector<std::string>& extra_paths,
                                const RunSettings& settings) {
  Registry registry;
  std::vector<std::string> paths = extra_paths;
  paths.push_back(library);
  registry.discover(paths);
  RunSettings quiet = settings;
  quiet.quiet = true;
  Runtime runtime(registry, quiet);
  return check_plugins(registry, library, runtime);
}

void print_report(const ConformanceReport& report, std::ostream& out) {
  std::string current;
  for (const auto& r : report.results) {
    if (r.plugin != current) {
      current = r.plugin;
      out << current << "\n";
    }
    out << fmt::format("  {} {}{}\n", r.passed ? "PASS" : "FAIL", r.check, r.detail.empty() ? "" : " (" + r.detail + ")");
  }
  out << fmt::format("{}: {} passed, {} failed\n", report.library, report.passed_count(),
                     report.results.size() - report.passed_count());
}

}  // namespace admis::host
