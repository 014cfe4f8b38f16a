// GEMM backends side by side on the shapes the engine runs: CLIP text linears
// (77 tokens x 768/3072, batch 2) and SD1.5 UNet linears/attention at 64x64 latents.
// Run: build/release/sdserve_microbench --benchmark_filter=Gemm
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "cpu/gemm.h"

namespace {

using sdserve::cpu::GemmBackend;

void BM_Gemm(benchmark::State& st, GemmBackend be, int64_t m, int64_t n, int64_t k, bool tb) {
  if (!sdserve::cpu::gemm_backend_available(be)) {
    st.SkipWithError("backend not compiled in");
    return;
  }
  sdserve::cpu::set_gemm_backend(be);
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> a(size_t(m * k)), b(size_t(k * n)), c(size_t(m * n));
  for (auto& x : a) x = d(gen);
  for (auto& x : b) x = d(gen);
  for (auto _ : st) {
    sdserve::cpu::sgemm(false, tb, m, n, k, 1.f, a.data(), k, b.data(), tb ? k : n, 0.f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(m * n * k), benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

struct Shape {
  const char* name;
  int64_t m, n, k;
  bool tb;
};
const Shape kShapes[] = {
    {"clip_qkv_154x768x768", 154, 768, 768, true},      {"clip_fc1_154x3072x768", 154, 3072, 768, true},
    {"clip_fc2_154x768x3072", 154, 768, 3072, true},    {"unet_proj_8192x320x320", 8192, 320, 320, true},
    {"unet_ff_8192x2560x320", 8192, 2560, 320, true},   {"unet_scores_4096x4096x40", 4096, 4096, 40, true},
    {"unet_attnv_4096x40x4096", 4096, 40, 4096, false},
};

[[maybe_unused]] const bool registered = [] {
  for (const Shape& s : kShapes)
    for (GemmBackend be : {GemmBackend::OneDNN, GemmBackend::OpenBLAS}) {
      const std::string name = std::string("Gemm/") + sdserve::cpu::gemm_backend_name(be) + "/" + s.name;
      benchmark::RegisterBenchmark(name.c_str(), BM_Gemm, be, s.m, s.n, s.k, s.tb)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
