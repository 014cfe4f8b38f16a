#include "server/jobs.h"

#include <algorithm>
#include <random>

#include "core/error.h"
#include "io/infotext.h"
#include "io/png.h"
#include "server/extras.h"
#include "server/http_util.h"

namespace sdserve::server {

const char* job_status_name(JobStatus s) {
  switch (s) {
    case JobStatus::Queued:
      return "queued";
    case JobStatus::Running:
      return "running";
    case JobStatus::Succeeded:
      return "succeeded";
    case JobStatus::Failed:
      return "failed";
    case JobStatus::Canceled:
      return "canceled";
  }
  return "unknown";
}

namespace {

// 128 random bits: job ids are the only thing between one client and another's images.
std::string random_id() {
  static thread_local std::random_device rd;
  static const char hex[] = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 4; ++i) {
    uint32_t v = rd();
    for (int k = 0; k < 8; ++k, v >>= 4) s += hex[v & 15];
  }
  return s;
}

double unix_now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

JobManager::JobManager(JobManagerOptions opt, std::shared_ptr<const ModelCatalog> catalog, std::string default_model,
                       LoadFn load)
    : opt_(std::move(opt)),
      catalog_(std::move(catalog)),
      default_model_(std::move(default_model)),
      load_(std::move(load)) {
  worker_ = std::thread([this] { worker_main(); });
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    for (auto& j : queue_) j->cancel = true;
    for (auto& j : running_) j->cancel = true;
  }
  cv_.notify_all();
  worker_.join();
}

void JobManager::touch_locked(Job& job) {
  ++job.version;
  cv_.notify_all();
}

void JobManager::check_admission_locked() const {
  if (draining_ || stopping_) throw NotAccepting("the server is shutting down; retry on another instance");
  if (load_failed_) throw NotAccepting("the model failed to load: " + load_error_);
  if (queue_.size() >= opt_.queue_size) {
    // A rough hint: the mean duration of recent jobs times the queue ahead.
    double mean = 5;
    if (!stats_.durations.empty()) {
      double sum = 0;
      for (double d : stats_.durations) sum += d;
      mean = sum / double(stats_.durations.size());
    }
    throw QueueFull(std::max(1.0, mean * double(queue_.size())));
  }
}

std::shared_ptr<Job> JobManager::submit_work(const std::string& type, JobWork work, const JobOptions& options) {
  auto job = std::make_shared<Job>();
  job->type = type;
  job->work = std::move(work);
  job->options = options;
  std::lock_guard<std::mutex> lk(mu_);
  check_admission_locked();
  return enqueue_locked(std::move(job));
}

std::shared_ptr<Job> JobManager::enqueue_locked(std::shared_ptr<Job> job) {
  job->id = random_id();
  job->created = Clock::now();
  job->created_unix = unix_now();
  jobs_[job->id] = job;
  queue_.push_back(job);
  cv_.notify_all();
  return job;
}

std::shared_ptr<Job> JobManager::submit(const std::string& type, GenerateRequest req,
                                        std::shared_ptr<const PreparedImg2Img> prep, const JobOptions& options) {
  if (type != "txt2img" && type != "img2img")
    throw InvalidArgument("job type '" + type + "' is unknown: use txt2img or img2img (or upscale: docs/API.md)");
  if (type == "img2img" && !req.init_image)
    throw InvalidArgument("an img2img job needs an init image (init_images or init_image)");
  if (type == "txt2img" && req.init_image) throw InvalidArgument("a txt2img job takes no init image: use type img2img");
  validate_request(req);
  std::unique_lock<std::mutex> lk(mu_);
  if (draining_ || stopping_) throw NotAccepting("the server is shutting down; retry on another instance");
  if (load_failed_) throw NotAccepting("the model failed to load: " + load_error_);
  // The model: the one the request names (only names in the catalog), else the current one.
  const std::string model = !options.model.empty() ? catalog_->find(options.model).name
                            : current_.empty()     ? default_model_
                                                   : current_;
  std::string key;
  if (std::shared_ptr<StableDiffusion> m = find_loaded_locked(model)) {
    lk.unlock();
    // Validates (unknown LoRA names, prompt too long, clip skip: fail now, not in the queue).
    key = m->batch_key(req);
    if (!key.empty()) key = model + "\n" + key;
    lk.lock();
  }
  check_admission_locked();
  auto job = std::make_shared<Job>();
  job->type = type;
  job->req = std::move(req);
  job->batch_key = std::move(key);
  job->model = model;
  job->prep = std::move(prep);
  job->options = options;
  return enqueue_locked(std::move(job));
}

