#include "io/weights.h"

namespace sdserve {

WeightSource::WeightSource(std::vector<std::shared_ptr<const SafeTensorsFile>> files, std::string prefix)
    : files_(std::move(files)), prefix_(std::move(prefix)) {}

WeightSource WeightSource::with_prefix(const std::string& more) const {
  WeightSource w = *this;
  // Without renames the stored keys are the caller's names, so the prefix is the file prefix.
  (renames_ ? w.name_prefix_ : w.prefix_) += more;
  return w;
}

WeightSource WeightSource::with_device(Device device) const {
  WeightSource w = *this;
  w.device_ = device;
  return w;
}

WeightSource WeightSource::with_renames(std::shared_ptr<const RenameMap> map, bool pass_through) const {
  SD_CHECK_ARG(map != nullptr, "with_renames: null map");
  WeightSource w = *this;
  if (!renames_) {
    w.renames_ = std::move(map);
    w.pass_through_ = pass_through;
    return w;
  }
  // Stacked renames: compose into one map (new first, then old). Only defined at the level the
  // old map was given, not inside a with_prefix() narrowing of it.
  SD_CHECK_ARG(name_prefix_.empty(),
               "with_renames on a renamed source narrowed by with_prefix('" + name_prefix_ + "')");
  auto composed = std::make_shared<RenameMap>();
  for (const auto& [from, to] : *map) {
    auto it = renames_->find(to);
    if (it != renames_->end())
      (*composed)[from] = it->second;
    else if (pass_through_)
      (*composed)[from] = to;
    // else: `to` is missing under the old map, and so is `from`.
  }
  if (pass_through)  // names the new map lacks reach the old map
    for (const auto& [from, to] : *renames_)
      if (!map->count(from)) (*composed)[from] = to;
  w.renames_ = std::move(composed);
  w.pass_through_ = pass_through && pass_through_;
  return w;
}

std::string WeightSource::full_name(std::string_view name) const {
  if (!renames_) return prefix_ + std::string(name);
  const std::string n = name_prefix_ + std::string(name);
  auto it = renames_->find(n);
  if (it != renames_->end()) return prefix_ + it->second;
  return pass_through_ ? prefix_ + n : std::string();
}

const TensorInfo* WeightSource::info(std::string_view name) const {
  const std::string full = full_name(name);
  if (full.empty()) return nullptr;  // not in a full rename map
  for (const auto& f : files_)
    if (const TensorInfo* i = f->find(full)) return i;
  return nullptr;
}

bool WeightSource::has(std::string_view name) const { return info(name) != nullptr; }

Tensor WeightSource::get(std::string_view name, DType dtype) const {
  const std::string full = full_name(name);
  if (full.empty())
    throw NotFoundError(describe() + ": no tensor '" + name_prefix_ + std::string(name) + "' in the name map for '" +
                        prefix_ + "'");
  for (const auto& f : files_)
    // get_as returns an aligned copy whenever the zero-copy view would be misaligned.
    if (f->contains(full)) return f->get_as(full, dtype).to(device_);
  std::string msg = describe() + ": missing tensor '" + full + "'";
  if (renames_) msg += " (asked for '" + name_prefix_ + std::string(name) + "')";
  throw NotFoundError(msg);
}

std::vector<std::string> WeightSource::keys() const {
  std::vector<std::string> out;
  if (!renames_) {
    for (const auto& f : files_)
      for (const TensorInfo& t : f->tensors())
        if (t.name.compare(0, prefix_.size(), prefix_) == 0) out.push_back(t.name.substr(prefix_.size()));
    return out;
  }
  std::unordered_multimap<std::string, std::string> inverse;  // stored name -> caller names
  for (const auto& [from, to] : *renames_) inverse.emplace(to, from);
  auto emit = [&](const std::string& caller) {
    if (caller.compare(0, name_prefix_.size(), name_prefix_) == 0) out.push_back(caller.substr(name_prefix_.size()));
  };
  for (const auto& f : files_)
    for (const TensorInfo& t : f->tensors()) {
      if (t.name.compare(0, prefix_.size(), prefix_) != 0) continue;
      const std::string stored = t.name.substr(prefix_.size());
      auto [lo, hi] = inverse.equal_range(stored);
      for (auto it = lo; it != hi; ++it) emit(it->second);
      if (lo == hi && pass_through_ && !renames_->count(stored)) emit(stored);  // reached by its own name
    }
  return out;
}

std::string WeightSource::describe() const {
  std::string s;
  for (const auto& f : files_) {
    if (!s.empty()) s += ", ";
    s += f->path();
  }
  return s.empty() ? "(no weight files)" : s;
}

}  // namespace sdserve
