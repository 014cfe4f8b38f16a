// Helpers shared by the route files (server.cc, a1111.cc); not part of the engine.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "server/http_error.h"
#include "server/jobs.h"
#include "server/request.h"
#include "server/server.h"

namespace sdserve::server {

inline std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

inline void send_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
  res.set_content(error_json(e), "application/json");
}

// One JSON object per line on stderr (the service's log), with "ts" added.
void log_line(nlohmann::json j);

// Standard base64 (and the URL-safe alphabet); characters outside it, padding included, are skipped.
std::string base64_decode(const std::string& in);
std::string base64_encode(const std::string& in);

// What the route files share: the options, the jobs, request parsing (logs unknown fields once)
// and submission (a refusal throws QueueFull/NotAccepting: 429/503 via http_error.cc).
// The answer for a finished job that has no result: 409 canceled, its own error, or 500.
void send_job_error(const Job& job, httplib::Response& res);

struct RouteContext {
  const ServeOptions& opt;
  JobManager& jobs;
  std::function<ParsedRequest(const nlohmann::json& body)> parse;
  std::function<std::shared_ptr<Job>(const ParsedRequest&, httplib::Response&)> submit;
  std::function<void(const std::shared_ptr<Job>&)> wait_done;
  // Queues a job that is not a generation (an upscale).
  std::function<std::shared_ptr<Job>(const std::string& type, JobWork work, const JobOptions& options,
                                     httplib::Response&)>
      submit_work;
};

// The image format a GET .../images/{n} answers in: ?format=; else the job's output_format if the
// Accept header takes it (or */*, image/*, or there is none); else the first of image/png,
// image/jpeg, image/webp that Accept names.
std::string requested_format(const httplib::Request& req, const std::string& job_default);

// /sdapi/v1/*: the A1111 web UI's API as its clients (webuiapi) use it (docs/API.md).
void add_a1111_routes(httplib::Server& srv, RouteContext& ctx);

}  // namespace sdserve::server
