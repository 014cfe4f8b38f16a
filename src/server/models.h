// The models folder of `sdserve serve --models-dir` (docs/API.md, "Models"): diffusers folders and
// single-file .safetensors checkpoints found at its top level, by name. Names come from the folder:
// a request names a model only by an entry found here, never by a path.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace sdserve::server {

struct ModelEntry {
  std::string name;      // file stem (single file) or folder name
  std::string path;      // absolute
  std::string filename;  // the file or folder name inside the models folder
  bool single_file = true;
  std::string family;         // "SD1.x", "SD2.x", ... (ModelFiles' detection)
  uint64_t weight_bytes = 0;  // tensor bytes: the estimate of its size when loaded
  bool inpaint = false;       // a 9-channel inpainting UNet
};

class ModelCatalog {
 public:
  ModelCatalog() = default;
  // Scans `dir` (not recursively). Entries that cannot be opened or are not an SD1/SD2 model are
  // skipped, each reported through `skipped(path, why)`. Throws NotFoundError for a missing folder.
  static ModelCatalog scan(const std::string& dir,
                           const std::function<void(const std::string& path, const std::string& why)>& skipped = {});
  // A catalog of one model outside any folder (`--model PATH` without --models-dir).
  static ModelCatalog single(const std::string& path);

  // Adds the model at `path` (a file or folder outside the models folder: --model PATH); returns
  // its entry's name. Throws what ModelFiles::open throws.
  std::string add(const std::string& path);

  const std::vector<ModelEntry>& entries() const { return entries_; }
  // The entry `want` names: its name, its filename, or its A1111 title "name [hash]". Throws
  // InvalidArgument for a name with path separators, "..", or an absolute path, ModelFormatError
  // (with the reason) for a file the scan skipped, and NotFoundError (listing the names) otherwise.
  const ModelEntry& find(const std::string& want) const;
  // A1111's hashes of a single file: the whole file's SHA-256 (hex) and its first 10 digits; empty
  // for folders. Computed once per entry (reads the whole file).
  std::string sha256(const ModelEntry& e) const;
  std::string short_hash(const ModelEntry& e) const { return sha256(e).substr(0, 10); }
  // "name [hash]" (A1111's checkpoint title); the name alone for a folder.
  std::string title(const ModelEntry& e) const;

 private:
  std::vector<ModelEntry> entries_;
  std::vector<std::pair<std::string, std::string>> skipped_;  // (name, why) of what the scan skipped
  std::shared_ptr<std::mutex> mu_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::vector<std::optional<std::string>>> sha_ =
      std::make_shared<std::vector<std::optional<std::string>>>();
};

}  // namespace sdserve::server
