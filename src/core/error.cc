#include "core/error.h"

namespace sdserve {

const char* error_kind_name(ErrorKind k) noexcept {
  switch (k) {
    case ErrorKind::InvalidArgument:
      return "invalid_argument";
    case ErrorKind::NotFound:
      return "not_found";
    case ErrorKind::ModelFormat:
      return "model_format";
    case ErrorKind::Unsupported:
      return "unsupported";
    case ErrorKind::Io:
      return "io";
    case ErrorKind::Resource:
      return "resource_exhausted";
    case ErrorKind::Internal:
      return "internal";
  }
  return "internal";
}

}  // namespace sdserve
