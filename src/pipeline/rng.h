// Initial-noise generators that reproduce the noise PyTorch (and so A1111 / diffusers) draws
// for a given seed, so a user's seed gives the same image here. Two sources:
//  * rng=cpu:  torch.Generator("cpu").manual_seed(seed); torch.randn(shape, generator=g)
//              bit-exact (mt19937 + ATen's CPU normal kernel).
//  * rng=cuda: torch.Generator("cuda").manual_seed(seed); torch.randn(shape, device="cuda"),
//              computed on the CPU the way A1111's "NV" source (modules/rng_philox.py) does:
//              Philox4x32-10 counters as torch lays them out, curand's Box-Muller in double.
// See docs/RNG.md for the references used and what has (not) been checked.
#pragma once
#include <cstdint>
#include <memory>
#include <string_view>

#include "core/tensor.h"

namespace sdserve {

// A stream of standard-normal noise. Stateful: successive calls continue the stream exactly as
// successive torch.randn(..., generator=g) calls on the same generator do.
class NoiseGenerator {
 public:
  virtual ~NoiseGenerator() = default;
  virtual Tensor randn(const Shape& shape) = 0;  // f32, contiguous, CPU
};

// Which of ATen's CPU normal kernels to mirror for tensors of >= 16 elements. torch picks one
// at runtime from the host CPU (torch.backends.cpu.get_cpu_capability()):
//  * Avx2:   "AVX2" capability - Box-Muller with avx_mathfun's log256_ps/sincos256_ps.
//  * Scalar: "DEFAULT"/"AVX512" (and non-x86) - Box-Muller with libm logf/cosf/sinf.
// The two differ in the last bit or so of some values. Below 16 elements both use the same path.
enum class CpuNormalKernel { Avx2, Scalar };

std::unique_ptr<NoiseGenerator> make_cpu_generator(uint64_t seed, CpuNormalKernel kernel = CpuNormalKernel::Avx2);

// max_resident_threads: 0 (default) lays out counters as if the GPU could run one thread per
// element, which is what A1111's rng_philox.py assumes and what every GPU does for tensors of
// up to sm_count * max_threads_per_sm elements. A positive value
// (= multiProcessorCount * (maxThreadsPerMultiProcessor / 256) * 256 of a given GPU) mirrors
// torch's grid-stride launch on that GPU for bigger tensors.
std::unique_ptr<NoiseGenerator> make_cuda_generator(uint64_t seed, int64_t max_resident_threads = 0);

enum class RngKind { CPU, CUDA };
// "cpu" | "cuda"; anything else throws InvalidArgument.
RngKind parse_rng(std::string_view s);
const char* rng_name(RngKind k);

std::unique_ptr<NoiseGenerator> make_generator(RngKind kind, uint64_t seed);

}  // namespace sdserve
