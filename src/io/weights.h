// A read-only view of named weights spread over one or more safetensors files,
// optionally under a key prefix (e.g. "cond_stage_model.transformer." inside a
// single-file checkpoint). Tensors come back converted to the requested dtype.
//
// A source may also carry a rename map (with_renames): callers then ask for tensors by one
// layout's names (diffusers) while the files store another's (LDM/A1111, see io/ldm_names.h).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace sdserve {

class WeightSource {
 public:
  using RenameMap = std::unordered_map<std::string, std::string>;

  WeightSource() = default;
  WeightSource(std::vector<std::shared_ptr<const SafeTensorsFile>> files, std::string prefix = "");

  WeightSource with_prefix(const std::string& more) const;  // appends to the prefix
  // A view whose get() returns tensors on `device` (uploaded after the dtype conversion), so
  // model code loads onto a GPU without knowing about it. Default: the CPU.
  WeightSource with_device(Device device) const;
  Device device() const { return device_; }
  const std::string& prefix() const { return prefix_; }

  // A view in which get/has/info(name) look up (*map)[name]. Names the map lacks are missing
  // (a full map, e.g. diffusers -> LDM) or, with `pass_through`, looked up unchanged (a map of
  // a few renames). Keys and values are relative to this source's prefix. Applied on top of
  // earlier renames (the new map first). After it, with_prefix() narrows the caller-side names
  // ("encoder." + name is looked up in the map), so model code can hand sub-sources to
  // sub-modules without knowing about the renames.
  // Renaming never reshapes: an LDM VAE attention weight stays [C, C, 1, 1] where diffusers has a
  // Linear [C, C]; the caller view()s it.
  WeightSource with_renames(std::shared_ptr<const RenameMap> map, bool pass_through = false) const;
  bool has_renames() const { return renames_ != nullptr; }
  // The full key (prefix included) that `name` resolves to in the files, for messages; empty
  // when a full rename map has no entry for it.
  std::string full_name(std::string_view name) const;

  bool has(std::string_view name) const;
  // Throws NotFoundError naming the file(s) and the full key.
  Tensor get(std::string_view name, DType dtype) const;
  const TensorInfo* info(std::string_view name) const;
  // All keys under the prefix (prefix stripped), as the caller names them: a stored key the map
  // renames is listed under its caller-side name(s) only; with pass-through, other stored keys
  // that no map entry shadows are listed as they are.
  std::vector<std::string> keys() const;
  std::string describe() const;  // file names, for error messages

 private:
  std::vector<std::shared_ptr<const SafeTensorsFile>> files_;
  std::string prefix_;
  // With renames: full key = prefix_ + resolve(name_prefix_ + name).
  std::shared_ptr<const RenameMap> renames_;
  bool pass_through_ = false;
  Device device_ = Device::cpu();
  std::string name_prefix_;
};

}  // namespace sdserve
