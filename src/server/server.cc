#include "server/server.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <httplib.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/utf8.h"
#include "net/fetch.h"
#include "server/extras.h"
#include "server/http_error.h"
#include "server/http_util.h"
#include "server/jobs.h"
#include "server/web.h"

// docs/openapi.json, embedded at build time (cmake/Embed.cmake); docs/openapi.yaml is its source.
extern "C" const unsigned char sdserve_openapi_json[];
extern "C" const unsigned char sdserve_openapi_json_end[];

namespace sdserve::server {

using json = nlohmann::json;

namespace {

int signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  const int saved = errno;
  (void)!::write(signal_pipe[1], &b, 1);
  errno = saved;
}

bool equal_time(const std::string& a, const std::string& b) {  // constant time in the key's length
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

// The key a request carries: "Authorization: Bearer K", "X-Api-Key: K", or HTTP Basic with K as
// the password (what webuiapi sends).
std::string presented_key(const httplib::Request& req) {
  if (req.has_header("X-Api-Key")) return req.get_header_value("X-Api-Key");
  const std::string auth = req.get_header_value("Authorization");
  if (auth.rfind("Bearer ", 0) == 0) return auth.substr(7);
  if (auth.rfind("Basic ", 0) == 0) {
    const std::string up = base64_decode(auth.substr(6));
    const size_t colon = up.find(':');
    return colon == std::string::npos ? up : up.substr(colon + 1);
  }
  return "";
}

json job_json(const Job& j, size_t position) {
  json out = {{"id", j.id},
              {"type", j.type},
              {"status", job_status_name(j.status)},
              {"step", j.step},
              {"steps", j.steps},
              {"queue_position", position},
              {"created_at", j.created_unix}};
  json timings = json::object();
  const auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  if (j.status != JobStatus::Queued && j.started.time_since_epoch().count() != 0)
    timings["queued_s"] = secs(j.started - j.created);
  else if (j.status == JobStatus::Queued)
    timings["queued_s"] = secs(Clock::now() - j.created);
  if (j.status == JobStatus::Running) timings["running_s"] = secs(Clock::now() - j.started);
  if (finished(j.status) && j.started.time_since_epoch().count() != 0) timings["running_s"] = secs(j.ended - j.started);
  out["timings"] = timings;
  json images = json::array();
  for (size_t i = 0; i < j.pngs.size(); ++i) images.push_back("/v1/jobs/" + j.id + "/images/" + std::to_string(i));
  out["images"] = images;
  out["infotexts"] = j.infotexts;
  out["seeds"] = j.seeds;
  out["output_format"] = j.options.output_format;
  if (j.error) out["error"] = {{"error", j.error->error}, {"detail", j.error->detail}, {"status", j.error->status}};
  return out;
}

}  // namespace

int serve(const ServeOptions& opt) {
  // SIGTERM/SIGINT: the handler (process-wide, so whichever thread, OpenMP's included, takes the
  // signal) writes the signal number to a pipe that a watcher thread reads.
  if (::pipe(signal_pipe) != 0) throw IoError("cannot create a pipe for signal handling");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  JobManagerOptions jo;
  jo.queue_size = opt.queue_size;
  jo.keep_finished = opt.keep_finished;
  jo.ttl = opt.job_ttl;
  jo.version = opt.version;
  jo.max_batch_jobs = std::max<size_t>(1, opt.max_batch_jobs);
  jo.max_batch_images = size_t(std::max(1, opt.limits.max_batch));
  jo.batch_wait = std::chrono::milliseconds(std::max(0, opt.batch_wait_ms));
  jo.models_memory_bytes = opt.models_memory_mb << 20;
  jo.job_timeout = opt.job_timeout;
  // The models: the folder's (a model that cannot be read is logged and skipped), or --model alone.
  auto catalog = std::make_shared<ModelCatalog>();
  std::string default_model;
  if (!opt.models_dir.empty()) {
    *catalog = ModelCatalog::scan(opt.models_dir, [](const std::string& path, const std::string& why) {
      log_line({{"level", "warning"}, {"msg", "skipped a model"}, {"path", path}, {"reason", why}});
    });
    if (opt.model.empty()) {
      if (catalog->entries().empty()) throw NotFoundError("no usable model in " + opt.models_dir);
      default_model = catalog->entries().front().name;
    } else if (std::filesystem::exists(opt.model) &&
               (opt.model.find('/') != std::string::npos || opt.model.find('\\') != std::string::npos)) {
      default_model = catalog->add(opt.model);  // a path outside the folder
    } else {
      default_model = catalog->find(opt.model).name;
    }
    log_line(
        {{"level", "info"}, {"msg", "models found"}, {"dir", opt.models_dir}, {"count", catalog->entries().size()}});
  } else {
    *catalog = ModelCatalog::single(opt.model);
    default_model = catalog->entries().front().name;
  }
  const LoadOptions load = opt.load;
  JobManager jobs(jo, catalog, default_model, [load](const ModelEntry& e) {
    const auto t0 = Clock::now();
    auto m = StableDiffusion::load(e.path, load);
    log_line({{"level", "info"},
              {"msg", "model loaded"},
              {"model", e.path},
              {"name", e.name},
              {"seconds", std::chrono::duration<double>(Clock::now() - t0).count()}});
    return m;
  });

  httplib::Server srv;
  srv.new_task_queue = [n = opt.http_threads] { return new httplib::ThreadPool(size_t(n)); };
  srv.set_keep_alive_timeout(opt.keep_alive_timeout);
  srv.set_payload_max_length(opt.max_body_bytes);
  srv.set_read_timeout(30, 0);
  srv.set_write_timeout(30, 0);

  static thread_local Clock::time_point request_start;
  std::atomic<uint64_t> request_counter{0};
  const std::string instance = [] {
    std::random_device rd;
    char b[9];
    std::snprintf(b, sizeof b, "%08x", rd());
    return std::string(b);
  }();

  srv.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    request_start = Clock::now();
    res.set_header("X-Request-Id", instance + "-" + std::to_string(++request_counter));
    const std::string origin = req.get_header_value("Origin");
    const bool cors = !origin.empty() &&
                      std::find(opt.cors_origins.begin(), opt.cors_origins.end(), origin) != opt.cors_origins.end();
    if (cors) {
      res.set_header("Access-Control-Allow-Origin", origin);
      res.set_header("Vary", "Origin");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Api-Key");
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    }
    if (req.method == "OPTIONS") {
      res.status = cors ? 204 : 403;
      return httplib::Server::HandlerResponse::Handled;
    }
    // /health stays public for load balancers; the page is public so it can ask for the key.
    if (!opt.api_keys.empty() && req.path != "/health" && !is_web_route(req.method, req.path)) {
      const std::string key = presented_key(req);
      bool ok = false;
      for (const std::string& k : opt.api_keys) ok |= equal_time(key, k);
      if (!ok) {
        res.set_header("WWW-Authenticate", "Bearer");
        send_error(res, http_error(401, "unauthorized",
                                   "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'"));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  srv.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      send_error(res, http_error(e));
    } catch (...) {
      send_error(res, http_error(500, "internal", "unknown error"));
    }
  });

