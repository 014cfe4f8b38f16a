#include "io/hash_init.h"

#include <cmath>

namespace sdserve {

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

namespace {
bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

Tensor hash_init_tensor(const std::string& name, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  const uint64_t seed = fnv1a64(name);
  enum { Norm, Bias, Embed, Linear } kind;
  if (ends_with(name, ".weight") && name.find("norm") != std::string::npos)
    kind = Norm;
  else if (ends_with(name, ".bias"))
    kind = Bias;
  else if (name.find("embedding") != std::string::npos)
    kind = Embed;
  else
    kind = Linear;
  // Fan-in: `in` of a Linear [out, in], in*kh*kw of a conv kernel [out, in, kh, kw].
  float lin_scale = 1.f;
  if (kind == Linear) {
    SD_CHECK_ARG(shape.size() >= 2, "hash_init: '" + name + "' needs a weight of rank >= 2");
    int64_t fan_in = 1;
    for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
    lin_scale = float(1.0 / std::sqrt(double(fan_in)));
  }
  // Each step is one f32 rounding, like numpy (the build does not contract to FMA: -std=c++20).
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t z = splitmix64(seed + uint64_t(i));
    const float v = float(int64_t(z >> 40) - 8388608) * 0x1p-23f;
    float out;
    switch (kind) {
      case Norm: {
        const float s = v * 0.1f;
        out = 1.f + s;
        break;
      }
      case Bias:
        out = v * 0.05f;
        break;
      case Embed:
        out = v * 0.05f;
        break;
      default:
        out = v * lin_scale;
        break;
    }
    p[i] = out;
  }
  return t;
}

}  // namespace sdserve
