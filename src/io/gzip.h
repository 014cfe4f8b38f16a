// gzip (RFC 1952) decompression of an in-memory buffer, via zlib.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace sdserve {

// Decompresses a whole gzip stream (concatenated members are not supported). Throws ModelFormatError
// naming `what` on corrupt or truncated data, and InternalError if zlib cannot be initialised.
std::string gunzip(const unsigned char* data, size_t size, const std::string& what);
inline std::string gunzip(std::string_view data, const std::string& what) {
  return gunzip(reinterpret_cast<const unsigned char*>(data.data()), data.size(), what);
}

}  // namespace sdserve
