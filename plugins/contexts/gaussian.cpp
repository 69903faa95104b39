// IDiff-Face's synthetic identities (create_sample_identity_contexts.py,
// sample_synthetic_uniform_embeddings): torch.nn.functional.normalize(torch.randn([n, 512])),
// i.e. directions drawn uniformly on the unit sphere. IDiff-Face draws all n rows from one
// unseeded stream; here row i comes from its own generator, seeded from (seed, i), so that
// any subset of identities regenerates exactly, whatever was read before.

#include "contexts.h"

namespace admis::contexts {
namespace {

class Gaussian : public ContextSource {
 public:
  explicit Gaussian(const Params& p)
      : count_(p.get_int("count")), embedding_size_(p.get_int("embedding_size")),
        seed_(static_cast<std::uint64_t>(p.get_int("seed"))) {}

  std::int64_t size() const override { return count_; }
  std::int64_t embedding_size() const override { return embedding_size_; }

  IdentityContexts read(std::int64_t first, std::int64_t count) override {
    check_read_range(first, count, count_, "context-source/gaussian");
    torch::Tensor rows = torch::empty({count, embedding_size_}, torch::kFloat32);
    for (std::int64_t k = 0; k < count; ++k) {
      auto generator = at::detail::createCPUGenerator(index_seed(first + k));
      rows[k].copy_(at::randn({embedding_size_}, generator, torch::kFloat32));
    }
    return {l2_normalize(rows), torch::Tensor()};
  }

  std::uint64_t index_seed(std::int64_t index) const { return splitmix64(splitmix64(seed_) ^ static_cast<std::uint64_t>(index)); }

 private:
  std::int64_t count_, embedding_size_;
  std::uint64_t seed_;
};

}  // namespace

void register_gaussian(FactoryList& registry) {
  registry.add(Kind::ContextSource, "gaussian", "1.0.0",
               "IDiff-Face synthetic identities: L2-normalised N(0, I) embeddings, context i drawn from (seed, i) alone",
               {ParamSpec::Int("count", 15000, "number of identities (IDiff-Face samples 15000)").at_least(1),
                ParamSpec::Int("embedding_size", 512, "embedding dimension (512 for ElasticFace contexts)").at_least(1),
                ParamSpec::Int("seed", 0, "seed of the identities; context i depends only on (seed, i)").at_least(0)},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<Gaussian>(p); });
}

}  // namespace admis::contexts
