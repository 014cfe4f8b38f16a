// A read-only view of named weights spread over one or more safetensors files,
// optionally under a key prefix (e.g. "cond_stage_model.transformer." inside a
// single-file checkpoint). Tensors come back converted to the requested dtype.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace sdserve {

class WeightSource {
 public:
  WeightSource() = default;
  WeightSource(std::vector<std::shared_ptr<const SafeTensorsFile>> files, std::string prefix = "");

  WeightSource with_prefix(const std::string& more) const;  // appends to the prefix
  const std::string& prefix() const { return prefix_; }

  bool has(std::string_view name) const;
  // Throws NotFoundError naming the file(s) and the full key.
  Tensor get(std::string_view name, DType dtype) const;
  const TensorInfo* info(std::string_view name) const;
  // All keys under the prefix (prefix stripped).
  std::vector<std::string> keys() const;
  std::string describe() const;  // file names, for error messages

 private:
  std::vector<std::shared_ptr<const SafeTensorsFile>> files_;
  std::string prefix_;
};

}  // namespace sdserve
