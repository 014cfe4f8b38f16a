#include "server/http_error.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "net/fetch.h"
#include "server/jobs.h"

namespace sdserve::server {

HttpError http_error(int status, std::string error, std::string detail) {
  return {status, std::move(error), printable(detail, 4096)};
}

HttpError http_error(const std::exception& e) {
  // Init images by URL (net/fetch.h): refused by the guard or by configuration, or the fetch failed.
  if (dynamic_cast<const net::UrlRefused*>(&e)) return http_error(403, "url_refused", e.what());
  if (dynamic_cast<const net::UrlFetchDisabled*>(&e)) return http_error(403, "url_fetch_disabled", e.what());
  if (dynamic_cast<const net::FetchFailed*>(&e)) return http_error(422, "url_fetch_failed", e.what());
  if (const auto* q = dynamic_cast<const QueueFull*>(&e)) {
    HttpError h = http_error(429, "queue_full", "the queue is full; retry after the Retry-After seconds");
    h.retry_after_s = std::max(1, int(std::ceil(q->retry_after_s)));
    return h;
  }
  if (dynamic_cast<const JobTimedOut*>(&e)) return http_error(504, "timeout", e.what());
  if (dynamic_cast<const NotAccepting*>(&e)) {
    HttpError h = http_error(503, "unavailable", e.what());
    h.retry_after_s = 10;
    return h;
  }
  if (const auto* se = dynamic_cast<const Error*>(&e)) {
    switch (se->kind()) {
      case ErrorKind::InvalidArgument:
        return http_error(400, "invalid_argument", se->what());
      case ErrorKind::NotFound:
        return http_error(404, "not_found", se->what());
      case ErrorKind::ModelFormat:
        return http_error(422, "model_format", se->what());
      case ErrorKind::Unsupported:
        return http_error(422, "unsupported", se->what());
      case ErrorKind::Io:
        return http_error(500, "io", se->what());
      case ErrorKind::Resource:
        return http_error(503, "resource", se->what());
      case ErrorKind::Internal:
        return http_error(500, "internal", se->what());
    }
  }
  return http_error(500, "internal", e.what());
}

std::string error_json(const HttpError& e) {
  return nlohmann::json{{"error", e.error}, {"detail", e.detail}}.dump(-1, ' ', false,
                                                                       nlohmann::json::error_handler_t::replace);
}

}  // namespace sdserve::server
