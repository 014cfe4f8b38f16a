#include "cli/pull.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "core/error.h"
#include "models/demo_model.h"
#include "net/hub.h"
#include "server/http_util.h"

namespace fs = std::filesystem;

namespace sdserve::cli {

namespace {

std::string human(double b) {
  char s[32];
  if (b >= 1024.0 * 1024 * 1024)
    std::snprintf(s, sizeof s, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else
    std::snprintf(s, sizeof s, "%.1f MiB", b / (1024.0 * 1024));
  return s;
}

// stderr reporting: a progress bar on a terminal, one line per finished file otherwise, JSON log lines
// for serve.
struct Reporter {
  bool tty = isatty(STDERR_FILENO) != 0;
  bool json = false;
  bool bar_open = false;
  std::string started;  // file whose start was logged (json)

  void progress(const net::DownloadProgress& p) {
    if (json) {
      if (started != p.name) {
        started = p.name;
        server::log_line({{"level", "info"}, {"msg", "downloading"}, {"file", p.name}, {"bytes", p.total}});
      }
      if (p.finished)
        server::log_line(
            {{"level", "info"}, {"msg", "downloaded"}, {"file", p.name}, {"bytes", p.done}, {"seconds", p.seconds}});
      return;
    }
    if (!tty) {
      if (p.finished)
        std::fprintf(stderr, "pulled %s (%s in %.1fs)\n", p.name.c_str(), human(double(p.done)).c_str(), p.seconds);
      return;
    }
    const double got = double(p.done - p.resumed_from);
    const double rate = p.seconds > 0 ? got / p.seconds : 0;
    std::string bar;
    if (p.total > 0) {
      const int width = 24, done = int(double(p.done) / double(p.total) * width);
      bar = "[" + std::string(size_t(std::min(done, width)), '#') +
            std::string(size_t(width - std::min(done, width)), '.') + "] " +
            std::to_string(int(100.0 * double(p.done) / double(p.total))) + "% " + human(double(p.done)) + " / " +
            human(double(p.total));
      if (rate > 0 && !p.finished) {
        char eta[32];
        std::snprintf(eta, sizeof eta, " ETA %.0fs", (double(p.total) - double(p.done)) / rate);
        bar += eta;
      }
    } else {
      bar = human(double(p.done));
    }
    char speed[32];
    std::snprintf(speed, sizeof speed, " %s/s", human(rate).c_str());
    std::string name = p.name.size() > 40 ? "..." + p.name.substr(p.name.size() - 37) : p.name;
    std::fprintf(stderr, "\r\033[K%s %s%s", name.c_str(), bar.c_str(), speed);
    bar_open = !p.finished;
    if (p.finished) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

  void notice(const std::string& m) {
    if (json) {
      server::log_line({{"level", "warning"}, {"msg", m}});
      return;
    }
    if (bar_open) std::fputc('\n', stderr);
    bar_open = false;
    std::fprintf(stderr, "sdserve: %s\n", m.c_str());
  }
};

net::PullOptions pull_options(Reporter& rep, const std::string& cache_dir, const std::string& endpoint) {
  net::PullOptions o;
  o.endpoint = endpoint.empty() ? net::default_endpoint() : endpoint;
  while (!o.endpoint.empty() && o.endpoint.back() == '/') o.endpoint.pop_back();
  o.token = net::default_token();
  o.cache_dir = cache_dir.empty() ? net::default_cache_dir() : fs::path(cache_dir);
  o.progress = [&rep](const net::DownloadProgress& p) { rep.progress(p); };
  o.notice = [&rep](const std::string& m) { rep.notice(m); };
  if (const char* a = std::getenv("SDSERVE_PULL_ATTEMPTS")) o.max_attempts = std::max(1, std::atoi(a));
  if (const char* b = std::getenv("SDSERVE_PULL_BACKOFF_S")) o.backoff_s = std::max(0.0, std::atof(b));
  return o;
}

}  // namespace

CLI::App* add_pull_command(CLI::App& app, PullArgs& a) {
  auto* p = app.add_subcommand(
      "pull",
      "Download a model into the cache: a Hugging Face diffusers repo (org/name), one .safetensors file of "
      "a repo (org/name/FILE.safetensors) or an http(s) URL; prints the local path (docs/MODELS.md)");
  p->add_option("TARGET", a.target, "org/name, org/name/FILE.safetensors or https://...")->required();
  p->add_option("--revision", a.revision, "branch, tag or commit of a repo (default main); pinned to its commit");
  p->add_option("--variant", a.variant, "fp16: take the repo's .fp16.safetensors weights (half the download)")
      ->check(CLI::IsMember({"fp16"}));
  p->add_option("--cache-dir", a.cache_dir,
                "cache folder (default $SDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/sdserve or ~/.cache/sdserve)");
  p->add_option("--endpoint", a.endpoint, "hub URL (default $HF_ENDPOINT, else https://huggingface.co)");
  p->add_option("--sha256", a.sha256, "URL pulls: the file's expected SHA-256 (64 hex digits)");
  return p;
}

int cmd_pull(const PullArgs& a) {
  Reporter rep;
  const net::PullOptions o = [&] {
    net::PullOptions x = pull_options(rep, a.cache_dir, a.endpoint);
    x.revision = a.revision;
    x.variant = a.variant;
    x.sha256 = a.sha256;
    return x;
  }();
  net::PullResult r;
  if (net::is_url(a.target)) {
    r = net::pull_url(a.target, o);
  } else if (const auto ref = net::parse_repo_ref(a.target)) {
    SD_CHECK_ARG(a.sha256.empty(), "--sha256 is for URL pulls; repo files are checked against the hub's own digests");
    r = net::pull_repo(*ref, o);
  } else {
    throw InvalidArgument("pull " + a.target +
                          ": want org/name (a diffusers repo), org/name/FILE.safetensors or an http(s) URL");
  }
  if (r.files > 1 || r.downloaded > 0 || !rep.tty)
    std::fprintf(stderr, "%s: %d file%s, %d downloaded%s\n", a.target.c_str(), r.files, r.files == 1 ? "" : "s",
                 r.downloaded, r.sha.empty() ? "" : (", commit " + r.sha.substr(0, 12)).c_str());
  std::cout << r.path.string() << std::endl;
  return 0;
}

std::string resolve_model_arg(const std::string& spec, bool json_log) {
  std::error_code ec;
  if (spec == "demo") {
    const fs::path dir = ensure_demo_model(net::default_cache_dir() / "demo");
    const std::string msg = "--model demo: a tiny built-in model with random weights; its images are noise";
    if (json_log)
      server::log_line({{"level", "warning"}, {"msg", msg}, {"path", dir.string()}});
    else
      std::fprintf(stderr, "sdserve: warning: %s\n", msg.c_str());
    return dir.string();
  }
  if (spec.empty() || fs::exists(spec, ec)) return spec;
  const bool url = net::is_url(spec);
  const auto ref = url ? std::nullopt : net::parse_repo_ref(spec);
  if (!url && !ref) return spec;
  const fs::path cache = net::default_cache_dir();
  if (url) {
    const fs::path p = net::url_cache_path(cache, spec);
    if (fs::is_regular_file(p, ec)) return p.string();
  } else if (auto hit = net::cached_repo(*ref, cache)) {
    return hit->string();
  }
  const char* offline = std::getenv("HF_HUB_OFFLINE");
  if (offline && *offline && std::string(offline) != "0")
    throw NotFoundError("model " + spec + " is not in the cache (" + cache.string() +
                        ") and HF_HUB_OFFLINE is set: run 'sdserve pull " + spec +
                        "' online first, or use --model demo or --model PATH of a local model");
  Reporter rep;
  rep.json = json_log;
  const net::PullOptions o = pull_options(rep, "", "");
  try {
    const net::PullResult r = url ? net::pull_url(spec, o) : net::pull_repo(*ref, o);
    return r.path.string();
  } catch (const Error& e) {
    throw Error(e.kind(), "model " + spec + " is not in the cache and cannot be pulled: " + e.what());
  }
}

}  // namespace sdserve::cli