std::shared_ptr<Job> JobManager::find(const std::string& id) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

bool JobManager::forgotten(const std::string& id) const {
  std::lock_guard<std::mutex> lk(mu_);
  return forgotten_.count(id) > 0;
}

bool JobManager::cancel(const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  Job& j = *it->second;
  if (finished(j.status)) return false;
  j.cancel = true;
  if (j.status == JobStatus::Queued) {
    for (auto q = queue_.begin(); q != queue_.end(); ++q)
      if ((*q)->id == id) {
        queue_.erase(q);
        break;
      }
    j.status = JobStatus::Canceled;
    j.ended = Clock::now();
    ++stats_.finished_by_status["canceled"];
    finished_order_.push_back(id);
    touch_locked(j);
  }
  return true;
}

uint64_t JobManager::wait_change(const Job& job, uint64_t seen, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return job.version != seen || stopping_; });
  return job.version;
}

size_t JobManager::queue_position(const Job& job) const {
  std::lock_guard<std::mutex> lk(mu_);
  for (size_t i = 0; i < queue_.size(); ++i)
    if (queue_[i].get() == &job) return i + (running_.empty() ? 0 : 1);
  return 0;
}

bool JobManager::drain(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  draining_ = true;
  cv_.notify_all();
  return cv_.wait_for(lk, timeout, [&] { return queue_.empty() && running_.empty(); });
}

JobManager::Health JobManager::health() const {
  std::lock_guard<std::mutex> lk(mu_);
  Health h;
  h.ready = loaded_ && !draining_;
  h.draining = draining_;
  if (load_failed_)
    h.detail = "the model failed to load: " + load_error_;
  else if (!loaded_)
    h.detail = "the model is loading";
  else if (draining_)
    h.detail = "shutting down";
  return h;
}

JobManager::Stats JobManager::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  Stats s = stats_;
  s.queued = queue_.size();
  s.running = running_.size();
  return s;
}

std::shared_ptr<Job> JobManager::current() const {
  std::lock_guard<std::mutex> lk(mu_);
  return running_.empty() ? nullptr : running_.front();
}

std::shared_ptr<const StableDiffusion> JobManager::model() const {
  std::lock_guard<std::mutex> lk(mu_);
  return find_loaded_locked(current_);
}

std::string JobManager::current_model() const {
  std::lock_guard<std::mutex> lk(mu_);
  return current_;
}

std::vector<std::string> JobManager::loaded_models() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<LoadedModel> m = models_;
  std::sort(m.begin(), m.end(), [](const LoadedModel& a, const LoadedModel& b) { return a.last_use > b.last_use; });
  std::vector<std::string> out;
  for (const LoadedModel& l : m) out.push_back(l.name);
  return out;
}

std::shared_ptr<StableDiffusion> JobManager::find_loaded_locked(const std::string& name) const {
  for (const LoadedModel& l : models_)
    if (l.name == name) return l.model;
  return nullptr;
}

