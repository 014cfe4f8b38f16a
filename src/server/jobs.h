// Generation jobs: a bounded queue, one engine worker that owns the model, and the record of
// every job (status, progress, results) that the HTTP handlers read. Handlers never block the
// worker: they submit, read snapshots under the manager's lock, and wait on its condition
// variable for changes (progress events, completion).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "pipeline/img2img.h"
#include "pipeline/stable_diffusion.h"
#include "server/http_error.h"

namespace sdserve::server {

enum class JobStatus { Queued, Running, Succeeded, Failed, Canceled };
const char* job_status_name(JobStatus s);
inline bool finished(JobStatus s) { return s != JobStatus::Queued && s != JobStatus::Running; }

using Clock = std::chrono::steady_clock;

struct Job {
  std::string id;
  std::string type = "txt2img";
  GenerateRequest req;
  std::shared_ptr<const PreparedImg2Img> prep;  // img2img: puts results over the original
  // Set by cancel(); read by the worker's progress callback between sampling steps.
  std::atomic<bool> cancel{false};

  // Everything below is guarded by JobManager's mutex.
  JobStatus status = JobStatus::Queued;
  int step = 0, steps = 0;
  uint64_t version = 0;  // bumped on every change (for waiters)
  Clock::time_point created, started, ended;
  double created_unix = 0;
  std::vector<std::vector<uint8_t>> pngs;  // results, PNG with the infotext
  std::vector<std::string> infotexts;
  std::vector<int64_t> seeds;
  std::optional<HttpError> error;
};

struct JobManagerOptions {
  size_t queue_size = 16;           // queued (not yet running) jobs; more is 429
  size_t keep_finished = 256;       // finished jobs kept for fetching; the oldest go first
  std::chrono::seconds ttl{3600};   // ... and none longer than this
  std::string version = "sdserve";  // the infotext's Version
};

// Throws from submit() when the queue is full (HTTP 429).
struct QueueFull : std::runtime_error {
  double retry_after_s;
  explicit QueueFull(double s) : std::runtime_error("the queue is full"), retry_after_s(s) {}
};
// Throws from submit() while draining or when the model failed to load (HTTP 503).
struct NotAccepting : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class JobManager {
 public:
  // `load` runs on the worker thread first; until it returns, /health says 503 and jobs wait in
  // the queue. If it throws, the server stays up: health reports why and jobs fail with it.
  JobManager(JobManagerOptions opt, std::function<std::unique_ptr<StableDiffusion>()> load);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Validates against the model when it is loaded (unknown LoRA names, prompt length) so bad
  // requests fail at once; throws sdserve errors, QueueFull or NotAccepting.
  std::shared_ptr<Job> submit(const std::string& type, GenerateRequest req,
                              std::shared_ptr<const PreparedImg2Img> prep = nullptr);
  std::shared_ptr<Job> find(const std::string& id) const;
  bool forgotten(const std::string& id) const;  // existed, but its record expired (HTTP 410)
  // true if the job was still queued or running (a queued job ends at once; a running one
  // within one sampling step).
  bool cancel(const std::string& id);
  // Waits until `job` changes past `seen_version` or `timeout` passes; returns the version now.
  uint64_t wait_change(const Job& job, uint64_t seen_version, std::chrono::milliseconds timeout) const;
  size_t queue_position(const Job& job) const;  // 0 = running or next

  // Stops taking jobs (submit throws NotAccepting), lets queued and running jobs finish, and
  // returns true when all did within `timeout`.
  bool drain(std::chrono::milliseconds timeout);

  struct Health {
    bool ready = false;
    bool draining = false;
    std::string detail;  // why not ready
  };
  Health health() const;

  struct Stats {
    size_t queued = 0, running = 0;
    std::map<std::string, uint64_t> finished_by_status;  // since start
    uint64_t unet_calls = 0, images = 0;
    double busy_seconds = 0;
    std::vector<double> durations;  // seconds of the last finished jobs (histogram)
  };
  Stats stats() const;

  // The running job, or null.
  std::shared_ptr<Job> current() const;

  // The model, once loaded (for list routes); null before.
  const StableDiffusion* model() const;

  // The lock every Job field (beyond `cancel`) is read under.
  std::unique_lock<std::mutex> lock() const { return std::unique_lock<std::mutex>(mu_); }

 private:
  void worker_main();
  void run(const std::shared_ptr<Job>& job);
  void prune_locked();
  void touch_locked(Job& job);

  JobManagerOptions opt_;
  std::function<std::unique_ptr<StableDiffusion>()> load_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // job changes, queue changes
  std::unique_ptr<StableDiffusion> model_;
  bool loaded_ = false, load_failed_ = false, stopping_ = false, draining_ = false;
  std::string load_error_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::shared_ptr<Job> running_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::string> finished_order_;
  std::set<std::string> forgotten_;
  std::deque<std::string> forgotten_order_;
  Stats stats_;
  std::thread worker_;
};

}  // namespace sdserve::server
