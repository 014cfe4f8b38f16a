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
#include "server/models.h"
#include "server/request.h"

namespace sdserve::server {

enum class JobStatus { Queued, Running, Succeeded, Failed, Canceled };
const char* job_status_name(JobStatus s);
inline bool finished(JobStatus s) { return s != JobStatus::Queued && s != JobStatus::Running; }

using Clock = std::chrono::steady_clock;

// What a job that is not a generation (JobManager::submit_work) produces.
struct JobResults {
  std::vector<std::vector<uint8_t>> pngs;
  std::vector<std::string> infotexts;
  std::vector<int64_t> seeds;
};
// Runs on the worker; progress(done, total) returns false to cancel (then throw Cancelled).
using JobWork = std::function<JobResults(const std::function<bool(int done, int total)>& progress)>;

struct Job {
  std::string id;
  std::string type = "txt2img";
  GenerateRequest req;
  std::shared_ptr<const PreparedImg2Img> prep;  // img2img: puts results over the original
  // Set for jobs that are not a generation (type "upscale"): the worker runs this instead of the
  // model (such a job is never batched with others; `req` is unused).
  JobWork work;
  JobOptions options;
  // StableDiffusion::batch_key() of `req` on its model, set at submit (empty: runs alone).
  std::string batch_key;
  // The catalog name of the model the job runs on (JobOptions::model, else the current model when
  // it was submitted).
  std::string model;
  // Set by cancel(); read by the worker's progress callback between sampling steps.
  std::atomic<bool> cancel{false};
  std::atomic<bool> timed_out{false};  // stopped by the per-job timeout (then failed, not canceled)

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
  std::vector<uint8_t> preview;  // the latest latent preview (PNG), made after sampling step preview_step
  int preview_step = 0;
};

struct JobManagerOptions {
  size_t queue_size = 16;           // queued (not yet running) jobs; more is 429
  size_t keep_finished = 256;       // finished jobs kept for fetching; the oldest go first
  std::chrono::seconds ttl{3600};   // ... and none longer than this
  std::string version = "sdserve";  // the infotext's Version
  // Batching (docs/API.md): the worker runs up to max_batch_jobs queued jobs with equal
  // StableDiffusion::batch_key()s as one UNet batch, together at most max_batch_images images (a
  // lone job may have more); max_batch_jobs 1 turns batching off. With batch_wait > 0 a job waits
  // up to that long after it was queued for partners (while fewer than max_batch_jobs compatible
  // jobs are queued); with 0 only the jobs already queued when the worker is free are batched.
  size_t max_batch_jobs = 4;
  size_t max_batch_images = 8;
  std::chrono::milliseconds batch_wait{0};
  // Loaded models are kept while their estimated sizes (ModelEntry::weight_bytes) fit in this many
  // bytes, least recently used out first; 0 keeps one model loaded.
  uint64_t models_memory_bytes = 0;
  // A running job that is still sampling this long after it started fails with 504 (checked
  // between steps); 0 = no limit.
  std::chrono::seconds job_timeout{0};
};

// A job stopped by JobManagerOptions::job_timeout (HTTP 504).
struct JobTimedOut : std::runtime_error {
  using std::runtime_error::runtime_error;
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
  // Models come from `catalog`, by name; `load` loads one (on the worker thread). The worker loads
  // `default_model` first; until then /health says 503 and jobs wait in the queue. If that throws,
  // the server stays up: health reports why and jobs fail with it (until a switch succeeds).
  using LoadFn = std::function<std::unique_ptr<StableDiffusion>(const ModelEntry&)>;
  JobManager(JobManagerOptions opt, std::shared_ptr<const ModelCatalog> catalog, std::string default_model,
             LoadFn load);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Validates against the model when it is loaded (unknown LoRA names, prompt length) so bad
  // requests fail at once; throws sdserve errors, QueueFull or NotAccepting.
  std::shared_ptr<Job> submit(const std::string& type, GenerateRequest req,
                              std::shared_ptr<const PreparedImg2Img> prep = nullptr, const JobOptions& options = {});
  // A job that is not a generation (an upscale): the same queue, caps and records.
  std::shared_ptr<Job> submit_work(const std::string& type, JobWork work, const JobOptions& options = {});
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
    uint64_t batched_jobs = 0;              // jobs that shared their UNet batch with others
    std::map<size_t, uint64_t> batch_jobs;  // runs by the number of jobs in them
    double busy_seconds = 0;
    size_t models_loaded = 0;
    uint64_t model_loads = 0, model_load_failures = 0, model_evictions = 0;
    std::vector<double> durations;  // seconds of the last finished jobs (histogram)
  };
  Stats stats() const;

