#include "net/hub.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "io/sha256.h"

namespace fs = std::filesystem;

namespace sdserve::net {

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }

bool good_segment(const std::string& s) {
  if (s.empty() || s.size() > 96 || s[0] == '.' || s[0] == '-') return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return s.find("..") == std::string::npos;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    const size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) return out;
    b = e + 1;
  }
}

// A repo file name that may be written under the snapshot folder: relative, no '..', no empty segment.
bool safe_relative(const std::string& p) {
  if (p.empty() || p.size() > 512 || p[0] == '/' || p.find('\\') != std::string::npos) return false;
  for (const std::string& seg : split(p, '/'))
    if (seg.empty() || seg == "." || seg == "..") return false;
  for (char c : p)
    if (static_cast<unsigned char>(c) < 0x20) return false;
  return true;
}

bool is_pickle(const std::string& f) {
  return ends_with(f, ".bin") || ends_with(f, ".ckpt") || ends_with(f, ".pt") || ends_with(f, ".pth") ||
         ends_with(f, ".pkl");
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) throw IoError(tmp.string() + ": cannot write");
  }
  fs::rename(tmp, p, ec);
  if (ec) throw IoError(p.string() + ": cannot write (" + ec.message() + ")");
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

void check_revision(const std::string& rev) {
  if (rev.empty() || !safe_relative(rev))
    throw InvalidArgument("--revision '" + rev + "': want a branch, tag or commit sha");
}

struct Listing {
  std::string sha;
  std::vector<std::string> siblings;
};

Listing list_repo(const std::string& endpoint, const RepoRef& ref, const std::string& revision,
                  const std::string& token) {
  const std::string url =
      endpoint + "/api/models/" + url_encode(ref.repo, true) + "/revision/" + url_encode(revision, false);
  std::string body;
  try {
    body = http_get_text(url, token);
  } catch (const HttpStatusError& e) {
    const bool repo_missing = e.status() == 404 || e.error_code() == "RepoNotFound";
    if (e.error_code() == "RevisionNotFound")
      throw NotFoundError("revision '" + revision + "' of " + ref.repo + " not found on " + endpoint);
    if (repo_missing)
      throw NotFoundError("repo " + ref.repo + " not found on " + endpoint + " (HTTP " + std::to_string(e.status()) +
                          "): check the name; a private repo needs HF_TOKEN");
    throw;
  }
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("sha") || !j["sha"].is_string())
    throw IoError(url + ": the answer is not a model listing (no 'sha'); is " + endpoint + " a Hugging Face hub?");
  Listing l;
  l.sha = j["sha"].get<std::string>();
  if (!good_segment(l.sha)) throw IoError(url + ": bad commit sha in the answer");
  if (j.contains("siblings") && j["siblings"].is_array())
    for (const auto& s : j["siblings"])
      if (s.is_object() && s.contains("rfilename") && s["rfilename"].is_string()) {
        const std::string f = s["rfilename"].get<std::string>();
        if (safe_relative(f)) l.siblings.push_back(f);
      }
  return l;
}

}  // namespace

