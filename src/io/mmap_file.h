// A whole file mapped into memory. Tensors read from a weight file are views
// into this mapping, so it lives behind a shared_ptr they all hold.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace sdserve {

class MappedFile {
 public:
  // Maps `path` MAP_PRIVATE. Throws NotFoundError (missing), IoError (open/stat/mmap failed, or a
  // directory / device instead of a regular file).
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Kernel read-ahead hints for [offset, offset + length); failures are ignored (hints only).
  void advise_willneed(size_t offset, size_t length) const;
  void advise_sequential() const;

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sdserve
