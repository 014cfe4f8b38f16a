// Textual-inversion embeddings (A1111's embeddings folder): every `.safetensors` file in a
// directory is an embedding named after the file (without the extension), used by writing that
// name in a prompt. Pickle files (.pt, .bin) are never read.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"

namespace sdserve {

struct TextualInversion {
  std::string name;  // the file name without ".safetensors"
  std::string path;
  Tensor vectors;  // [n, hidden] f32 on the CPU
};

// Reads the embeddings in `dir` that fit a text encoder of width `hidden`. The vectors are the
// file's only tensor (A1111's "emb_params", or any single key, [n, hidden] or [hidden]); an
// SDXL-style file takes "clip_l" or "clip_g", whichever has the encoder's width. Files whose
// width fits neither are skipped, as A1111 skips them (listed in `skipped` when given). A file
// that is not valid safetensors, or has several tensors and no clip_l/clip_g, is a
// ModelFormatError naming it; a missing directory is a NotFoundError.
std::vector<TextualInversion> load_embeddings_dir(const std::string& dir, int64_t hidden,
                                                  std::vector<std::string>* skipped = nullptr);

}  // namespace sdserve