std::string default_endpoint() {
  std::string e = env("HF_ENDPOINT");
  if (e.empty()) e = "https://huggingface.co";
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

std::string default_token() {
  std::string t = env("HF_TOKEN");
  if (t.empty()) t = env("HUGGING_FACE_HUB_TOKEN");
  return t;
}

fs::path default_cache_dir() {
  if (const std::string d = env("SDSERVE_CACHE_DIR"); !d.empty()) return d;
  if (const std::string x = env("XDG_CACHE_HOME"); !x.empty()) return fs::path(x) / "sdserve";
  if (const std::string h = env("HOME"); !h.empty()) return fs::path(h) / ".cache" / "sdserve";
  return fs::path(".cache") / "sdserve";
}

std::optional<RepoRef> parse_repo_ref(const std::string& s) {
  if (s.empty() || is_url(s)) return std::nullopt;
  const std::vector<std::string> seg = split(s, '/');
  if (seg.size() < 2) return std::nullopt;
  for (const std::string& x : seg)
    if (!good_segment(x)) return std::nullopt;
  RepoRef r;
  r.repo = seg[0] + "/" + seg[1];
  if (seg.size() == 2) return r;
  if (!ends_with(s, ".safetensors")) return std::nullopt;
  r.file = s.substr(r.repo.size() + 1);
  return r;
}

bool is_url(const std::string& s) { return starts_with(s, "http://") || starts_with(s, "https://"); }

fs::path repo_cache_dir(const fs::path& cache, const std::string& repo) {
  std::string name = "models--" + repo;
  for (size_t p = name.find('/'); p != std::string::npos; p = name.find('/')) name.replace(p, 1, "--");
  return cache / name;
}

fs::path snapshot_dir(const fs::path& cache, const std::string& repo, const std::string& sha) {
  return repo_cache_dir(cache, repo) / "snapshots" / sha;
}

fs::path ref_file(const fs::path& cache, const std::string& repo, const std::string& revision) {
  return repo_cache_dir(cache, repo) / "refs" / revision;
}

fs::path url_cache_path(const fs::path& cache, const std::string& url) {
  const std::string no_query = url.substr(0, url.find_first_of("?#"));
  std::string base = no_query.substr(no_query.rfind('/') + 1);
  for (char& c : base)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
  if (base.empty() || base[0] == '.') base = "download" + base;
  return cache / "urls" / sha256_hex(no_query).substr(0, 16) / base;
}

FileSelection select_pipeline_files(const std::vector<std::string>& siblings, const std::string& variant) {
  const std::set<std::string> have(siblings.begin(), siblings.end());
  FileSelection sel;
  std::vector<std::string> weights;
  if (have.count("model_index.json")) sel.files.push_back("model_index.json");
  for (const std::string& f : siblings)
    if ((starts_with(f, "scheduler/") && ends_with(f, ".json") && split(f, '/').size() == 2) ||
        ((starts_with(f, "tokenizer/") || starts_with(f, "tokenizer_2/")) && split(f, '/').size() == 2 &&
         !is_pickle(f)))
      sel.files.push_back(f);
  for (const char* comp : {"text_encoder", "text_encoder_2", "unet", "vae"}) {
    const std::string dir = std::string(comp) + "/";
    bool any = false, pickles = false;
    for (const std::string& f : siblings)
      if (starts_with(f, dir) && split(f, '/').size() == 2) {
        any = true;
        pickles = pickles || is_pickle(f);
      }
    if (!any) continue;
    if (have.count(dir + "config.json")) sel.files.push_back(dir + "config.json");
    // Variant order: the requested one first, then the full-precision default, then fp16 (the loader
    // takes either; it prefers the default when both are on disk).
    std::vector<std::string> variants;
    if (!variant.empty()) variants.push_back("." + variant);
    variants.push_back("");
    if (variant != "fp16") variants.push_back(".fp16");
    std::string chosen;
    bool is_index = false;
    for (const std::string& v : variants) {
      for (const char* stem : {"model", "diffusion_pytorch_model"}) {
        const std::string single = dir + stem + v + ".safetensors";
        const std::string index = single + ".index.json";
        if (have.count(single))
          chosen = single;
        else if (have.count(index))
          chosen = index, is_index = true;
        if (!chosen.empty()) break;
      }
      if (!chosen.empty()) {
        if (!variant.empty() && v != "." + variant) sel.variant_missing.push_back(comp);
        break;
      }
    }
    if (chosen.empty()) {
      if (pickles) sel.pickle_only.push_back(comp);
      continue;
    }
    weights.push_back(chosen);
    if (is_index) sel.indexes.push_back(chosen);
  }
  sel.files.insert(sel.files.end(), weights.begin(), weights.end());
  return sel;
}

std::vector<std::string> index_shards(const nlohmann::json& index, const std::string& index_path) {
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw ModelFormatError(index_path + ": no weight_map object");
  const size_t slash = index_path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : index_path.substr(0, slash + 1);
  std::set<std::string> shards;
  for (const auto& [k, v] : index["weight_map"].items()) {
    if (!v.is_string()) throw ModelFormatError(index_path + ": weight_map value for '" + k + "' is not a string");
    const std::string f = v.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == ".." ||
        !ends_with(f, ".safetensors"))
      throw ModelFormatError(index_path + ": bad shard file name '" + f + "'");
    shards.insert(dir + f);
  }
  return {shards.begin(), shards.end()};
}

