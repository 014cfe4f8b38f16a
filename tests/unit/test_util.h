// Shared helpers for the unit tests: device/dtype parameters with per-dtype
// tolerances (CTranslate2-style), deterministic random tensors, comparisons.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "pipeline/stable_diffusion.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace sdserve::test {

struct DeviceDType {
  Device device;
  DType dtype;
  double atol;  // absolute tolerance against a double-precision reference
  double rtol;
};

inline std::string param_name(const testing::TestParamInfo<DeviceDType>& info) {
  std::string d = info.param.device.type == DeviceType::CPU ? "cpu" : "cuda";
  return d + "_" + dtype_name(info.param.dtype);
}

// Every (device, dtype) this build can run. CUDA entries appear only in CUDA builds; on a
// machine without a GPU their tests skip (skip_unless_available) and say so.
inline std::vector<DeviceDType> all_device_dtypes() {
  std::vector<DeviceDType> v = {
      {Device::cpu(), DType::F32, 1e-5, 1e-5},
      {Device::cpu(), DType::F16, 2e-2, 1e-2},   // 11-bit mantissa on inputs and outputs
      {Device::cpu(), DType::BF16, 1e-1, 2e-2},  // 8-bit mantissa
  };
#ifdef SDSERVE_WITH_CUDA
  // Same tolerances: f32 runs strict f32 (no TF32) on the GPU; half types accumulate in f32.
  v.push_back({Device::cuda(0), DType::F32, 1e-5, 1e-5});
  v.push_back({Device::cuda(0), DType::F16, 2e-2, 1e-2});
  v.push_back({Device::cuda(0), DType::BF16, 1e-1, 2e-2});
#endif
  return v;
}

inline bool device_available(const Device& d) {
  if (d.type == DeviceType::CPU) return true;
#ifdef SDSERVE_WITH_CUDA
  return d.index < cuda::device_count();
#else
  return false;
#endif
}

#define SKIP_UNLESS_AVAILABLE(device)                                                           \
  do {                                                                                          \
    if (!::sdserve::test::device_available(device))                                             \
      GTEST_SKIP() << "no " << (device).str() << " on this machine: the CUDA tests need a GPU"; \
  } while (0)

// The message of the E that fn throws; a failure (and "") when it throws another type or nothing.
template <typename E>
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "unexpected error type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no error";
  return "";
}

inline std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Values as the tensor actually stores them (after rounding to its dtype).
inline std::vector<double> stored(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

inline void expect_close(const std::vector<float>& got, const std::vector<double>& want, double atol, double rtol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - want[i]) - rtol * std::abs(want[i]);
    if (!(err <= worst) || std::isnan(got[i])) {
      worst = std::isnan(got[i]) ? INFINITY : err;
      worst_i = i;
    }
  }
  EXPECT_LE(worst, atol) << what << ": worst element " << worst_i << " got " << got[worst_i] << " want "
                         << want[worst_i];
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return INFINITY;
  const auto x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(double(x[i]) - double(y[i])));
  return m;
}

// Scaled dot-product attention in double: q [BH, Tq, d], k [BH, Tk, d], v [BH, Tk, dv], all
// contiguous; scale 1/sqrt(d); causal lets query i see keys 0..i. Returns [BH, Tq, dv].
template <typename T>
std::vector<double> attention_reference(const std::vector<T>& q, const std::vector<T>& k, const std::vector<T>& v,
                                        int BH, int Tq, int Tk, int d, int dv, bool causal) {
  std::vector<double> out(size_t(BH) * Tq * dv);
  const double scale = 1.0 / std::sqrt(double(d));
  for (int bh = 0; bh < BH; ++bh)
    for (int i = 0; i < Tq; ++i) {
      const int last = causal ? std::min(i, Tk - 1) : Tk - 1;
      std::vector<double> s(size_t(last + 1));
      double mx = -INFINITY, sum = 0;
      for (int j = 0; j <= last; ++j) {
        double acc = 0;
        for (int e = 0; e < d; ++e)
          acc += double(q[size_t((bh * Tq + i) * d + e)]) * double(k[size_t((bh * Tk + j) * d + e)]);
        mx = std::max(mx, s[size_t(j)] = acc * scale);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int e = 0; e < dv; ++e) {
        double acc = 0;
        for (int j = 0; j <= last; ++j) acc += s[size_t(j)] / sum * double(v[size_t((bh * Tk + j) * dv + e)]);
        out[size_t((bh * Tq + i) * dv + e)] = acc;
      }
    }
  return out;
}

// The txt2img request of a golden file (tools/make_txt2img_goldens.py metadata) for one case.
inline GenerateRequest golden_request(const SafeTensorsFile& g, const std::string& sampler, const std::string& schedule,
                                      int steps) {
  const auto& md = g.metadata();
  GenerateRequest r;
  r.prompt = md.at("prompt");
  r.negative_prompt = md.at("negative_prompt");
  r.width = std::stoi(md.at("width"));
  r.height = std::stoi(md.at("height"));
  r.steps = steps;
  r.cfg_scale = std::stof(md.at("cfg"));
  r.seed = std::stoll(md.at("seed"));
  r.rng = RngKind::CPU;
  r.sampler = sampler;
  r.schedule = schedule;
  return r;
}

// What the tiny models' single files cannot tell (as diffusers' from_single_file needs its config
// folder): head and group counts (read off the diffusers configs), the tokenizer (a 1514-token
// vocabulary; odd-tiny 764) and the scheduler config (sd1-tiny says "leading" spacing, sd2-tiny
// v-prediction). `model`: sd1-tiny, sd2-tiny or odd-tiny.
inline LoadOptions tiny_single_file_options(const std::string& model) {
  const std::filesystem::path dir = std::filesystem::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "models" / model;
  LoadOptions o;
  o.text_head_dim = 8;  // hidden 32, 4 heads
  o.ldm.norm_num_groups = 4;
  if (model == "sd1-tiny") {
    o.ldm.heads = {4, 4, 4};
  } else if (model == "odd-tiny") {
    o.text_head_dim = 5;  // hidden 15, 3 heads
    o.ldm.norm_num_groups = 3;
    o.ldm.heads = {3, 5};  // channels 9, 15: heads of width 3
  } else {
    o.ldm.head_dim = 4;
    o.ldm.upcast_attention = false;
  }
  o.scheduler_config_path = (dir / "scheduler" / "scheduler_config.json").string();
  o.tokenizer_dir = (dir / "tokenizer").string();
  return o;
}

}  // namespace sdserve::test