std::shared_ptr<StableDiffusion> JobManager::ensure_model(const std::string& name) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (LoadedModel& l : models_)
      if (l.name == name) {
        l.last_use = ++use_clock_;
        return l.model;
      }
  }
  const ModelEntry& entry = catalog_->find(name);
  // Room first: every model but the current one may go (the current one stays until the new one
  // has loaded, so a checkpoint that fails to load leaves it usable).
  const auto evict_locked = [&](uint64_t need, bool keep_current) {
    for (;;) {
      uint64_t used = 0;
      for (const LoadedModel& l : models_) used += l.bytes;
      const bool over = opt_.models_memory_bytes == 0 ? !models_.empty() : used + need > opt_.models_memory_bytes;
      if (!over) return;
      auto victim = models_.end();
      for (auto it = models_.begin(); it != models_.end(); ++it)
        if ((!keep_current || it->name != current_) && (victim == models_.end() || it->last_use < victim->last_use))
          victim = it;
      if (victim == models_.end()) return;
      log_line({{"level", "info"}, {"msg", "model evicted"}, {"model", victim->name}});
      models_.erase(victim);
      ++stats_.model_evictions;
      stats_.models_loaded = models_.size();
    }
  };
  {
    std::lock_guard<std::mutex> lk(mu_);
    evict_locked(entry.weight_bytes, true);
  }
  std::shared_ptr<StableDiffusion> m;
  try {
    m = std::shared_ptr<StableDiffusion>(load_(entry));
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.model_load_failures;
    throw;
  }
  std::lock_guard<std::mutex> lk(mu_);
  evict_locked(entry.weight_bytes, false);
  models_.push_back({entry.name, m, entry.weight_bytes, ++use_clock_});
  ++stats_.model_loads;
  stats_.models_loaded = models_.size();
  return m;
}

void JobManager::switch_model(const std::string& want) {
  auto sw = std::make_shared<SwitchRequest>();
  sw->name = catalog_->find(want).name;  // bad names fail here, on the caller's thread
  std::unique_lock<std::mutex> lk(mu_);
  if (draining_ || stopping_) throw NotAccepting("the server is shutting down; retry on another instance");
  switches_.push_back(sw);
  cv_.notify_all();
  cv_.wait(lk, [&] { return sw->done || stopping_; });
  if (!sw->done) throw NotAccepting("the server is shutting down");
  if (sw->error) std::rethrow_exception(sw->error);
}

void JobManager::prune_locked() {
  const auto now = Clock::now();
  while (!finished_order_.empty()) {
    auto it = jobs_.find(finished_order_.front());
    const bool too_many = finished_order_.size() > opt_.keep_finished;
    const bool expired = it != jobs_.end() && now - it->second->ended > opt_.ttl;
    if (!too_many && !expired) break;
    if (it != jobs_.end()) jobs_.erase(it);
    forgotten_.insert(finished_order_.front());
    forgotten_order_.push_back(finished_order_.front());
    finished_order_.pop_front();
    while (forgotten_order_.size() > 100000) {
      forgotten_.erase(forgotten_order_.front());
      forgotten_order_.pop_front();
    }
  }
}

void JobManager::worker_main() {
  try {
    ensure_model(default_model_);
    std::lock_guard<std::mutex> lk(mu_);
    current_ = default_model_;
    loaded_ = true;
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    load_failed_ = true;
    load_error_ = http_error(e).detail;
  }
  cv_.notify_all();
  for (;;) {
    std::vector<std::shared_ptr<Job>> batch;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, std::chrono::seconds(30), [&] { return stopping_ || !queue_.empty() || !switches_.empty(); });
      prune_locked();
      if (stopping_) return;
      if (!switches_.empty()) {
        // A model switch runs between jobs: load (or find) the model, then make it current.
        std::shared_ptr<SwitchRequest> sw = switches_.front();
        switches_.pop_front();
        lk.unlock();
        std::exception_ptr error;
        try {
          ensure_model(sw->name);
        } catch (...) {
          error = std::current_exception();
        }
        lk.lock();
        if (!error) {
          current_ = sw->name;
          loaded_ = true;
          load_failed_ = false;
          load_error_.clear();
        }
        sw->error = error;
        sw->done = true;
        cv_.notify_all();
        continue;
      }
      if (queue_.empty()) continue;
      std::shared_ptr<Job> front = queue_.front();
      batch = batch_candidates_locked(front);
      // A batchable job waits a little (batch_wait after it was queued) for partners; any queue
      // change wakes the worker to look again.
      const auto deadline = front->created + opt_.batch_wait;
      if (!draining_ && opt_.max_batch_jobs > 1 && batch.size() < opt_.max_batch_jobs && !front->batch_key.empty() &&
          Clock::now() < deadline) {
        cv_.wait_until(lk, deadline);
        continue;
      }
      const auto now = Clock::now();
      for (const auto& job : batch) {
        queue_.erase(std::find(queue_.begin(), queue_.end(), job));
        job->status = JobStatus::Running;
        job->started = now;
        touch_locked(*job);
      }
      running_ = batch;
      ++stats_.batch_jobs[batch.size()];
      if (batch.size() > 1) stats_.batched_jobs += batch.size();
    }
    const auto t0 = Clock::now();
    if (!batch[0]->work) {
      // The jobs' model, loaded here if it is not in memory (a job that names another model).
      try {
        active_ = ensure_model(batch[0]->model);
      } catch (const std::exception& e) {
        const HttpError err = http_error(e);
        std::lock_guard<std::mutex> lk(mu_);
        for (const auto& job : batch) {
          job->status = JobStatus::Failed;
          job->error = err;
          finish_locked(job);
        }
        running_.clear();
        continue;
      }
    }
    if (batch.size() > 1)
      run_batch(batch);
    else if (batch[0]->work)
      run_work(batch[0]);
    else
      run(batch[0]);
    // Every run ends its jobs (conclude); one it left open would wait forever, so it fails.
    for (const auto& job : batch)
      if (still_running(job))
        conclude(job, []() -> JobResults { throw InternalError("the job ended without a result"); });
    active_.reset();
    std::lock_guard<std::mutex> lk(mu_);
    stats_.busy_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    running_.clear();
    prune_locked();
  }
}