std::optional<fs::path> cached_repo(const RepoRef& ref, const fs::path& cache, const std::string& revision) {
  if (!safe_relative(revision)) return std::nullopt;
  const fs::path rf = ref_file(cache, ref.repo, revision);
  std::error_code ec;
  if (!fs::is_regular_file(rf, ec)) return std::nullopt;
  const std::string sha = read_text(rf);
  if (!good_segment(sha)) return std::nullopt;
  const fs::path snap = snapshot_dir(cache, ref.repo, sha);
  if (ref.file.empty()) {
    if (fs::is_regular_file(snap / ".sdserve-complete", ec) && fs::is_regular_file(snap / "model_index.json", ec))
      return snap;
    return std::nullopt;
  }
  if (fs::is_regular_file(snap / ref.file, ec)) return snap / ref.file;
  return std::nullopt;
}

PullResult pull_repo(const RepoRef& ref, const PullOptions& opt) {
  check_revision(opt.revision);
  SD_CHECK_ARG(opt.variant.empty() || opt.variant == "fp16", "--variant must be fp16 (or not given)");
  const std::string endpoint = opt.endpoint.empty() ? default_endpoint() : opt.endpoint;
  const fs::path cache = opt.cache_dir.empty() ? default_cache_dir() : opt.cache_dir;
  const Listing l = list_repo(endpoint, ref, opt.revision, opt.token);
  const std::set<std::string> have(l.siblings.begin(), l.siblings.end());
  const fs::path snap = snapshot_dir(cache, ref.repo, l.sha);
  PullResult r;
  r.sha = l.sha;

  auto get = [&](const std::string& f) {
    ++r.files;
    const fs::path dest = snap / f;
    std::error_code ec;
    if (fs::is_regular_file(dest, ec)) return;  // a snapshot's files are checked before they get their name
    DownloadOptions d;
    d.name = f;
    d.bearer_token = opt.token;
    d.trust_etag = true;
    d.max_attempts = opt.max_attempts;
    d.backoff_s = opt.backoff_s;
    d.progress = opt.progress;
    d.notice = opt.notice;
    const std::string url =
        endpoint + "/" + url_encode(ref.repo, true) + "/resolve/" + l.sha + "/" + url_encode(f, true);
    try {
      download_file(url, dest, d);
    } catch (const HttpStatusError& e) {
      if (e.status() == 404) throw NotFoundError(ref.repo + "@" + l.sha.substr(0, 12) + ": file " + f + " not found");
      throw;
    }
    ++r.downloaded;
  };

  if (!ref.file.empty()) {
    if (!have.count(ref.file))
      throw NotFoundError("repo " + ref.repo + " has no file " + ref.file + " at revision " + opt.revision);
    get(ref.file);
    write_text_atomic(ref_file(cache, ref.repo, opt.revision), l.sha);
    r.path = snap / ref.file;
    return r;
  }

  if (!have.count("model_index.json")) {
    std::vector<std::string> ckpts;
    for (const std::string& f : l.siblings)
      if (ends_with(f, ".safetensors") && f.find('/') == std::string::npos) ckpts.push_back(f);
    std::string msg = ref.repo + " is not a diffusers pipeline (no model_index.json)";
    if (!ckpts.empty()) {
      msg += "; pull one checkpoint file of it, e.g. sdserve pull " + ref.repo + "/" + ckpts[0];
      if (ckpts.size() > 1) {
        std::string all;
        for (size_t i = 0; i < ckpts.size() && all.size() < 200; ++i) all += (i ? ", " : "") + ckpts[i];
        msg += " (files: " + all + ")";
      }
    }
    throw NotFoundError(msg);
  }
  const FileSelection sel = select_pipeline_files(l.siblings, opt.variant);
  if (!sel.pickle_only.empty())
    throw UnsupportedError(ref.repo + ": " + sel.pickle_only[0] +
                           " has only PyTorch pickle weights (.bin), which sdserve never loads; pick a repo with "
                           ".safetensors weights");
  for (const char* need : {"unet", "vae", "text_encoder"})
    if (std::none_of(sel.files.begin(), sel.files.end(),
                     [&](const std::string& f) {
                       return starts_with(f, std::string(need) + "/") && !ends_with(f, "config.json");
                     }) &&
        (std::string(need) != "text_encoder" ||
         std::none_of(sel.files.begin(), sel.files.end(),
                      [](const std::string& f) { return starts_with(f, "text_encoder_2/"); })))
      throw NotFoundError(ref.repo + ": no " + need + " weights (.safetensors) in the repo");
  if (opt.notice)
    for (const std::string& c : sel.variant_missing)
      opt.notice(ref.repo + ": " + c + " has no " + opt.variant + " variant; taking its default weights");
  for (const std::string& f : sel.files) {
    get(f);
    if (std::find(sel.indexes.begin(), sel.indexes.end(), f) != sel.indexes.end()) {
      std::ifstream in(snap / f, std::ios::binary);
      const nlohmann::json idx = nlohmann::json::parse(in, nullptr, false);
      for (const std::string& shard : index_shards(idx, f)) {
        if (!have.count(shard)) throw NotFoundError(ref.repo + ": " + f + " names " + shard + ", which the repo lacks");
        get(shard);
      }
    }
  }
  write_text_atomic(snap / ".sdserve-complete", opt.variant.empty() ? "default\n" : opt.variant + "\n");
  write_text_atomic(ref_file(cache, ref.repo, opt.revision), l.sha);
  r.path = snap;
  return r;
}

