#include "server/jobs.h"

#include <random>

#include "core/error.h"
#include "io/infotext.h"
#include "io/png.h"

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

JobManager::JobManager(JobManagerOptions opt, std::function<std::unique_ptr<StableDiffusion>()> load)
    : opt_(std::move(opt)), load_(std::move(load)) {
  worker_ = std::thread([this] { worker_main(); });
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    for (auto& j : queue_) j->cancel = true;
    if (running_) running_->cancel = true;
  }
  cv_.notify_all();
  worker_.join();
}

void JobManager::touch_locked(Job& job) {
  ++job.version;
  cv_.notify_all();
}

std::shared_ptr<Job> JobManager::submit(const std::string& type, GenerateRequest req,
                                        std::shared_ptr<const PreparedImg2Img> prep) {
  if (type != "txt2img" && type != "img2img")
    throw InvalidArgument("job type '" + type + "' is unknown: use txt2img or img2img");
  if (type == "img2img" && !req.init_image)
    throw InvalidArgument("an img2img job needs an init image (init_images or init_image)");
  if (type == "txt2img" && req.init_image) throw InvalidArgument("a txt2img job takes no init image: use type img2img");
  validate_request(req);
  std::unique_lock<std::mutex> lk(mu_);
  if (draining_ || stopping_) throw NotAccepting("the server is shutting down; retry on another instance");
  if (load_failed_) throw NotAccepting("the model failed to load: " + load_error_);
  if (loaded_) {
    StableDiffusion* m = model_.get();
    lk.unlock();
    m->validate(req);  // unknown LoRA names, prompt too long, clip skip: fail now, not in the queue
    lk.lock();
  }
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
  auto job = std::make_shared<Job>();
  job->id = random_id();
  job->type = type;
  job->req = std::move(req);
  job->prep = std::move(prep);
  job->created = Clock::now();
  job->created_unix = unix_now();
  jobs_[job->id] = job;
  queue_.push_back(job);
  cv_.notify_all();
  return job;
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
    if (queue_[i].get() == &job) return i + (running_ ? 1 : 0);
  return 0;
}

bool JobManager::drain(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  draining_ = true;
  cv_.notify_all();
  return cv_.wait_for(lk, timeout, [&] { return queue_.empty() && !running_; });
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
  s.running = running_ ? 1 : 0;
  return s;
}

std::shared_ptr<Job> JobManager::current() const {
  std::lock_guard<std::mutex> lk(mu_);
  return running_;
}

const StableDiffusion* JobManager::model() const {
  std::lock_guard<std::mutex> lk(mu_);
  return loaded_ ? model_.get() : nullptr;
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
    auto m = load_();
    std::lock_guard<std::mutex> lk(mu_);
    model_ = std::move(m);
    loaded_ = true;
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    load_failed_ = true;
    load_error_ = http_error(e).detail;
  }
  cv_.notify_all();
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, std::chrono::seconds(30), [&] { return stopping_ || !queue_.empty(); });
      prune_locked();
      if (stopping_) return;
      if (queue_.empty()) continue;
      job = queue_.front();
      queue_.pop_front();
      running_ = job;
      job->status = JobStatus::Running;
      job->started = Clock::now();
      touch_locked(*job);
    }
    run(job);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job->ended = Clock::now();
      running_.reset();
      ++stats_.finished_by_status[job_status_name(job->status)];
      const double d = std::chrono::duration<double>(job->ended - job->started).count();
      stats_.busy_seconds += d;
      stats_.durations.push_back(d);
      if (stats_.durations.size() > 1000) stats_.durations.erase(stats_.durations.begin());
      finished_order_.push_back(job->id);
      touch_locked(*job);
      prune_locked();
    }
  }
}

void JobManager::run(const std::shared_ptr<Job>& job) {
  JobStatus status = JobStatus::Failed;
  std::optional<HttpError> error;
  std::vector<std::vector<uint8_t>> pngs;
  std::vector<std::string> infos;
  std::vector<int64_t> seeds;
  try {
    if (load_failed_) throw NotAccepting("the model failed to load: " + load_error_);
    auto progress = [&](int step, int total) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        job->step = step;
        job->steps = total;
        ++stats_.unet_calls;
        touch_locked(*job);
      }
      return !job->cancel.load();
    };
    if (job->cancel) throw Cancelled();
    const auto images = model_->generate(job->req, progress);
    for (const GeneratedImage& generated : images) {
      const GeneratedImage im = job->prep ? finish_img2img(*job->prep, generated) : generated;
      GenerationParams gp = model_->infotext_params(job->req, generated);
      gp.version = opt_.version;
      const std::string text = to_infotext(gp);
      pngs.push_back(encode_png(im.rgb.data(), im.width, im.height, 3, {{"parameters", text}}));
      infos.push_back(text);
      seeds.push_back(im.seed);
    }
    status = JobStatus::Succeeded;
  } catch (const Cancelled&) {
    status = JobStatus::Canceled;
  } catch (const NotAccepting& e) {
    error = http_error(503, "unavailable", e.what());
  } catch (const std::exception& e) {
    error = http_error(e);
  }
  std::lock_guard<std::mutex> lk(mu_);
  job->status = status;
  job->error = error;
  job->pngs = std::move(pngs);
  job->infotexts = std::move(infos);
  job->seeds = std::move(seeds);
  stats_.images += job->pngs.size();
  touch_locked(*job);
}

}  // namespace sdserve::server
