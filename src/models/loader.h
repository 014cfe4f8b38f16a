// Builds model objects from the files ModelFiles found.
#pragma once
#include "io/model_files.h"
#include "models/clip_text.h"

namespace sdserve {

struct TextEncoderOptions {
  DType dtype = DType::F32;
  Device device = Device::cpu();
  // Single-file checkpoints do not record the head count; every released CLIP text
  // tower uses 64-wide heads. Tests with tiny models override it.
  int64_t head_dim = 64;
};

ClipTextModel load_text_encoder(const ModelFiles& model, const TextEncoderOptions& opt = {});

}  // namespace sdserve
