// The one place where engine errors become HTTP answers: a status code and a JSON body
// {"error": <kind>, "detail": <one-line message>}.
#pragma once
#include <exception>
#include <string>

namespace sdserve::server {

struct HttpError {
  int status = 500;
  std::string error;      // short machine-readable kind: "invalid_argument", "not_found", ...
  std::string detail;     // the message, one line of valid UTF-8
  int retry_after_s = 0;  // > 0: sent as a Retry-After header (a full queue, a draining server)
};

// sdserve::Error by kind (InvalidArgument 400, NotFound 404, ModelFormat 422 (a file we were
// asked to use is broken), Unsupported 422, Io 500, Resource 503, Internal 500); the job
// queue's refusals (QueueFull 429, NotAccepting 503, both with Retry-After); any other
// exception 500 "internal".
HttpError http_error(const std::exception& e);
HttpError http_error(int status, std::string error, std::string detail);

// {"error": ..., "detail": ...}
std::string error_json(const HttpError& e);

}  // namespace sdserve::server