std::vector<std::shared_ptr<Job>> JobManager::batch_candidates_locked(const std::shared_ptr<Job>& front) const {
  std::vector<std::shared_ptr<Job>> batch{front};
  // Jobs with previews want the latents of their own steps; upscales are not generations.
  const auto batchable = [](const Job& j) {
    return !j.work && !j.batch_key.empty() && j.options.preview_every == 0 && !j.cancel.load();
  };
  if (opt_.max_batch_jobs <= 1 || !batchable(*front)) return batch;
  int64_t images = front->req.batch_size;
  for (const auto& j : queue_) {
    if (batch.size() >= opt_.max_batch_jobs) break;
    if (j == front || !batchable(*j) || j->batch_key != front->batch_key) continue;
    if (images + j->req.batch_size > int64_t(opt_.max_batch_images)) continue;
    images += j->req.batch_size;
    batch.push_back(j);
  }
  return batch;
}

void JobManager::finish_locked(const std::shared_ptr<Job>& job) {
  job->ended = Clock::now();
  running_.erase(std::remove(running_.begin(), running_.end(), job), running_.end());
  ++stats_.finished_by_status[job_status_name(job->status)];
  stats_.images += job->pngs.size();
  const double d = std::chrono::duration<double>(job->ended - job->started).count();
  stats_.durations.push_back(d);
  if (stats_.durations.size() > 1000) stats_.durations.erase(stats_.durations.begin());
  finished_order_.push_back(job->id);
  touch_locked(*job);
}

void JobManager::encode_results(const Job& job, const std::vector<GeneratedImage>& images,
                                std::vector<std::vector<uint8_t>>& pngs, std::vector<std::string>& infos,
                                std::vector<int64_t>& seeds) const {
  for (const GeneratedImage& generated : images) {
    const GeneratedImage im = job.prep ? finish_img2img(*job.prep, generated) : generated;
    GenerationParams gp = active_->infotext_params(job.req, generated);
    gp.version = opt_.version;
    if (job.prep) add_img2img_infotext(gp, *job.prep);
    const std::string text = to_infotext(gp);
    pngs.push_back(encode_png(im.rgb.data(), im.width, im.height, 3, {{"parameters", text}}));
    infos.push_back(text);
    seeds.push_back(im.seed);
  }
}

