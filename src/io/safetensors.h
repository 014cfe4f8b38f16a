// Reader and writer for the safetensors format: 8-byte little-endian header length N, N bytes of
// JSON header, then the data section. The reader validates as strictly as the reference Rust crate
// (and a little more: duplicate keys, unknown fields) before any tensor is touched, so a corrupt or
// hostile file fails with a one-line ModelFormatError instead of a crash or a huge allocation.
//
// Alignment guarantee of get(): the view points straight into the file. Files written by the Python
// `safetensors` library or by write_safetensors() pad the header to 8 bytes and store tensors in
// order of decreasing dtype size, so every view is aligned for its dtype. Other files may yield
// misaligned views; check is_aligned() or use get_as(), which returns an owned, 64-byte-aligned copy
// whenever the data is converted or misaligned. Weight files are treated as immutable: truncating
// one while it is mapped makes later reads of the lost pages fail with SIGBUS.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace sdserve {

class MappedFile;

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte offsets in the data section
};

// The format's limit on the JSON header (same as the Rust crate), checked before reading it.
constexpr uint64_t kSafeTensorsMaxHeaderSize = 100'000'000;

class SafeTensorsFile {
 public:
  // Maps the file (never reads it whole) and validates the header. Throws NotFoundError (missing),
  // IoError (unreadable, directory), UnsupportedError (a PyTorch pickle/zip checkpoint) or
  // ModelFormatError (anything wrong in the file itself).
  static SafeTensorsFile open(const std::string& path);
  // Same validation over bytes already in memory; `name` is used in error messages.
  static SafeTensorsFile from_memory(std::shared_ptr<const std::vector<uint8_t>> bytes, std::string name);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // ordered by data offset
  const TensorInfo* find(std::string_view name) const;                 // nullptr if absent
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Zero-copy view into the file; keeps the mapping alive. Writing into it never modifies the file
  // (copy-on-write private mapping for open(); do not write into views from from_memory()).
  Tensor get(std::string_view name) const;
  // `name` converted to `dtype` (any stored dtype to F32/F16/BF16). Returns the zero-copy view when
  // the dtype already matches and the data is aligned; otherwise an owned, aligned copy.
  Tensor get_as(std::string_view name, DType dtype) const;
  // Whether get(info.name) would be aligned to its dtype size.
  bool is_aligned(const TensorInfo& info) const;

  size_t file_size() const { return size_; }
  size_t header_size() const { return header_size_; }  // N, the JSON length including padding
  // The whole file (e.g. for hashing a checkpoint) and one tensor's raw bytes.
  std::span<const uint8_t> raw_bytes() const { return {base_, size_}; }
  std::span<const uint8_t> tensor_bytes(const TensorInfo& info) const;
  // Asks the kernel to start reading a tensor's pages (hint only).
  void prefetch(const TensorInfo& info) const;

 private:
  SafeTensorsFile() = default;
  void parse(std::string_view path_for_errors);
  const TensorInfo& require(std::string_view name) const;

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };

  std::string path_;
  std::shared_ptr<void> keepalive_;  // MappedFile or the caller's byte vector
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  size_t header_size_ = 0;
  std::shared_ptr<const MappedFile> mapped_;  // set by open(), for read-ahead hints
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes a valid safetensors file: header padded with spaces to a multiple of 8 (like the Python
// library), tensors stored in order of decreasing dtype size so that every tensor is aligned.
// Writes to a temporary file and renames it into place. Throws InvalidArgument (duplicate or
// reserved names, non-CPU tensors, invalid UTF-8) or IoError.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The bytes write_safetensors() would write, for in-memory use (tests, fuzz seeds).
std::vector<uint8_t> serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                           const std::map<std::string, std::string>& metadata = {});

}  // namespace sdserve
