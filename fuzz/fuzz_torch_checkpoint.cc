// libFuzzer target for the PyTorch checkpoint reader (zip container, legacy stream, pickle
// interpreter). Any input must either load into tensors whose bytes can all be read, or fail with an
// sdserve::Error carrying a one-line message; a crash, sanitizer report, leak, other exception type,
// hang or out-of-memory is a bug. See docs/FUZZING.md.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.h"
#include "io/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(data, data + size);
  // Small caps so that a valid input cannot make one run slow or memory-hungry.
  sdserve::TorchReadLimits lim;
  lim.max_zip_entries = 4096;
  lim.max_pickle_bytes = 1 << 20;
  lim.max_pickle_objects = 1 << 16;
  lim.max_tensors = 4096;
  lim.max_tensor_bytes = 1 << 22;
  try {
    const sdserve::TorchTensors t = sdserve::load_torch_checkpoint_tensors_bytes(bytes, "fuzz.pth", lim);
    uint8_t acc = 0;
    for (const auto& [name, tensor] : t.tensors) {
      // (Tensor::is_contiguous() is false for some zero-element shapes such as [4, 0, 3].)
      if (!tensor.defined() || (tensor.numel() > 0 && !tensor.is_contiguous())) __builtin_trap();
      // Touch every byte (ASan checks that views lie inside the input or an owned buffer).
      const auto* p = static_cast<const uint8_t*>(tensor.raw_data());
      for (size_t i = 0; i < tensor.nbytes(); ++i) acc ^= p[i];
    }
    // The safetensors form holds the same tensors, byte for byte.
    const sdserve::SafeTensorsFile f = sdserve::read_torch_checkpoint_bytes(bytes, "fuzz.pth", lim);
    if (f.tensors().size() != t.tensors.size()) __builtin_trap();
    for (const auto& [name, tensor] : t.tensors) {
      const sdserve::TensorInfo* ti = f.find(name);
      if (!ti || ti->dtype != tensor.dtype() || ti->shape != tensor.shape()) __builtin_trap();
      const auto b = f.tensor_bytes(*ti);
      if (b.size() != tensor.nbytes() || (!b.empty() && std::memcmp(b.data(), tensor.raw_data(), b.size()) != 0))
        __builtin_trap();
    }
    volatile uint8_t keep = acc;
    (void)keep;
  } catch (const sdserve::Error& e) {
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();  // messages must be one line
  }
  return 0;
}
