// Typed errors thrown inside the engine. The HTTP layer (later) and the CLI map
// them to status codes / exit codes in exactly one place each.
#pragma once
#include <stdexcept>
#include <string>

namespace sdserve {

enum class ErrorKind {
  InvalidArgument,  // caller gave a bad value (shape, size, option)
  NotFound,         // a file, tensor or name that does not exist
  ModelFormat,      // a model file is corrupt, truncated or not what it claims
  Unsupported,      // valid input we do not handle (yet), e.g. a pickle checkpoint
  Io,               // the OS refused: open/read/mmap failed
  Resource,         // out of (GPU) memory or another capacity limit; retry smaller or later
  Internal,         // a bug or a backend library failure
};

const char* error_kind_name(ErrorKind k) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

struct InvalidArgument : Error {
  explicit InvalidArgument(const std::string& m) : Error(ErrorKind::InvalidArgument, m) {}
};
struct NotFoundError : Error {
  explicit NotFoundError(const std::string& m) : Error(ErrorKind::NotFound, m) {}
};
struct ModelFormatError : Error {
  explicit ModelFormatError(const std::string& m) : Error(ErrorKind::ModelFormat, m) {}
};
struct UnsupportedError : Error {
  explicit UnsupportedError(const std::string& m) : Error(ErrorKind::Unsupported, m) {}
};
struct IoError : Error {
  explicit IoError(const std::string& m) : Error(ErrorKind::Io, m) {}
};
struct ResourceError : Error {
  explicit ResourceError(const std::string& m) : Error(ErrorKind::Resource, m) {}
};
struct InternalError : Error {
  explicit InternalError(const std::string& m) : Error(ErrorKind::Internal, m) {}
};

}  // namespace sdserve

// Shape/argument checks that throw InvalidArgument with the failing condition.
#define SD_CHECK_ARG(cond, msg)                                      \
  do {                                                               \
    if (!(cond)) throw ::sdserve::InvalidArgument(std::string(msg)); \
  } while (0)
