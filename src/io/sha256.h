// SHA-256 (FIPS 180-4), dependency-free: portable C++, or the x86 SHA extensions when the CPU has them. Used for
// A1111-compatible model hashes
// ("Model hash: 0123456789" is the first 10 hex digits of the whole file's SHA-256).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sdserve {

class Sha256 {
 public:
  // `force_portable` skips the SHA-extension path (for tests that compare the two).
  explicit Sha256(bool force_portable = false);
  void update(const void* data, size_t n);
  // Finishes the hash; the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();

 private:
  void block(const uint8_t* p);
  void blocks(const uint8_t* p, size_t n);
  bool force_portable_;
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes
};

std::array<uint8_t, 32> sha256(const void* data, size_t n);
// Lowercase hex of the digest (64 characters).
std::string sha256_hex(std::string_view data);
std::string to_hex(const uint8_t* p, size_t n);

}  // namespace sdserve