PullResult pull_url(const std::string& url, const PullOptions& opt) {
  const DownloadUrl u = parse_download_url(url);
  const fs::path cache = opt.cache_dir.empty() ? default_cache_dir() : opt.cache_dir;
  std::string want = opt.sha256;
  for (char& c : want) c = char(std::tolower(static_cast<unsigned char>(c)));
  SD_CHECK_ARG(want.empty() || sha256_from_etag(want) == want, "--sha256 must be 64 hex digits");
  PullResult r;
  r.path = url_cache_path(cache, url);
  r.files = 1;
  std::error_code ec;
  if (fs::is_regular_file(r.path, ec)) {
    if (want.empty()) return r;
    // Already here: check it against the digest asked for now.
    Sha256 h;
    std::ifstream in(r.path, std::ios::binary);
    std::vector<char> buf(1 << 20);
    while (in.read(buf.data(), std::streamsize(buf.size())) || in.gcount() > 0)
      h.update(buf.data(), size_t(in.gcount()));
    const auto d = h.digest();
    if (to_hex(d.data(), d.size()) == want) return r;
    fs::remove(r.path, ec);
  }
  DownloadOptions d;
  d.name = r.path.filename().string();
  d.expected_sha256 = want;
  // The hub token goes only to the hub's own host, never to a third party (S3, a CDN).
  const std::string endpoint = opt.endpoint.empty() ? default_endpoint() : opt.endpoint;
  try {
    if (parse_download_url(endpoint).origin() == u.origin()) d.bearer_token = opt.token;
  } catch (const InvalidArgument&) {
  }
  d.max_attempts = opt.max_attempts;
  d.backoff_s = opt.backoff_s;
  d.progress = opt.progress;
  d.notice = opt.notice;
  download_file(url, r.path, d);
  r.downloaded = 1;
  return r;
}

}  // namespace sdserve::net
