// libFuzzer target for LoRA-family network files (pipeline/lora.h): any bytes must either parse
// into a network, which is then merged into a few small weights (a Linear, a 3x3 and a 1x1 conv, a
// text-encoder matrix) by both merge paths and restored exactly, or fail with an sdserve::Error
// carrying a one-line message. A crash, sanitizer report, other exception type, hang, or a
// restore that is not bit-exact is a bug. Seeds: fuzz/corpus/lora (tools/make_fuzz_lora_seeds.py). See docs/FUZZING.md.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "pipeline/lora.h"

namespace {

sdserve::Tensor ramp(const sdserve::Shape& s) {
  sdserve::Tensor t = sdserve::Tensor::empty(s, sdserve::DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i % 7) - 3.f;
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sdserve;
  auto bytes = std::make_shared<std::vector<uint8_t>>(data, data + size);
  try {
    const auto f = SafeTensorsFile::from_memory(bytes, "fuzz.safetensors");
    const auto net = LoraNetwork::from_file(f);
    Tensor lin = ramp({8, 6}), conv = ramp({4, 3, 3, 3}), pw = ramp({6, 4, 1, 1}), te = ramp({5, 5});
    const std::vector<Tensor> before{lin.clone(), conv.clone(), pw.clone(), te.clone()};
    using C = PatchTarget::Component;
    WeightPatcher p({{"unet.blk.lin", &lin, C::UNet, {}},
                     {"unet.blk.conv", &conv, C::UNet, {}},
                     {"unet.blk.pw", &pw, C::UNet, {}},
                     {"text_encoder.text_model.encoder.layers.0.mlp.fc1", &te, C::TextEncoder, {}}});
    // Both merge paths: the CPU's in-place sgemm, then the device path (the GPU's arithmetic, its
    // prepared factors kept and used again by the second round).
    for (const bool device_path : {false, true, true}) {
      WeightPatcher::set_device_path_on_cpu_for_testing(device_path);
      try {
        p.apply({{net, 0.5f, -1.5f}});
      } catch (const Error& e) {
        if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();
      }
      p.restore();
      const std::vector<Tensor> after{lin, conv, pw, te};
      for (size_t i = 0; i < after.size(); ++i)
        if (std::memcmp(after[i].raw_data(), before[i].raw_data(), after[i].nbytes()) != 0) __builtin_trap();
    }
    WeightPatcher::set_device_path_on_cpu_for_testing(false);
  } catch (const Error& e) {
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();  // messages must be one line
  }
  return 0;
}
