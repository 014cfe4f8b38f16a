// The built-in demo model (`--model demo`): a tiny SD1-architecture pipeline (CLIP text encoder
// with the real 49408-token vocabulary, UNet, 4-level VAE so 512 px images have 64 px latents as
// in SD1.5) with deterministic hash-init weights (io/hash_init.h). It needs no files: it is written
// once as a diffusers folder (no tokenizer/, so the bundled CLIP tokenizer is used) and loaded
// like any other model. Its images are noise; it exists to try the service and the API without a
// download.
//
// The *_parameter_shapes functions list every parameter (diffusers / transformers names) of a model
// with the given config; tests check them against real checkpoints.
#pragma once
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/clip_text.h"
#include "models/configs.h"

namespace sdserve {

using ParameterShapes = std::vector<std::pair<std::string, Shape>>;

ParameterShapes unet_parameter_shapes(const UNetConfig& c);
ParameterShapes vae_parameter_shapes(const VAEConfig& c);
ParameterShapes clip_text_parameter_shapes(const ClipTextConfig& c);

// Bumped whenever the demo model's configs or weights change (the folder is rewritten).
constexpr int kDemoModelVersion = 1;

// Writes the demo model into `dir` unless a current one is already there; returns dir. Safe when
// several processes start at once (written to a temporary folder, then renamed).
std::filesystem::path ensure_demo_model(const std::filesystem::path& dir);

}  // namespace sdserve