void JobManager::run_batch(const std::vector<std::shared_ptr<Job>>& batch) {
  std::vector<GenerateRequest> reqs;
  std::vector<ProgressFn> progress;
  for (const auto& job : batch) {
    reqs.push_back(job->req);
    progress.push_back([this, job](int step, int total) {
      std::lock_guard<std::mutex> lk(mu_);
      job->step = step;
      job->steps = total;
      touch_locked(*job);
      return keep_going_locked(*job);
    });
  }
  // Each job ends as soon as its images are decoded: the others may still be sampling.
  const auto done = [&](size_t k, BatchResult r) {
    const std::shared_ptr<Job>& job = batch[k];
    conclude(job, [&] {
      if (r.canceled) throw Cancelled();
      if (r.error) std::rethrow_exception(r.error);
      JobResults out;
      encode_results(*job, r.images, out.pngs, out.infotexts, out.seeds);
      return out;
    });
  };
  try {
    active_->generate_batch(reqs, progress, done, [this] {
      std::lock_guard<std::mutex> lk(mu_);
      ++stats_.unet_calls;
    });
  } catch (...) {
    // generate_batch reports each request's own errors through `done`; what escapes it (out of
    // memory, say) ends the jobs it had not ended yet.
    const std::exception_ptr ep = std::current_exception();
    for (const auto& job : batch)
      if (still_running(job)) conclude(job, [&]() -> JobResults { std::rethrow_exception(ep); });
  }
}

void JobManager::run_work(const std::shared_ptr<Job>& job) {
  conclude(job, [&] {
    auto progress = [&](int done, int total) {
      std::lock_guard<std::mutex> lk(mu_);
      job->step = done;
      job->steps = total;
      touch_locked(*job);
      return keep_going_locked(*job);
    };
    if (job->cancel) throw Cancelled();
    return job->work(progress);
  });
}

bool JobManager::still_running(const std::shared_ptr<Job>& job) const {
  std::lock_guard<std::mutex> lk(mu_);
  return std::find(running_.begin(), running_.end(), job) != running_.end();
}

void JobManager::conclude(const std::shared_ptr<Job>& job, const std::function<JobResults()>& body) {
  JobStatus status = JobStatus::Failed;
  std::optional<HttpError> error;
  JobResults out;
  try {
    out = body();
    status = JobStatus::Succeeded;
  } catch (const Cancelled&) {
    error = stop_error(*job);
    status = error ? JobStatus::Failed : JobStatus::Canceled;
  } catch (const std::exception& e) {
    error = http_error(e);  // NotAccepting included: 503
  }
  std::lock_guard<std::mutex> lk(mu_);
  job->status = status;
  job->error = error;
  job->pngs = std::move(out.pngs);
  job->infotexts = std::move(out.infotexts);
  job->seeds = std::move(out.seeds);
  finish_locked(job);
}

void JobManager::run(const std::shared_ptr<Job>& job) {
  conclude(job, [&] {
    if (load_failed_) throw NotAccepting("the model failed to load: " + load_error_);
    auto progress = [&](int step, int total) {
      std::lock_guard<std::mutex> lk(mu_);
      job->step = step;
      job->steps = total;
      ++stats_.unet_calls;
      touch_locked(*job);
      return keep_going_locked(*job);
    };
    if (job->cancel) throw Cancelled();
    LatentsFn on_latents;  // live previews (preview_every): A1111's "Approx cheap" of the current latents
    if (job->options.preview_every > 0)
      on_latents = [&](int step, const Tensor& latents) {
        if (step % job->options.preview_every != 0 || latents.dim() != 4 || latents.dtype() != DType::F32) return;
        const Tensor x = latents.contiguous();
        std::vector<uint8_t> png = latent_preview_png(x.data<float>(), x.size(1), x.size(2), x.size(3), 0);
        std::lock_guard<std::mutex> lk(mu_);
        job->preview = std::move(png);
        job->preview_step = step;
      };
    const auto images = active_->generate(job->req, progress, on_latents);
    JobResults out;
    encode_results(*job, images, out.pngs, out.infotexts, out.seeds);
    return out;
  });
}

bool JobManager::keep_going_locked(Job& job) const {
  if (job.cancel.load()) return false;
  if (opt_.job_timeout.count() > 0 && Clock::now() - job.started > opt_.job_timeout) {
    job.timed_out = true;
    return false;
  }
  return true;
}

std::optional<HttpError> JobManager::stop_error(const Job& job) const {
  if (!job.timed_out.load()) return std::nullopt;
  return http_error(JobTimedOut("the job ran longer than the server's per-job limit (--job-timeout " +
                                std::to_string(opt_.job_timeout.count()) +
                                " s); ask for fewer steps or a smaller size"));
}

}  // namespace sdserve::server
