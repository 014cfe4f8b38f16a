#include "io/gzip.h"

#include <zlib.h>

#include <climits>

#include "core/error.h"

namespace sdserve {

std::string gunzip(const unsigned char* data, size_t size, const std::string& what) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw InternalError(what + ": inflateInit failed");
  zs.next_in = const_cast<Bytef*>(data);
  std::string out;
  char buf[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    if (zs.avail_in == 0 && size > 0) {  // feed in chunks that fit uInt
      const size_t chunk = size < static_cast<size_t>(UINT_MAX) ? size : static_cast<size_t>(UINT_MAX);
      zs.avail_in = static_cast<uInt>(chunk);
      size -= chunk;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    const bool stalled = rc == Z_BUF_ERROR && zs.avail_in == 0 && size == 0;  // input ended early
    if ((rc != Z_OK && rc != Z_STREAM_END) || stalled) {
      inflateEnd(&zs);
      throw ModelFormatError(what + ": corrupt or truncated gzip data");
    }
    out.append(buf, sizeof(buf) - zs.avail_out);
  }
  inflateEnd(&zs);
  return out;
}

}  // namespace sdserve
