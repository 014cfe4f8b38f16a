// Brownian-tree noise (src/pipeline/brownian.h) against numpy / torchsde / diffusers:
// tests/fixtures/golden/brownian/brownian.safetensors, written by tools/make_brownian_goldens.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "pipeline/brownian.h"
#include "pipeline/scheduler.h"

namespace sdserve {
namespace {

namespace fs = std::filesystem;
const fs::path kGolden =
    fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "golden" / "brownian" / "brownian.safetensors";

struct Golden {
  std::vector<float> tree_out, sampler_out;
  nlohmann::json seed_sequences, tree_cases, sampler_cases;
};

const Golden& golden() {
  static const Golden g = [] {
    Golden g;
    const SafeTensorsFile f = SafeTensorsFile::open(kGolden.string());
    g.tree_out = f.get_as("tree_out", DType::F32).to_vector();
    g.sampler_out = f.get_as("sampler_out", DType::F32).to_vector();
    g.seed_sequences = nlohmann::json::parse(f.metadata().at("seed_sequences"));
    g.tree_cases = nlohmann::json::parse(f.metadata().at("tree_cases"));
    g.sampler_cases = nlohmann::json::parse(f.metadata().at("sampler_cases"));
    return g;
  }();
  return g;
}

int64_t ulp_distance(float a, float b) {
  if (a == b) return 0;
  if (std::isnan(a) || std::isnan(b)) return INT64_MAX;
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  const int64_t la = ia < 0 ? int64_t(INT32_MIN) - ia : ia;
  const int64_t lb = ib < 0 ? int64_t(INT32_MIN) - ib : ib;
  return std::llabs(la - lb);
}

Shape to_shape(const nlohmann::json& j) {
  Shape s;
  for (const auto& d : j) s.push_back(d.get<int64_t>());
  return s;
}

TEST(Brownian, SeedSequenceMatchesNumpy) {
  const Golden& g = golden();
  ASSERT_GT(g.seed_sequences.size(), 50u);
  for (const auto& c : g.seed_sequences) {
    std::vector<uint64_t> key;
    for (const auto& k : c.at("spawn_key")) key.push_back(k.get<uint64_t>());
    const SeedSequence ss(c.at("entropy").get<uint64_t>(), key, c.at("pool_size").get<size_t>());
    const std::vector<uint32_t> got = ss.generate_state(c.at("n").get<size_t>());
    const std::vector<uint32_t> want = c.at("state").get<std::vector<uint32_t>>();
    EXPECT_EQ(got, want) << c.dump();
  }
}

TEST(Brownian, PythonRound) {
  EXPECT_EQ(py_round(0.0078125, 6), 0.007812);  // exact tie: half to even
  EXPECT_EQ(py_round(0.0078135, 6), 0.007813);  // 0.0078135 is just below the tie in binary
  EXPECT_EQ(py_round(14.6146421, 6), 14.614642);
  EXPECT_EQ(py_round(0.5 * (14.614642 + 0.029167), 6), 7.321904);  // 7.3219045 is just below in binary
  EXPECT_EQ(py_round(-1.25e-7, 6), -0.0);
  EXPECT_TRUE(std::signbit(py_round(-1.25e-7, 6)));
}

TEST(Brownian, TreeMatchesTorchsde) {
  const Golden& g = golden();
  int64_t worst = 0;
  for (const auto& c : g.tree_cases) {
    const Shape shape = to_shape(c.at("shape"));
    BrownianTree tree(c.at("t0").get<double>(), c.at("t1").get<double>(), shape, c.at("entropy").get<uint64_t>(),
                      RngKind::CPU);
    size_t off = c.at("offset");
    for (const auto& q : c.at("queries")) {
      const std::vector<float> got = tree.increment(q.at(0).get<double>(), q.at(1).get<double>());
      ASSERT_EQ(int64_t(got.size()), shape_numel(shape));
      for (size_t k = 0; k < got.size(); ++k) {
        const int64_t d = ulp_distance(got[k], g.tree_out[off + k]);
        worst = std::max(worst, d);
        ASSERT_LE(d, 1) << c.at("entropy") << " [" << q.at(0) << ", " << q.at(1) << "] element " << k << ": " << got[k]
                        << " vs " << g.tree_out[off + k];
      }
      off += got.size();
    }
  }
  EXPECT_EQ(worst, 0) << "torchsde's values are reproduced bit for bit so far; a 1-ulp drift is tolerated";
}

// The noise DPMSolverSDEScheduler gets from its BrownianTreeNoiseSampler during a run. The tree's
// increment is bit-exact; the division by sqrt(|sigma_next - sigma|) may not be: torch's CPU
// float sqrt (MKL VML) is off by an ulp for ~20% of inputs, std::sqrt is correctly rounded.
TEST(Brownian, NoiseSamplerMatchesDiffusers) {
  const Golden& g = golden();
  ASSERT_EQ(g.sampler_cases.size(), 3u);
  int64_t worst = 0;
  for (const auto& c : g.sampler_cases) {
    const Shape shape = to_shape(c.at("shape"));
    Shape item = shape;
    item.erase(item.begin());  // an int seed over a batch of 1 == one tree over x.shape[1:]
    BrownianTreeNoiseSampler ns(float(c.at("sigma_min").get<double>()), float(c.at("sigma_max").get<double>()), item,
                                c.at("seed").get<uint64_t>(), RngKind::CPU);
    size_t off = c.at("offset");
    ASSERT_GE(c.at("calls").size(), 6u);
    for (const auto& call : c.at("calls")) {
      const std::vector<float> got = ns(float(call.at(0).get<double>()), float(call.at(1).get<double>()));
      for (size_t k = 0; k < got.size(); ++k) {
        const int64_t d = ulp_distance(got[k], g.sampler_out[off + k]);
        worst = std::max(worst, d);
        ASSERT_LE(d, 2) << call.dump() << " element " << k;
      }
      off += got.size();
    }
  }
  EXPECT_LE(worst, 2);
}

// BrownianTree's point: the increment does not depend on the order of the queries.
TEST(Brownian, QueryOrderDoesNotMatter) {
  BrownianTree a(0.03, 14.6, {2, 9}, 99, RngKind::CPU), b(0.03, 14.6, {2, 9}, 99, RngKind::CPU);
  const std::vector<std::pair<double, double>> qs = {{0.5, 3.0}, {3.0, 9.0}, {0.03, 14.6}, {1.25, 1.5}, {7.0, 14.0}};
  std::vector<std::vector<float>> fa, fb(qs.size());
  for (const auto& [s, e] : qs) fa.push_back(a.increment(s, e));
  for (size_t i = qs.size(); i-- > 0;) fb[i] = b.increment(qs[i].first, qs[i].second);
  for (size_t i = 0; i < qs.size(); ++i) {
    ASSERT_EQ(fa[i].size(), 18u);
    for (size_t k = 0; k < 18; ++k) EXPECT_NEAR(fa[i][k], fb[i][k], 1e-5) << i << " " << k;
  }
  // Additivity over a split point.
  const std::vector<float> left = a.increment(0.5, 3.0), right = a.increment(3.0, 9.0), whole = a.increment(0.5, 9.0);
  for (size_t k = 0; k < 18; ++k) EXPECT_NEAR(left[k] + right[k], whole[k], 1e-5);
  EXPECT_EQ(a.increment(2.0, 2.0), std::vector<float>(18, 0.0f));
  EXPECT_THROW(a.increment(3.0, 2.0), InvalidArgument);
}

// DPM++ SDE needs one tree seed per batch item; without them its first noisy step refuses.
TEST(Brownian, DpmppSdeNeedsSeeds) {
  SamplerOptions o;
  o.sampler = "DPM++ SDE";
  o.steps = 3;
  const Tensor x = Tensor::zeros({2, 4, 4, 4}, DType::F32);
  auto unseeded = Sampler::create(o, ScheduleConfig{});
  auto rng = make_cpu_generator(1);
  EXPECT_THROW(unseeded->step(x, 0, x, *rng), InvalidArgument);
  auto one_seed = Sampler::create(o, ScheduleConfig{});
  one_seed->set_noise_seeds(RngKind::CPU, {7});
  EXPECT_THROW(one_seed->step(x, 0, x, *rng), InvalidArgument);
  auto seeded = Sampler::create(o, ScheduleConfig{});
  seeded->set_noise_seeds(RngKind::CPU, {7, 8});
  for (size_t i = 0; i < seeded->num_model_calls(); ++i) EXPECT_NO_THROW(seeded->step(x, i, x, *rng));
}

}  // namespace
}  // namespace sdserve
