#include "server/models.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/mmap_file.h"
#include "io/model_files.h"
#include "io/sha256.h"

namespace fs = std::filesystem;

namespace sdserve::server {

namespace {

ModelEntry entry_of(const fs::path& p) {
  const ModelFiles files = ModelFiles::open(p.string());  // throws naming what is wrong
  const ModelInfo& info = files.info();
  if (info.family != ModelFamily::SD1 && info.family != ModelFamily::SD2)
    throw UnsupportedError(std::string(family_name(info.family)) + " models are not supported (SD1.x, SD2.x are)");
  ModelEntry e;
  e.single_file = !fs::is_directory(p);
  e.name = e.single_file ? p.stem().string() : p.filename().string();
  e.filename = p.filename().string();
  e.path = fs::absolute(p).lexically_normal().string();
  e.family = family_name(info.family);
  e.weight_bytes = info.weight_bytes;
  e.inpaint = info.inpaint;
  return e;
}

}  // namespace

ModelCatalog ModelCatalog::scan(const std::string& dir,
                                const std::function<void(const std::string&, const std::string&)>& skipped) {
  if (!fs::is_directory(dir)) throw NotFoundError("models directory not found: " + dir);
  std::vector<fs::path> paths;
  std::error_code ec;
  for (const auto& d : fs::directory_iterator(dir, ec)) {
    const fs::path& p = d.path();
    const std::string fname = p.filename().string();
    if (fname.empty() || fname[0] == '.') continue;
    std::error_code e2;
    if (fs::is_directory(p, e2)) {
      // A diffusers folder: model_index.json or the component folders.
      if (fs::exists(p / "model_index.json", e2) || fs::is_directory(p / "unet", e2)) paths.push_back(p);
    } else if (p.extension() == ".safetensors") {
      paths.push_back(p);
    }
  }
  if (ec) throw IoError("cannot read models directory " + dir + ": " + ec.message());
  std::sort(paths.begin(), paths.end());
  ModelCatalog c;
  for (const fs::path& p : paths) {
    try {
      ModelEntry e = entry_of(p);
      const bool dup =
          std::any_of(c.entries_.begin(), c.entries_.end(), [&](const ModelEntry& o) { return o.name == e.name; });
      if (dup) {
        if (skipped) skipped(p.string(), "another model has the name \"" + e.name + "\"");
        continue;
      }
      c.entries_.push_back(std::move(e));
    } catch (const std::exception& e) {
      if (skipped) skipped(p.string(), e.what());
      c.skipped_.push_back({p.filename().string(), e.what()});
    }
  }
  c.sha_->resize(c.entries_.size());
  return c;
}

ModelCatalog ModelCatalog::single(const std::string& path) {
  ModelCatalog c;
  ModelEntry e;
  const fs::path p(path);
  e.single_file = !fs::is_directory(p);
  e.name = e.single_file ? p.stem().string() : p.lexically_normal().filename().string();
  if (e.name.empty()) e.name = p.lexically_normal().parent_path().filename().string();
  e.filename = p.filename().empty() ? e.name : p.filename().string();
  e.path = path;
  try {  // what the header tells; a model that cannot be read fails when it is loaded
    const ModelFiles files = ModelFiles::open(path);
    e.family = family_name(files.info().family);
    e.weight_bytes = files.info().weight_bytes;
    e.inpaint = files.info().inpaint;
  } catch (const std::exception&) {
  }
  c.entries_.push_back(std::move(e));
  c.sha_->resize(1);
  return c;
}

std::string ModelCatalog::add(const std::string& path) {
  ModelEntry e = entry_of(fs::path(path));
  for (const ModelEntry& o : entries_)
    if (o.path == e.path) return o.name;
  std::string name = e.name;
  for (int k = 2; std::any_of(entries_.begin(), entries_.end(), [&](const ModelEntry& o) { return o.name == name; });
       ++k)
    name = e.name + "-" + std::to_string(k);
  e.name = name;
  entries_.push_back(std::move(e));
  sha_->resize(entries_.size());
  return name;
}

const ModelEntry& ModelCatalog::find(const std::string& want) const {
  SD_CHECK_ARG(!want.empty() && want.size() <= 512, "model: give a name");
  SD_CHECK_ARG(want.find('/') == std::string::npos && want.find('\\') == std::string::npos &&
                   want.find("..") == std::string::npos && want.find('\0') == std::string::npos,
               "model names are names in the models folder, not paths (no '/', '\\\\' or '..')");
  for (const ModelEntry& e : entries_)
    if (want == e.name || want == e.filename) return e;
  // A title "name [hash]".
  if (want.size() > 3 && want.back() == ']') {
    const size_t open = want.rfind(" [");
    if (open != std::string::npos) {
      const std::string name = want.substr(0, open);
      for (const ModelEntry& e : entries_)
        if (name == e.name || name == e.filename) return e;
    }
  }
  for (const auto& [file, why] : skipped_)
    if (want == file || want == fs::path(file).stem().string())
      throw ModelFormatError("model \"" + want + "\" cannot be used: " + why);
  std::string list;
  for (const ModelEntry& e : entries_) list += (list.empty() ? "" : ", ") + e.name;
  throw NotFoundError("model \"" + want +
                      "\" is not in the models folder; available: " + (list.empty() ? "none" : list));
}

std::string ModelCatalog::sha256(const ModelEntry& e) const {
  if (!e.single_file) return "";
  size_t k = size_t(&e - entries_.data());
  SD_CHECK_ARG(k < entries_.size(), "model entry is not from this catalog");
  {
    std::lock_guard<std::mutex> lk(*mu_);
    if ((*sha_)[k]) return *(*sha_)[k];
  }
  const auto f = MappedFile::open(e.path);
  f->advise_sequential();
  Sha256 h;
  constexpr size_t kChunk = size_t(1) << 20;
  for (size_t off = 0; off < f->size(); off += kChunk) h.update(f->data() + off, std::min(kChunk, f->size() - off));
  const auto d = h.digest();
  const std::string hex = to_hex(d.data(), d.size());
  std::lock_guard<std::mutex> lk(*mu_);
  (*sha_)[k] = hex;
  return hex;
}

std::string ModelCatalog::title(const ModelEntry& e) const {
  const std::string h = e.single_file ? short_hash(e) : "";
  return h.empty() ? e.name : e.name + " [" + h + "]";
}

}  // namespace sdserve::server
