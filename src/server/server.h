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
  // Batching of compatible jobs (JobManagerOptions): jobs per UNet batch (1: off) and how long a
  // job waits for partners after it was queued. The images per batch are capped at limits.max_batch.
  size_t max_batch_jobs = 4;
  // A folder of models to list and switch between (docs/API.md, "Models"); `model` is then a name in
  // it (or a path). Loaded models are kept within models_memory_mb (0: one at a time).
  std::string models_dir;
  uint64_t models_memory_mb = 0;
  int batch_wait_ms = 0;
  size_t keep_finished = 256;
  std::chrono::seconds job_ttl{3600};
  std::chrono::seconds drain_timeout{110};
  std::chrono::seconds job_timeout{0};  // 0: none (JobManagerOptions::job_timeout)
  // Connections are served by a pool of this many threads; an open (keep-alive or event-stream)
  // connection holds one.
  int http_threads = 32;
  // Seconds an idle keep-alive connection stays open. Behind a load balancer it must outlast the
  // balancer's own idle timeout, or the balancer may reuse a connection the server is closing (a 502).
  int keep_alive_timeout = 5;
  std::string version = "sdserve";
  // Init images by URL ("url", "init_image_url", "mask_url"; docs/API.md): off unless
  // --allow-url-fetch. The guarded GET (net/fetch.h) takes max_body_bytes as its size cap.
  bool allow_url_fetch = false;
  std::chrono::milliseconds url_fetch_timeout{10000};
  std::string url_fetch_allow_test_host;  // tests only: one "host:port" exempt from the address guard
  // The web page (docs/WEB.md): served from this folder on every request when set (development),
  // else the copy embedded at build time.
  std::string web_dir;
};

// Serves until SIGTERM or SIGINT, then drains (docs/API.md, "Shutting down"); returns the exit
// status (0 after a clean drain). Throws IoError when the address cannot be bound.
int serve(const ServeOptions& opt);

}  // namespace sdserve::server
