#include "pipeline/embeddings.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"

namespace sdserve {

std::vector<TextualInversion> load_embeddings_dir(const std::string& dir, int64_t hidden,
                                                  std::vector<std::string>* skipped) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw NotFoundError("embeddings directory not found: " + dir);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  if (ec) throw IoError("cannot list embeddings directory " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end());
  std::vector<TextualInversion> out;
  for (const fs::path& p : files) {
    const SafeTensorsFile f = SafeTensorsFile::open(p.string());
    std::vector<std::string> candidates;
    if (f.tensors().size() == 1) {
      candidates.push_back(f.tensors()[0].name);
    } else if (f.contains("clip_l") || f.contains("clip_g")) {
      for (const char* k : {"clip_l", "clip_g"})
        if (f.contains(k)) candidates.push_back(k);
    } else {
      throw ModelFormatError(p.string() + ": not a textual-inversion embedding (" + std::to_string(f.tensors().size()) +
                             " tensors; expected one, e.g. emb_params, or clip_l/clip_g)");
    }
    bool used = false;
    for (const std::string& key : candidates) {
      const TensorInfo* info = f.find(key);
      if (!is_float(info->dtype)) throw ModelFormatError(p.string() + ": tensor '" + key + "' is not floating point");
      Shape s = info->shape;
      if (s.size() == 1) s.insert(s.begin(), 1);
      if (s.size() != 2 || s[1] != hidden || s[0] < 1) continue;
      Tensor v = f.get_as(key, DType::F32).reshape(s).clone();
      out.push_back({p.stem().string(), p.string(), v});
      used = true;
      break;
    }
    if (!used && skipped) skipped->push_back(p.stem().string());
  }
  return out;
}

}  // namespace sdserve
