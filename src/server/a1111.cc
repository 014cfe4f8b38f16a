// A1111's /sdapi/v1 API on top of the job queue. Wire details follow A1111 1.10: images out as
// raw base64 (no data: prefix), data: URIs accepted in, `info` a JSON *string*, control routes
// answering JSON.
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/utf8.h"
#include "io/infotext.h"
#include "io/png.h"
#include "pipeline/scheduler.h"
#include "server/extras.h"
#include "server/http_util.h"

namespace sdserve::server {

using json = nlohmann::json;

namespace {

// The catalog entry of the model a job ran on (null if none).
const ModelEntry* job_model(const JobManager& jobs, const Job& j) {
  try {
    return &jobs.catalog().find(j.model);
  } catch (const std::exception&) {
    return nullptr;
  }
}

// A1111's processing.Processed.js(): the `info` string of a txt2img answer.
std::string info_json(const Job& j, const std::string& model_title, bool inpainting_model) {
  const GenerateRequest& r = j.req;
  json all_prompts = json::array(), all_neg = json::array();
  for (size_t i = 0; i < j.seeds.size(); ++i) {
    all_prompts.push_back(r.prompt);
    all_neg.push_back(r.negative_prompt);
  }
  json info = {{"prompt", r.prompt},
               {"all_prompts", all_prompts},
               {"negative_prompt", r.negative_prompt},
               {"all_negative_prompts", all_neg},
               {"seed", j.seeds.empty() ? r.seed : j.seeds[0]},
               {"all_seeds", j.seeds},
               {"subseed", -1},
               {"all_subseeds", json::array()},
               {"subseed_strength", 0},
               {"width", r.width},
               {"height", r.height},
               {"sampler_name", r.sampler},
               {"cfg_scale", r.cfg_scale},
               {"steps", r.steps},
               {"batch_size", r.batch_size},
               {"restore_faces", false},
               {"face_restoration_model", nullptr},
               {"sd_model_name", model_title},
               {"seed_resize_from_w", -1},
               {"seed_resize_from_h", -1},
               {"denoising_strength", r.init_image      ? json(r.strength)
                                      : r.hires.enabled ? json(r.hires.denoise)
                                                        : json(nullptr)},
               {"extra_generation_params", json::object()},
               {"index_of_first_image", 0},
               {"infotexts", j.infotexts},
               {"styles", json::array()},
               {"job_timestamp", ""},
               {"clip_skip", r.clip_skip},
               {"is_using_inpainting_conditioning", inpainting_model},
               {"version", "sdserve"}};
  return dump(info);
}

// "data:image/png;base64,...." or bare base64 -> bytes.
std::string decode_image_field(const json& body, const char* field) {
  auto it = body.find(field);
  if (it == body.end() || !it->is_string())
    throw InvalidArgument(std::string("field '") + field + "' must be a base64 string");
  std::string s = it->get<std::string>();
  if (s.rfind("data:", 0) == 0) {
    const size_t comma = s.find(',');
    if (comma == std::string::npos)
      throw InvalidArgument(std::string("field '") + field + "' is a data: URI without data");
    s = s.substr(comma + 1);
  }
  return base64_decode(s);
}

uint64_t meminfo_kb(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string k, unit;
  uint64_t v = 0;
  while (in >> k >> v >> unit)
    if (k == key + ":") return v;
  return 0;
}

}  // namespace

void add_a1111_routes(httplib::Server& srv, RouteContext& ctx) {
  JobManager& jobs = ctx.jobs;

  // txt2img and img2img: A1111's synchronous answer {images, parameters, info}.
  const auto generate_route = [&ctx, &jobs](const char* type) {
    return [&ctx, &jobs, type](const httplib::Request& req, httplib::Response& res) {
      const json body = parse_json_body(req.body);
      // n_iter batches of batch_size: the same seeds as one batch of n_iter * batch_size.
      json b = body;
      if (b.contains("n_iter") && b["n_iter"].is_number_integer()) {
        const int64_t n = b["n_iter"].get<int64_t>(), bs = b.value("batch_size", 1);
        if (n > 1) b["batch_size"] = bs * n;
        b.erase("n_iter");
      }
      ParsedRequest p = ctx.parse(b);
      if (p.type != type)
        throw InvalidArgument(std::string(type) == "img2img"
                                  ? "field 'init_images' (a list with one base64 image) is required"
                                  : "txt2img takes no init image: use /sdapi/v1/img2img");
      auto job = ctx.submit(p, res);
      ctx.wait_done(job);
      const ModelEntry* entry = job_model(jobs, *job);  // before taking the lock (titles read files once)
      const std::string title = entry ? jobs.catalog().title(*entry) : job->model;
      auto lk = jobs.lock();
      if (job->status != JobStatus::Succeeded) return send_job_error(*job, res);
      json images = json::array();
      for (const auto& png : job->pngs) images.push_back(base64_encode(std::string(png.begin(), png.end())));
      json params = body;
      if (params.contains("init_images")) params["init_images"] = json::array();  // not echoed back (size)
      if (params.contains("mask")) params["mask"] = nullptr;
      res.set_content(
          dump({{"images", images}, {"parameters", params}, {"info", info_json(*job, title, entry && entry->inpaint)}}),
          "application/json");
    };
  };
  srv.Post("/sdapi/v1/txt2img", generate_route("txt2img"));
  srv.Post("/sdapi/v1/img2img", generate_route("img2img"));

  // Extras (upscaling only): {html_info, image} or, for a batch, {html_info, images}; raw base64 PNGs.
  for (const bool batch : {false, true})
    srv.Post(batch ? "/sdapi/v1/extra-batch-images" : "/sdapi/v1/extra-single-image",
             [&ctx, &jobs, batch](const httplib::Request& req, httplib::Response& res) {
               const json body = parse_json_body(req.body);
               const auto work = parse_upscale_request(body, batch, ctx.opt.load.upscaler_dir, ctx.opt.limits);
               work->device = ctx.opt.load.device;
               work->dtype = ctx.opt.load.dtype;
               auto job = ctx.submit_work(
                   "upscale",
                   [work](const std::function<bool(int, int)>& progress) {
                     UpscaleResult r = run_upscale(*work, progress);
                     return JobResults{std::move(r.pngs), std::move(r.infotexts), {}};
                   },
                   JobOptions{}, res);
               ctx.wait_done(job);
               auto lk = jobs.lock();
               if (job->status != JobStatus::Succeeded) return send_job_error(*job, res);
               json images = json::array();
               for (const auto& png : job->pngs) images.push_back(base64_encode(std::string(png.begin(), png.end())));
               // A1111 shows the last image's infotext.
               const std::string html = plaintext_to_html(job->infotexts.empty() ? "" : job->infotexts.back());
               json out = {{"html_info", html}};
               if (batch)
                 out["images"] = images;
               else
                 out["image"] = images.empty() ? json("") : images[0];
               res.set_content(dump(out), "application/json");
             });

  srv.Get("/sdapi/v1/progress", [&jobs](const httplib::Request&, httplib::Response& res) {
    const auto s = jobs.stats();
    const auto cur = jobs.current();
    json state = {
        {"skipped", false},     {"interrupted", false}, {"job", ""},          {"job_count", s.queued + s.running},
        {"job_timestamp", "0"}, {"job_no", 0},          {"sampling_step", 0}, {"sampling_steps", 0}};
    double progress = 0, eta = 0;
    json current_image = nullptr;
    if (cur) {
      auto lk = jobs.lock();
      if (!cur->preview.empty())  // the latest latent preview (A1111's live preview, "Approx cheap")
        current_image = base64_encode(std::string(cur->preview.begin(), cur->preview.end()));
      state["job"] = cur->id;
      state["sampling_step"] = cur->step;
      state["sampling_steps"] = cur->steps;
      if (cur->steps > 0 && cur->step > 0) {
        progress = double(cur->step) / cur->steps;
        const double el = std::chrono::duration<double>(Clock::now() - cur->started).count();
        eta = el / progress - el;
      }
    }
    res.set_content(dump({{"progress", progress},
                          {"eta_relative", eta},
                          {"state", state},
                          {"current_image", current_image},
                          {"textinfo", nullptr}}),
                    "application/json");
  });

  // A1111 returns what was made so far on interrupt; here the running job is canceled (its
  // request answers 409) and the queue goes on.
  for (const char* route : {"/sdapi/v1/interrupt", "/sdapi/v1/skip"})
    srv.Post(route, [&jobs](const httplib::Request&, httplib::Response& res) {
      if (auto cur = jobs.current()) jobs.cancel(cur->id);
      res.set_content("{}", "application/json");
    });

  srv.Get("/sdapi/v1/options", [&jobs](const httplib::Request&, httplib::Response& res) {
    const std::string current = jobs.current_model();
    json title = nullptr;
    if (!current.empty()) title = jobs.catalog().title(jobs.catalog().find(current));
    res.set_content(dump({{"sd_model_checkpoint", title},
                          {"sd_checkpoint_hash", nullptr},
                          {"CLIP_stop_at_last_layers", 1},
                          {"samples_format", "png"},
                          {"sd_vae", "Automatic"}}),
                    "application/json");
  });

  srv.Post("/sdapi/v1/options", [&jobs](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    if (auto it = body.find("sd_model_checkpoint"); it != body.end() && !it->is_null()) {
      // A title ("name [hash]"), a name or a filename from sd-models: loaded (between jobs) and
      // made current; a model that fails to load leaves the previous one current (the error says why).
      if (!it->is_string()) throw InvalidArgument("'sd_model_checkpoint' must be a string (a title from sd-models)");
      jobs.switch_model(it->get<std::string>());  // refusals map in http_error.cc (503 + Retry-After)
    }
    res.set_content("null", "application/json");
  });

  srv.Get("/sdapi/v1/sd-models", [&jobs](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const ModelEntry& e : jobs.catalog().entries()) {
      const std::string sha = jobs.catalog().sha256(e);  // read once per file
      out.push_back({{"title", jobs.catalog().title(e)},
                     {"model_name", e.name},
                     {"hash", sha.empty() ? nullptr : json(sha.substr(0, 10))},
                     {"sha256", sha.empty() ? nullptr : json(sha)},
                     {"filename", e.filename},
                     {"config", nullptr}});
    }
    res.set_content(dump(out), "application/json");
  });

