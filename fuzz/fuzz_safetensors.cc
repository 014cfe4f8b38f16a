// libFuzzer target for the safetensors reader. Any input must either parse into a file whose
// tensors can all be read, or fail with an sdserve::Error carrying a one-line message; a crash,
// sanitizer report, other exception type or hang is a bug. See docs/FUZZING.md.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

namespace {
// Convert only small tensors so a valid input cannot make one run slow or memory-hungry.
constexpr uint64_t kMaxConvertBytes = 1 << 16;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(data, data + size);
  try {
    const auto f = sdserve::SafeTensorsFile::from_memory(bytes, "fuzz.safetensors");
    float sink = 0;
    for (const sdserve::TensorInfo& t : f.tensors()) {
      if (f.find(t.name) != &t || t.end < t.begin || t.end - t.begin > size) __builtin_trap();
      sdserve::Tensor view = f.get(t.name);
      if (view.nbytes() != t.end - t.begin) __builtin_trap();
      if (t.end - t.begin > kMaxConvertBytes) continue;
      // Touch every byte of the view (ASan checks that it lies inside the input) and convert.
      uint8_t acc = 0;
      for (uint64_t i = 0; i < t.end - t.begin; ++i) acc ^= static_cast<const uint8_t*>(view.raw_data())[i];
      sdserve::Tensor c = f.get_as(t.name, sdserve::DType::F32);
      if (c.numel() > 0) sink += c.data<float>()[0] + float(acc);
      if (sdserve::is_float(t.dtype) || t.dtype == sdserve::DType::F16) f.get_as(t.name, sdserve::DType::BF16);
    }
    for (const auto& [k, v] : f.metadata()) sink += float(k.size() + v.size());
    volatile float keep = sink;
    (void)keep;
  } catch (const sdserve::Error& e) {
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();  // messages must be one line
  }
  return 0;
}