  // Errors httplib produces itself (no route, body too large, malformed request) get the same
  // JSON body as ours.
  srv.set_error_handler([&opt](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    switch (res.status) {
      case 404:
        send_error(res, http_error(404, "not_found", "no route " + req.method + " " + printable(req.path)));
        break;
      case 413:
        // cpp-httplib caps form-encoded bodies (what `curl -d` sends) at 8 KiB whatever our limit.
        if (req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0 &&
            req.get_header_value<uint64_t>("Content-Length") <= opt.max_body_bytes)
          send_error(res, http_error(413, "payload_too_large",
                                     "form-encoded bodies over 8 KiB are refused: send the JSON with 'Content-Type: "
                                     "application/json' (curl -H 'Content-Type: application/json' -d ...)"));
        else
          send_error(res, http_error(413, "payload_too_large",
                                     "the request body is larger than --max-body-bytes (" +
                                         std::to_string(opt.max_body_bytes) + " bytes)"));
        break;
      case 405:
        send_error(res, http_error(405, "method_not_allowed", req.method + " is not allowed here"));
        break;
      default:
        send_error(res, http_error(res.status, "http_error", "HTTP " + std::to_string(res.status)));
    }
  });

  srv.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    log_line({{"level", res.status >= 500 ? "error" : "info"},
              {"request_id", res.get_header_value("X-Request-Id")},
              {"method", req.method},
              {"path", printable(req.path, 300)},
              {"status", res.status},
              {"ms", std::chrono::duration<double, std::milli>(Clock::now() - request_start).count()}});
  });

  std::mutex ignored_mu;
  std::set<std::string> ignored_logged;
  auto log_ignored = [&](const ParsedRequest& p) {
    std::lock_guard<std::mutex> lk(ignored_mu);
    for (const std::string& f : p.ignored)
      if (ignored_logged.size() < 1000 && ignored_logged.insert(f).second)
        log_line({{"level", "warning"}, {"msg", "ignored an unknown request field (logged once)"}, {"field", f}});
  };
  // Init images by URL: the guarded GET (net/fetch.h) when --allow-url-fetch, else none (refused).
  UrlFetcher fetch_url;
  if (opt.allow_url_fetch) {
    net::FetchOptions fo;
    fo.timeout = opt.url_fetch_timeout;
    fo.max_bytes = opt.max_body_bytes;
    fo.allow_test_host = opt.url_fetch_allow_test_host;
    fetch_url = [fo](const std::string& url) {
      net::FetchResult r = net::fetch_url(url, fo);
      // The URL without its query, which may hold a token.
      log_line({{"level", "info"},
                {"msg", "fetched an init image"},
                {"url", printable(r.final_url.substr(0, r.final_url.find('?')), 300)},
                {"bytes", r.body.size()}});
      return std::move(r.body);
    };
  }
  auto parse = [&](const httplib::Request& req) {
    ParsedRequest p = parse_generate_request(parse_json_body(req.body), opt.limits, fetch_url);
    log_ignored(p);
    return p;
  };

  // Enqueue a job. A refusal (full queue, draining) throws: the exception handler answers 429/503
  // with Retry-After (http_error.cc). `res` is kept in the signature for the routes' sake.
  std::function<std::shared_ptr<Job>(const ParsedRequest&, httplib::Response&)> submit =
      [&](const ParsedRequest& p, httplib::Response&) { return jobs.submit(p.type, p.req, p.prep, p.options); };
  auto submit_work = [&](const std::string& type, JobWork work, const JobOptions& options, httplib::Response&) {
    return jobs.submit_work(type, std::move(work), options);
  };

  // Waits for a job to finish (synchronous routes).
  std::function<void(const std::shared_ptr<Job>&)> wait_done = [&](const std::shared_ptr<Job>& job) {
    for (;;) {
      uint64_t v = 0;
      {
        auto lk = jobs.lock();
        if (finished(job->status)) return;
        v = job->version;
      }
      jobs.wait_change(*job, v, std::chrono::milliseconds(500));
    }
  };

  RouteContext ctx{opt,
                   jobs,
                   [&](const json& body) {
                     ParsedRequest p = parse_generate_request(body, opt.limits, fetch_url);
                     log_ignored(p);
                     return p;
                   },
                   submit,
                   wait_done,
                   submit_work};
  add_a1111_routes(srv, ctx);

  // ---- routes ----
  srv.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    const auto h = jobs.health();
    if (h.ready) {
      res.set_content("Healthy", "text/plain");
    } else {
      res.status = 503;
      res.set_content(dump({{"status", h.draining ? "draining" : "unavailable"}, {"detail", h.detail}}),
                      "application/json");
    }
  });

  // The seed's routes: JSON in, the first image's PNG out, synchronously (through the same queue).
  const auto seed_route = [&](const char* type, const char* wrong_type) {
    return [&, type, wrong_type](const httplib::Request& req, httplib::Response& res) {
      ParsedRequest p = parse(req);
      if (p.type != type) throw InvalidArgument(wrong_type);
      auto job = submit(p, res);
      wait_done(job);
      auto lk = jobs.lock();
      if (job->status != JobStatus::Succeeded) return send_job_error(*job, res);
      const std::vector<uint8_t> png = job->pngs[0];
      const std::string info = job->infotexts.empty() ? "" : job->infotexts[0];
      const JobOptions o = job->options;
      lk.unlock();
      res.set_content(convert_image(png, o.output_format, o.quality, info), image_mime(o.output_format));
    };
  };
  srv.Post("/txt2img", seed_route("txt2img", "/txt2img takes no init image: use /img2img"));
  // The same body plus "init_image" (base64).
  srv.Post("/img2img", seed_route("img2img", "field 'init_image' (a base64 PNG, JPEG or WebP) or 'url' is required"));

  srv.Post("/v1/jobs", [&](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    std::shared_ptr<Job> job;
    if (auto t = body.find("type"); t != body.end() && t->is_string() && *t == "upscale") {
      // An upscale (server/extras.h): the image, the upscaler(s), a scale or a size.
      const auto work = parse_upscale_request(body, false, opt.load.upscaler_dir, opt.limits);
      work->device = opt.load.device;
      work->dtype = opt.load.dtype;
      job = submit_work(
          "upscale",
          [work](const std::function<bool(int, int)>& progress) {
            UpscaleResult r = run_upscale(*work, progress);
            return JobResults{std::move(r.pngs), std::move(r.infotexts), {}};
          },
          parse_job_options(body), res);
    } else {
      ParsedRequest p = parse_generate_request(body, opt.limits, fetch_url);
      log_ignored(p);
      job = submit(p, res);
    }
    res.status = 202;
    res.set_header("Location", "/v1/jobs/" + job->id);
    res.set_content(dump({{"id", job->id},
                          {"status", "queued"},
                          {"status_url", "/v1/jobs/" + job->id},
                          {"events_url", "/v1/jobs/" + job->id + "/events"}}),
                    "application/json");
  });

  auto lookup = [&](const std::string& id, httplib::Response& res) -> std::shared_ptr<Job> {
    auto job = jobs.find(id);
    if (!job) {
      if (jobs.forgotten(id))
        send_error(res, http_error(410, "gone", "job " + id + " finished and its results have expired"));
      else
        send_error(res, http_error(404, "not_found", "no job " + printable(id, 64)));
    }
    return job;
  };

  srv.Get(R"(/v1/jobs/([0-9a-zA-Z]{1,64}))", [&](const httplib::Request& req, httplib::Response& res) {
    auto job = lookup(req.matches[1], res);
    if (!job) return;
    const size_t pos = jobs.queue_position(*job);
    auto lk = jobs.lock();
    res.set_content(dump(job_json(*job, pos)), "application/json");
  });

  srv.Post(R"(/v1/jobs/([0-9a-zA-Z]{1,64})/cancel)", [&](const httplib::Request& req, httplib::Response& res) {
    auto job = lookup(req.matches[1], res);
    if (!job) return;
    const bool was_active = jobs.cancel(job->id);
    auto lk = jobs.lock();
    if (!was_active && job->status != JobStatus::Canceled) {
      send_error(res,
                 http_error(409, "finished", std::string("the job already ended: ") + job_status_name(job->status)));
      return;
    }
    // A running job stops at its next sampling step; its status says "canceled" then.
    res.set_content(dump({{"id", job->id}, {"status", job_status_name(job->status)}, {"cancel_requested", true}}),
                    "application/json");
  });

  srv.Get(R"(/v1/jobs/([0-9a-zA-Z]{1,64})/images/(\d{1,4}))", [&](const httplib::Request& req, httplib::Response& res) {
    auto job = lookup(req.matches[1], res);
    if (!job) return;
    const size_t n = std::stoul(req.matches[2]);
    auto lk = jobs.lock();
    if (job->status != JobStatus::Succeeded) {
      if (!finished(job->status))
        send_error(res, http_error(409, "not_ready", std::string("the job is ") + job_status_name(job->status)));
      else
        send_job_error(*job, res);
      return;
    }
    if (n >= job->pngs.size()) {
      send_error(res, http_error(404, "not_found",
                                 "the job has " + std::to_string(job->pngs.size()) + " images; no image " +
                                     std::to_string(n)));
      return;
    }
    const std::string format = requested_format(req, job->options.output_format);
    const std::vector<uint8_t> png = job->pngs[n];
    const std::string info = n < job->infotexts.size() ? job->infotexts[n] : "";
    int quality = job->options.quality;
    lk.unlock();
    if (req.has_param("quality")) {
      const std::string q = req.get_param_value("quality");
      char* end = nullptr;
      const long v = std::strtol(q.c_str(), &end, 10);
      if (q.empty() || *end != 0 || v < 1 || v > 100)
        throw InvalidArgument("query parameter 'quality' must be an integer from 1 to 100");
      quality = int(v);
    }
    res.set_content(convert_image(png, format, quality, info), image_mime(format));
  });

  // Server-Sent Events: "queued" (position), "progress" (step, steps, ETA), then one of "done",
  // "failed", "canceled"; a comment line every 15 s keeps proxies from closing the stream.
  srv.Get(R"(/v1/jobs/([0-9a-zA-Z]{1,64})/events)", [&](const httplib::Request& req, httplib::Response& res) {
    auto job = lookup(req.matches[1], res);
    if (!job) return;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto seen = std::make_shared<uint64_t>(UINT64_MAX);
    auto sent = std::make_shared<int>(0);  // the step of the last preview this stream sent
    res.set_chunked_content_provider("text/event-stream", [&jobs, job, seen, sent](size_t, httplib::DataSink& sink) {
      if (*seen != UINT64_MAX) jobs.wait_change(*job, *seen, std::chrono::seconds(15));
      const size_t pos = jobs.queue_position(*job);
      std::string ev;
      bool end = false;
      {
        auto lk = jobs.lock();
        if (job->version == *seen) {
          ev = ": keep-alive\n\n";
        } else {
          *seen = job->version;
          json d = job_json(*job, pos);
          const char* name = "progress";
          switch (job->status) {
            case JobStatus::Queued:
              name = "queued";
              break;
            case JobStatus::Running: {
              name = "progress";
              const double el = std::chrono::duration<double>(Clock::now() - job->started).count();
              if (job->step > 0) d["eta_s"] = el / job->step * (job->steps - job->step);
              if (!job->preview.empty() && job->preview_step != *sent) {
                *sent = job->preview_step;
                d["preview"] = base64_encode(std::string(job->preview.begin(), job->preview.end()));
                d["preview_step"] = job->preview_step;
              }
              break;
            }
            case JobStatus::Succeeded:
              name = "done", end = true;
              break;
            case JobStatus::Failed:
              name = "failed", end = true;
              break;
            case JobStatus::Canceled:
              name = "canceled", end = true;
              break;
          }
          ev = std::string("event: ") + name + "\ndata: " + dump(d) + "\n\n";
        }
      }
      if (!sink.write(ev.data(), ev.size())) return false;
      if (end) sink.done();
      return true;
    });
  });

  // OpenAI's image API shape (synchronous, through the same queue): {prompt, n, size "WxH",
  // response_format "b64_json" | "url", ...} -> {created, data: [{b64_json} | {url}]}.
  srv.Post("/v1/images/generations", [&](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    json g = body;
    std::string response_format = "b64_json";
    for (const char* f : {"response_format", "size", "model", "style", "user", "output_compression"}) g.erase(f);
    if (auto it = body.find("quality"); it != body.end() && !it->is_number()) g.erase("quality");  // "hd", "high", ...
    if (auto it = body.find("response_format"); it != body.end() && !it->is_null()) {
      if (!it->is_string() || (*it != "b64_json" && *it != "url"))
        throw InvalidArgument("field 'response_format' must be \"b64_json\" or \"url\"");
      response_format = it->get<std::string>();
    }
    if (auto it = body.find("output_compression"); it != body.end() && it->is_number() && !body.contains("quality")) {
      const double q = it->get<double>();  // any JSON number: clamp before converting
      g["quality"] = std::isfinite(q) ? int(std::clamp(q, 1.0, 100.0)) : 100;
    }
    if (auto it = body.find("size"); it != body.end() && !it->is_null()) {
      const std::string sz = it->is_string() ? it->get<std::string>() : "";
      if (sz != "auto") {
        const size_t x = sz.find('x');
        const auto digits = [](const std::string& t) {
          return !t.empty() && t.size() <= 5 && t.find_first_not_of("0123456789") == std::string::npos;
        };
        if (x == std::string::npos || !digits(sz.substr(0, x)) || !digits(sz.substr(x + 1)))
          throw InvalidArgument("field 'size' must be \"WIDTHxHEIGHT\" (for example \"512x512\") or \"auto\"");
        g["width"] = std::stoi(sz.substr(0, x));
        g["height"] = std::stoi(sz.substr(x + 1));
      }
    }
    ParsedRequest p = parse_generate_request(g, opt.limits);
    log_ignored(p);
    if (p.type != "txt2img") throw InvalidArgument("/v1/images/generations takes no init image");
    auto job = submit(p, res);
    wait_done(job);
    auto lk = jobs.lock();
    if (job->status != JobStatus::Succeeded) return send_job_error(*job, res);
    const std::vector<std::vector<uint8_t>> pngs = job->pngs;
    const std::vector<std::string> infos = job->infotexts;
    const JobOptions o = job->options;
    lk.unlock();
    std::string base;  // absolute URLs where the Host header says where we are
    if (req.has_header("Host")) {
      const std::string proto = req.get_header_value("X-Forwarded-Proto");
      base = (proto == "https" ? "https://" : "http://") + req.get_header_value("Host");
    }
    json data = json::array();
    for (size_t i = 0; i < pngs.size(); ++i) {
      if (response_format == "url") {
        std::string url = base + "/v1/jobs/" + job->id + "/images/" + std::to_string(i);
        if (o.output_format != "png") url += "?format=" + o.output_format;
        data.push_back({{"url", url}});
      } else {
        data.push_back({{"b64_json", base64_encode(convert_image(pngs[i], o.output_format, o.quality,
                                                                 i < infos.size() ? infos[i] : ""))}});
      }
    }
    res.set_content(dump({{"created", int64_t(job->created_unix)}, {"data", data}, {"output_format", o.output_format}}),
                    "application/json");
  });

  // A1111's token counter for the page's prompt boxes (docs/API.md): the current model's tokenizer
  // and embeddings once it is loaded, the standard CLIP tokenizer before.
  srv.Post("/v1/tokenize", [&](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    const auto it = body.find("prompt");
    if (it == body.end() || !it->is_string()) throw InvalidArgument("field 'prompt' (a string) is required");
    const std::string prompt = it->get<std::string>();
    if (prompt.size() > opt.limits.max_prompt_chars)
      throw InvalidArgument("field 'prompt' is over " + std::to_string(opt.limits.max_prompt_chars) + " bytes");
    PromptTokenCount c;
    if (const auto model = jobs.model()) {
      c = model->count_tokens(prompt);
    } else {
      const ClipTokenizer tok = ClipTokenizer::bundled();
      c = count_prompt_tokens(chunk_prompt(tok, parse_extra_networks(prompt).prompt), tok.eos_id());
    }
    res.set_content(dump({{"tokens", c.tokens}, {"chunks", c.chunks}, {"limit", c.limit}}), "application/json");
  });

  add_web_routes(srv, opt.web_dir);

  srv.Get("/openapi.json", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(reinterpret_cast<const char*>(sdserve_openapi_json),
                    size_t(sdserve_openapi_json_end - sdserve_openapi_json), "application/json");
  });

  // Models (docs/API.md, "Models"): the catalog, and switching the current model.
  const auto models_json = [&] {
    const std::string current = jobs.current_model();
    const std::vector<std::string> loaded = jobs.loaded_models();
    json list = json::array();
    for (const ModelEntry& e : jobs.catalog().entries()) {
      const std::string sha = jobs.catalog().sha256(e);
      list.push_back({{"name", e.name},
                      {"title", jobs.catalog().title(e)},
                      {"filename", e.filename},
                      {"hash", sha.empty() ? json(nullptr) : json(sha.substr(0, 10))},
                      {"sha256", sha.empty() ? json(nullptr) : json(sha)},
                      {"format", e.single_file ? "safetensors" : "diffusers"},
                      {"family", e.family},
                      {"size_bytes", e.weight_bytes},
                      {"loaded", std::find(loaded.begin(), loaded.end(), e.name) != loaded.end()},
                      {"current", e.name == current}});
    }
    return json{{"models", list}, {"current", current.empty() ? json(nullptr) : json(current)}, {"loaded", loaded}};
  };
  srv.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(models_json()), "application/json");
  });
  srv.Post("/v1/models/load", [&](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    const auto it = body.find("name");
    if (it == body.end() || !it->is_string())
      throw InvalidArgument("field 'name' (a model name from GET /v1/models) is required");
    jobs.switch_model(it->get<std::string>());  // refusals map in http_error.cc (503 + Retry-After)
    res.set_content(dump(models_json()), "application/json");
  });

  srv.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    const auto s = jobs.stats();
    const auto h = jobs.health();
    std::string out;
    auto line = [&](const std::string& l) { out += l + "\n"; };
    auto metric = [&](const char* name, const char* type, const char* help, const std::string& value) {
      line(std::string("# HELP ") + name + " " + help);
      line(std::string("# TYPE ") + name + " " + type);
      line(std::string(name) + " " + value);
    };
    metric("sdserve_queue_depth", "gauge", "Jobs waiting in the queue.", std::to_string(s.queued));
    metric("sdserve_jobs_running", "gauge", "Jobs running now.", std::to_string(s.running));
    line("# HELP sdserve_jobs_total Finished jobs by status.");
    line("# TYPE sdserve_jobs_total counter");
    for (const char* st : {"succeeded", "failed", "canceled"}) {
      auto it = s.finished_by_status.find(st);
      line(std::string("sdserve_jobs_total{status=\"") + st + "\"} " +
           std::to_string(it == s.finished_by_status.end() ? 0 : it->second));
    }
    metric("sdserve_unet_calls_total", "counter", "UNet evaluations (sampling steps) run.",
           std::to_string(s.unet_calls));
    metric("sdserve_batched_jobs_total", "counter", "Jobs that shared their UNet batch with other jobs.",
           std::to_string(s.batched_jobs));
    line("# HELP sdserve_batch_jobs Jobs per UNet batch (runs of the worker).");
    line("# TYPE sdserve_batch_jobs histogram");
    {
      uint64_t runs = 0, sum = 0;
      for (const auto& [n, c] : s.batch_jobs) runs += c, sum += n * c;
      for (size_t b : {1, 2, 4, 8, 16}) {
        uint64_t c = 0;
        for (const auto& [n, k] : s.batch_jobs) c += n <= b ? k : 0;
        line("sdserve_batch_jobs_bucket{le=\"" + std::to_string(b) + "\"} " + std::to_string(c));
      }
      line("sdserve_batch_jobs_bucket{le=\"+Inf\"} " + std::to_string(runs));
      line("sdserve_batch_jobs_sum " + std::to_string(sum));
      line("sdserve_batch_jobs_count " + std::to_string(runs));
    }
    metric("sdserve_images_total", "counter", "Images generated.", std::to_string(s.images));
    metric("sdserve_busy_seconds_total", "counter", "Seconds the worker spent running jobs.",
           std::to_string(s.busy_seconds));
    metric("sdserve_model_loaded", "gauge", "1 once the model is loaded and the server takes jobs.",
           h.ready ? "1" : "0");
    metric("sdserve_models_loaded", "gauge", "Models in memory.", std::to_string(s.models_loaded));
    metric("sdserve_model_loads_total", "counter", "Models loaded (the first included).",
           std::to_string(s.model_loads));
    metric("sdserve_model_load_failures_total", "counter", "Model loads that failed.",
           std::to_string(s.model_load_failures));
    metric("sdserve_model_evictions_total", "counter", "Models dropped from memory for the memory budget.",
           std::to_string(s.model_evictions));
    line("# HELP sdserve_generation_seconds Run time of recent jobs.");
    line("# TYPE sdserve_generation_seconds histogram");
    const double bounds[] = {0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300};
    double sum = 0;
    for (double d : s.durations) sum += d;
    for (double b : bounds) {
      size_t c = 0;
      for (double d : s.durations) c += d <= b;
      char le[32];
      std::snprintf(le, sizeof le, "%g", b);
      line(std::string("sdserve_generation_seconds_bucket{le=\"") + le + "\"} " + std::to_string(c));
    }
    line("sdserve_generation_seconds_bucket{le=\"+Inf\"} " + std::to_string(s.durations.size()));
    line("sdserve_generation_seconds_sum " + std::to_string(sum));
    line("sdserve_generation_seconds_count " + std::to_string(s.durations.size()));
    res.set_content(out, "text/plain; version=0.0.4");
  });

  // ---- run ----
  const int port = opt.port;
  const int bound = port == 0 ? srv.bind_to_any_port(opt.host) : (srv.bind_to_port(opt.host, port) ? port : -1);
  if (bound < 0)
    throw IoError("cannot listen on " + opt.host + ":" + std::to_string(port) + " (in use, or not an address here)");
  log_line({{"level", "info"}, {"msg", "listening"}, {"host", opt.host}, {"port", bound}});

  std::atomic<bool> drained_ok{true}, signalled{false};
  std::thread signals([&] {
    unsigned char sig = 0;
    while (::read(signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) return;  // the server stopped by itself
    signalled = true;
    log_line({{"level", "info"}, {"msg", "signal received: draining"}, {"signal", sig}});
    drained_ok = jobs.drain(std::chrono::duration_cast<std::chrono::milliseconds>(opt.drain_timeout));
    log_line({{"level", drained_ok ? "info" : "warning"},
              {"msg", drained_ok ? "drained; exiting" : "drain timeout; exiting with jobs unfinished"}});
    srv.stop();
  });
  const bool listened = srv.listen_after_bind();
  if (!signalled) {
    const unsigned char zero = 0;
    (void)!::write(signal_pipe[1], &zero, 1);
  }
  signals.join();
  return listened || signalled ? 0 : 1;
}

}  // namespace sdserve::server