  srv.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const std::string& n : sampler_names())
      out.push_back({{"name", n}, {"aliases", json::array()}, {"options", json::object()}});
    res.set_content(dump(out), "application/json");
  });

  srv.Get("/sdapi/v1/schedulers", [](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const std::string& n : schedule_names()) {
      std::string id = n;
      for (char& c : id) c = c == ' ' ? '_' : char(std::tolower(static_cast<unsigned char>(c)));
      out.push_back(
          {{"name", id}, {"label", n}, {"aliases", nullptr}, {"default_rho", -1}, {"need_inner_model", false}});
    }
    res.set_content(dump(out), "application/json");
  });

  // The pixel upscalers of the extras routes and the hires fix ("None" first, as A1111), and the
  // hires fix's latent modes.
  srv.Get("/sdapi/v1/upscalers", [&ctx](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const std::string& n : extras_upscaler_names(ctx.opt.load.upscaler_dir))
      out.push_back({{"name", n},
                     {"model_name", n == "None" ? json(nullptr) : json(n)},
                     {"model_path", nullptr},
                     {"model_url", nullptr},
                     {"scale", 4}});
    res.set_content(dump(out), "application/json");
  });
  srv.Get("/sdapi/v1/latent-upscale-modes", [](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const std::string& n : hires_upscaler_names())
      if (n.rfind("Latent", 0) == 0) out.push_back({{"name", n}});
    res.set_content(dump(out), "application/json");
  });

  srv.Get("/sdapi/v1/loras", [&jobs](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    if (const auto m = jobs.model())
      for (const std::string& n : m->lora_names())
        out.push_back({{"name", n}, {"alias", n}, {"path", n + ".safetensors"}, {"metadata", json::object()}});
    res.set_content(dump(out), "application/json");
  });

  // The LoRA folder is re-read on every lookup already; checkpoints come with the models folder.
  for (const char* route : {"/sdapi/v1/refresh-loras", "/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-vae"})
    srv.Post(route,
             [](const httplib::Request&, httplib::Response& res) { res.set_content("null", "application/json"); });

  srv.Get("/sdapi/v1/scripts", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"txt2img": [], "img2img": []})", "application/json");
  });

  srv.Get("/sdapi/v1/embeddings", [&jobs](const httplib::Request&, httplib::Response& res) {
    json loaded = json::object();
    if (const auto m = jobs.model())
      for (const TextualInversion& e : m->embeddings())
        loaded[e.name] = {{"step", nullptr},
                          {"sd_checkpoint", nullptr},
                          {"sd_checkpoint_name", nullptr},
                          {"shape", e.vectors.size(1)},
                          {"vectors", e.vectors.size(0)}};
    res.set_content(dump({{"loaded", loaded}, {"skipped", json::object()}}), "application/json");
  });

  srv.Get("/sdapi/v1/memory", [](const httplib::Request&, httplib::Response& res) {
    const double total = double(meminfo_kb("MemTotal")) * 1024, free = double(meminfo_kb("MemAvailable")) * 1024;
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    res.set_content(dump({{"ram", {{"free", free}, {"used", total - free}, {"total", total}}},
                          {"process", {{"peak_rss", double(ru.ru_maxrss) * 1024}}},
                          {"cuda", {{"error", "not reported yet"}}}}),
                    "application/json");
  });

  srv.Post("/sdapi/v1/png-info", [](const httplib::Request& req, httplib::Response& res) {
    const std::string bytes = decode_image_field(parse_json_body(req.body), "image");
    PngLimits lim;
    lim.max_input_bytes = size_t(64) << 20;
    const DecodedImage im = decode_png(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), lim);
    std::string info;
    json items = json::object();
    for (const auto& [k, v] : im.text) {
      if (k == "parameters")
        info = v;
      else
        items[k] = v;
    }
    json params = json::object();
    if (!info.empty()) {
      const GenerationParams gp = parse_infotext(info);
      params["Prompt"] = gp.prompt;
      params["Negative prompt"] = gp.negative_prompt;
      const size_t nl = info.rfind('\n');
      for (const auto& [k, v] : infotext_find_params(nl == std::string::npos ? info : info.substr(nl + 1))) {
        std::string val = v;
        if (val.size() >= 2 && val.front() == '"' && val.back() == '"') {
          const json unq = json::parse(val, nullptr, false);
          if (unq.is_string()) val = unq.get<std::string>();
        }
        params[k] = val;
      }
      if (params.contains("Size")) {
        const std::string sz = params["Size"];
        const size_t x = sz.find('x');
        if (x != std::string::npos) {
          params["Size-1"] = sz.substr(0, x);
          params["Size-2"] = sz.substr(x + 1);
        }
      }
    }
    res.set_content(dump({{"info", info}, {"items", items}, {"parameters", params}}), "application/json");
  });
}

}  // namespace sdserve::server
