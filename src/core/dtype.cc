#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace sdserve {

size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
    case DType::F32:
    case DType::I32:
    case DType::U32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
    case DType::U16:
      return 2;
    case DType::I8:
    case DType::U8:
    case DType::Bool:
    case DType::F8E4M3:
    case DType::F8E5M2:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) noexcept {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::F64:
      return "f64";
    case DType::I8:
      return "i8";
    case DType::I16:
      return "i16";
    case DType::I32:
      return "i32";
    case DType::I64:
      return "i64";
    case DType::U8:
      return "u8";
    case DType::U16:
      return "u16";
    case DType::U32:
      return "u32";
    case DType::U64:
      return "u64";
    case DType::Bool:
      return "bool";
    case DType::F8E4M3:
      return "f8_e4m3";
    case DType::F8E5M2:
      return "f8_e5m2";
  }
  return "?";
}

const char* dtype_safetensors_name(DType t) noexcept {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F64:
      return "F64";
    case DType::I8:
      return "I8";
    case DType::I16:
      return "I16";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::U8:
      return "U8";
    case DType::U16:
      return "U16";
    case DType::U32:
      return "U32";
    case DType::U64:
      return "U64";
    case DType::Bool:
      return "BOOL";
    case DType::F8E4M3:
      return "F8_E4M3";
    case DType::F8E5M2:
      return "F8_E5M2";
  }
  return "?";
}

std::optional<DType> dtype_from_safetensors(std::string_view s) noexcept {
  static constexpr DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64,    DType::I8,
                                  DType::I16, DType::I32, DType::I64,  DType::U8,     DType::U16,
                                  DType::U32, DType::U64, DType::Bool, DType::F8E4M3, DType::F8E5M2};
  for (DType t : all)
    if (s == dtype_safetensors_name(t)) return t;
  return std::nullopt;
}

DType parse_compute_dtype(std::string_view s) {
  if (s == "f32" || s == "float32" || s == "fp32") return DType::F32;
  if (s == "f16" || s == "float16" || s == "fp16" || s == "half") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  throw InvalidArgument("unknown dtype '" + std::string(s) + "': use f32, f16 or bf16");
}

float f16_to_f32(uint16_t h) noexcept {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t out;
  if (exp == 0) {
    if (mant == 0) {
      out = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      out = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    out = sign | 0x7f800000u | (mant << 13);
  } else {
    out = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return bits_to_float(out);
}

uint16_t f32_to_f16(float f) noexcept {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (absu >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // overflow (rounds to inf)
  if (absu < 0x38800000u) {                                  // result is subnormal or zero
    // Add 0.5 in f32 so the hardware does round-to-nearest-even at the f16 subnormal grid.
    const float r = bits_to_float(absu) + 0.5f;
    return uint16_t(sign | (float_to_bits(r) - 0x3f000000u));
  }
  uint32_t v = absu + 0xc8000fffu + ((absu >> 13) & 1u);  // rebias exponent and round
  return uint16_t(sign | (v >> 13));
}

float f8e4m3_to_f32(uint8_t v) noexcept {
  const float sign = (v & 0x80) ? -1.f : 1.f;
  const int exp = (v >> 3) & 0xf;
  const int mant = v & 0x7;
  if (exp == 0xf && mant == 0x7) return NAN;
  if (exp == 0) return sign * std::ldexp(float(mant) / 8.f, -6);
  return sign * std::ldexp(1.f + float(mant) / 8.f, exp - 7);
}

float f8e5m2_to_f32(uint8_t v) noexcept { return f16_to_f32(uint16_t(uint16_t(v) << 8)); }

namespace {
template <typename S, typename F>
void convert_loop(const void* src, float* dst, size_t n, F f) {
  const S* s = static_cast<const S*>(src);
  for (size_t i = 0; i < n; ++i) {
    S v;
    std::memcpy(&v, s + i, sizeof(S));  // source may be unaligned (mmapped file)
    dst[i] = f(v);
  }
}
}  // namespace

void convert_to_f32(const void* src, DType t, float* dst, size_t n) {
  if (n == 0) return;  // empty tensors may have null data; memcpy(null, ...) is UB
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::F16:
      return convert_loop<uint16_t>(src, dst, n, [](uint16_t v) { return f16_to_f32(v); });
    case DType::BF16:
      return convert_loop<uint16_t>(src, dst, n, [](uint16_t v) { return bf16_to_f32(v); });
    case DType::F64:
      return convert_loop<double>(src, dst, n, [](double v) { return float(v); });
    case DType::F8E4M3:
      return convert_loop<uint8_t>(src, dst, n, [](uint8_t v) { return f8e4m3_to_f32(v); });
    case DType::F8E5M2:
      return convert_loop<uint8_t>(src, dst, n, [](uint8_t v) { return f8e5m2_to_f32(v); });
    case DType::I8:
      return convert_loop<int8_t>(src, dst, n, [](int8_t v) { return float(v); });
    case DType::I16:
      return convert_loop<int16_t>(src, dst, n, [](int16_t v) { return float(v); });
    case DType::I32:
      return convert_loop<int32_t>(src, dst, n, [](int32_t v) { return float(v); });
    case DType::I64:
      return convert_loop<int64_t>(src, dst, n, [](int64_t v) { return float(v); });
    case DType::U8:
    case DType::Bool:
      return convert_loop<uint8_t>(src, dst, n, [](uint8_t v) { return float(v); });
    case DType::U16:
      return convert_loop<uint16_t>(src, dst, n, [](uint16_t v) { return float(v); });
    case DType::U32:
      return convert_loop<uint32_t>(src, dst, n, [](uint32_t v) { return float(v); });
    case DType::U64:
      return convert_loop<uint64_t>(src, dst, n, [](uint64_t v) { return float(v); });
  }
}

void convert_from_f32(const float* src, void* dst, DType t, size_t n) {
  if (n == 0) return;
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    default:
      throw UnsupportedError(std::string("cannot convert f32 to ") + dtype_name(t));
  }
}

}  // namespace sdserve
