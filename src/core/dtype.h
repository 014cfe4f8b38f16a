// Element types. Compute dtypes are F32, F16 and BF16; the others exist so that
// every safetensors dtype can be named, validated and converted on load.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace sdserve {

enum class DType : uint8_t {
  F32,
  F16,
  BF16,
  F64,
  I8,
  I16,
  I32,
  I64,
  U8,
  U16,
  U32,
  U64,
  Bool,
  F8E4M3,
  F8E5M2,
};

size_t dtype_size(DType t) noexcept;
// Our canonical name ("f32", "f16", "bf16", ...).
const char* dtype_name(DType t) noexcept;
// The safetensors header spelling ("F32", "BF16", "F8_E4M3", ...).
const char* dtype_safetensors_name(DType t) noexcept;
std::optional<DType> dtype_from_safetensors(std::string_view s) noexcept;
// Parses "f32" / "f16" / "bf16" (also "float32", "fp16", ...); throws InvalidArgument.
DType parse_compute_dtype(std::string_view s);
inline bool is_float(DType t) noexcept {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64 || t == DType::F8E4M3 ||
         t == DType::F8E5M2;
}

// IEEE binary16 and bfloat16 stored as raw bits. Conversions round to nearest even.
struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h) noexcept;
uint16_t f32_to_f16(float f) noexcept;
float f8e4m3_to_f32(uint8_t v) noexcept;
float f8e5m2_to_f32(uint8_t v) noexcept;

inline float to_float(float v) { return v; }
inline float to_float(half_t v) { return f16_to_f32(v.bits); }
inline float to_float(bfloat16_t v) { return bf16_to_f32(v.bits); }
template <typename T>
T from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
template <>
inline half_t from_float<half_t>(float f) {
  return half_t{f32_to_f16(f)};
}
template <>
inline bfloat16_t from_float<bfloat16_t>(float f) {
  return bfloat16_t{f32_to_bf16(f)};
}

template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<half_t> {
  static constexpr DType value = DType::F16;
};
template <>
struct dtype_of<bfloat16_t> {
  static constexpr DType value = DType::BF16;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::F64;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::I32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::I64;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr DType value = DType::U8;
};

// Converts n elements of src (any float or integer dtype) into f32.
void convert_to_f32(const void* src, DType src_type, float* dst, size_t n);
// Converts n f32 values into dst of a compute dtype (F32, F16, BF16).
void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n);

}  // namespace sdserve

// Runs `body` with `scalar_t` bound to the C++ type of a compute dtype.
#define SD_DISPATCH_FLOAT(dtype, name, ...)                                                               \
  [&] {                                                                                                   \
    switch (dtype) {                                                                                      \
      case ::sdserve::DType::F32: {                                                                       \
        using scalar_t = float;                                                                           \
        return __VA_ARGS__();                                                                             \
      }                                                                                                   \
      case ::sdserve::DType::F16: {                                                                       \
        using scalar_t = ::sdserve::half_t;                                                               \
        return __VA_ARGS__();                                                                             \
      }                                                                                                   \
      case ::sdserve::DType::BF16: {                                                                      \
        using scalar_t = ::sdserve::bfloat16_t;                                                           \
        return __VA_ARGS__();                                                                             \
      }                                                                                                   \
      default:                                                                                            \
        throw ::sdserve::UnsupportedError(std::string(name) + ": dtype " + ::sdserve::dtype_name(dtype) + \
                                          " is not supported");                                           \
    }                                                                                                     \
  }()
