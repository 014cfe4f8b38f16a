#include "io/weights.h"

namespace sdserve {

WeightSource::WeightSource(std::vector<std::shared_ptr<const SafeTensorsFile>> files, std::string prefix)
    : files_(std::move(files)), prefix_(std::move(prefix)) {}

WeightSource WeightSource::with_prefix(const std::string& more) const {
  WeightSource w = *this;
  w.prefix_ += more;
  return w;
}

const TensorInfo* WeightSource::info(std::string_view name) const {
  const std::string full = prefix_ + std::string(name);
  for (const auto& f : files_)
    if (const TensorInfo* i = f->find(full)) return i;
  return nullptr;
}

bool WeightSource::has(std::string_view name) const { return info(name) != nullptr; }

Tensor WeightSource::get(std::string_view name, DType dtype) const {
  const std::string full = prefix_ + std::string(name);
  for (const auto& f : files_)
    // get_as returns an aligned copy whenever the zero-copy view would be misaligned.
    if (f->contains(full)) return f->get_as(full, dtype);
  throw NotFoundError(describe() + ": missing tensor '" + full + "'");
}

std::vector<std::string> WeightSource::keys() const {
  std::vector<std::string> out;
  for (const auto& f : files_)
    for (const TensorInfo& t : f->tensors())
      if (t.name.compare(0, prefix_.size(), prefix_) == 0) out.push_back(t.name.substr(prefix_.size()));
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