  // The running job, or null.
  std::shared_ptr<Job> current() const;

  // The current model (what jobs without a `model` run on), once loaded; null before. Shared: an
  // evicted model lives on while a caller holds it.
  std::shared_ptr<const StableDiffusion> model() const;
  // The current model's catalog name (empty before the first load succeeded).
  std::string current_model() const;
  // Names of the models in memory, most recently used first.
  std::vector<std::string> loaded_models() const;
  const ModelCatalog& catalog() const { return *catalog_; }
  // Makes `want` (a name, filename or title in the catalog) the current model, loading it on the
  // worker between jobs (never during one); waits for that. Throws InvalidArgument / NotFoundError
  // for a bad name and the load's error when it fails (the previous model stays current).
  void switch_model(const std::string& want);

  // The lock every Job field (beyond `cancel`) is read under.
  std::unique_lock<std::mutex> lock() const { return std::unique_lock<std::mutex>(mu_); }

 private:
  void worker_main();
  void run(const std::shared_ptr<Job>& job);
  // Compatible jobs as one UNet batch (StableDiffusion::generate_batch); each ends on its own.
  void run_batch(const std::vector<std::shared_ptr<Job>>& batch);
  // Queued jobs that can join `front`'s batch (front first), within the batch caps.
  std::vector<std::shared_ptr<Job>> batch_candidates_locked(const std::shared_ptr<Job>& front) const;
  // A running job's end: status, results, stats, and its place among the finished.
  void finish_locked(const std::shared_ptr<Job>& job);
  // The images of a generation as the job's PNGs with their infotexts.
  void encode_results(const Job& job, const std::vector<GeneratedImage>& images,
                      std::vector<std::vector<uint8_t>>& pngs, std::vector<std::string>& infos,
                      std::vector<int64_t>& seeds) const;
  void run_work(const std::shared_ptr<Job>& job);
  // Runs `body` and ends the job with what happened, in one step under the lock (so a reader
  // never sees a finished job without its end time): its results; canceled, or failed with the
  // timeout's 504 when it was stopped for running too long; or failed with its error mapped to HTTP.
  void conclude(const std::shared_ptr<Job>& job, const std::function<JobResults()>& body);
  // True until conclude() (or the worker's failure path) has ended the job.
  bool still_running(const std::shared_ptr<Job>& job) const;
  // The progress callbacks' answer, with mu_ held: false once the job is canceled or has run past
  // the per-job timeout (which sets timed_out).
  bool keep_going_locked(Job& job) const;
  // The error of a job stopped early: the timeout's 504, or none (canceled).
  std::optional<HttpError> stop_error(const Job& job) const;
  // Throws NotAccepting or QueueFull unless a job can be queued now.
  void check_admission_locked() const;
  // Gives the job its id and creation times, records it and queues it; wakes the worker.
  std::shared_ptr<Job> enqueue_locked(std::shared_ptr<Job> job);
  void prune_locked();
  void touch_locked(Job& job);
  // The loaded model `name`, loading it (and evicting others past the memory budget) if needed.
  // Worker thread only; throws the load's error.
  std::shared_ptr<StableDiffusion> ensure_model(const std::string& name);
  std::shared_ptr<StableDiffusion> find_loaded_locked(const std::string& name) const;

  JobManagerOptions opt_;
  std::shared_ptr<const ModelCatalog> catalog_;
  std::string default_model_;
  LoadFn load_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // job changes, queue changes
  struct LoadedModel {
    std::string name;
    std::shared_ptr<StableDiffusion> model;
    uint64_t bytes = 0;
    uint64_t last_use = 0;
  };
  std::vector<LoadedModel> models_;
  std::string current_;  // catalog name of the current model
  uint64_t use_clock_ = 0;
  struct SwitchRequest {
    std::string name;
    bool done = false;
    std::exception_ptr error;
  };
  std::deque<std::shared_ptr<SwitchRequest>> switches_;
  // The model the worker's current run uses (worker thread only).
  std::shared_ptr<StableDiffusion> active_;
  bool loaded_ = false, load_failed_ = false, stopping_ = false, draining_ = false;
  std::string load_error_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;  // one job, or a batch
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::string> finished_order_;
  std::set<std::string> forgotten_;
  std::deque<std::string> forgotten_order_;
  Stats stats_;
  std::thread worker_;
};

}  // namespace sdserve::server
