// `sdserve serve`: the HTTP service (docs/API.md). cpp-httplib accepts connections on a thread
// pool; a JobManager owns the model and runs jobs on its own thread.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "pipeline/stable_diffusion.h"
#include "server/request.h"

namespace sdserve::server {

struct ServeOptions {
  std::string model;
  LoadOptions load;
  std::string host = "0.0.0.0";
  int port = 7860;
  std::vector<std::string> api_keys;  // empty: no authentication
  std::vector<std::string> cors_origins;
  size_t max_body_bytes = size_t(32) << 20;
  RequestLimits limits;
  size_t queue_size = 16;
  size_t keep_finished = 256;
  std::chrono::seconds job_ttl{3600};
  std::chrono::seconds drain_timeout{110};
  int http_threads = 32;
  std::string version = "sdserve";
};

// Serves until SIGTERM or SIGINT, then drains (docs/API.md, "Shutting down"); returns the exit
// status (0 after a clean drain). Throws IoError when the address cannot be bound.
int serve(const ServeOptions& opt);

}  // namespace sdserve::server
