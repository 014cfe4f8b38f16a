#include "server/web.h"

#include <httplib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <vector>

#include "core/error.h"

namespace sdserve::server {

const char* const kWebCsp =
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; style-src 'self'; script-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

bool is_web_route(std::string_view method, std::string_view path) {
  if (method != "GET" && method != "HEAD") return false;
  return path == "/" || path.rfind("/ui/", 0) == 0;
}

std::optional<std::string> web_relative_path(std::string_view path) {
  if (path.size() > 200 || path.empty()) return std::nullopt;
  int depth = 0;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    const std::string_view part = path.substr(start, slash - start);
    if (part.empty() || part[0] == '.' || ++depth > 8) return std::nullopt;
    for (char c : part) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-';
      if (!ok) return std::nullopt;
    }
    start = slash + 1;
  }
  return std::string(path);
}

std::string web_mime_type(std::string_view name) {
  const size_t dot = name.rfind('.');
  const std::string_view ext = dot == std::string_view::npos ? std::string_view() : name.substr(dot + 1);
  if (ext == "html") return "text/html; charset=utf-8";
  if (ext == "js" || ext == "mjs") return "text/javascript; charset=utf-8";
  if (ext == "css") return "text/css; charset=utf-8";
  if (ext == "json") return "application/json";
  if (ext == "webmanifest") return "application/manifest+json";
  if (ext == "svg") return "image/svg+xml";
  if (ext == "png") return "image/png";
  if (ext == "ico") return "image/x-icon";
  if (ext == "webp") return "image/webp";
  if (ext == "woff2") return "font/woff2";
  if (ext == "txt" || ext == "md") return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

namespace {

// FNV-1a of the embedded bytes: the page's ETag, so a browser revalidates cheaply (304).
std::string etag_of(const unsigned char* b, const unsigned char* e) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char* p = b; p < e; ++p) h = (h ^ *p) * 1099511628211ull;
  char out[24];
  std::snprintf(out, sizeof out, "\"%016llx\"", static_cast<unsigned long long>(h));
  return out;
}

const std::vector<std::string>& embedded_etags() {
  static const std::vector<std::string> tags = [] {
    std::vector<std::string> t;
    for (size_t i = 0; i < kWebFileCount; ++i) t.push_back(etag_of(kWebFiles[i].begin, kWebFiles[i].end));
    return t;
  }();
  return tags;
}

void page_headers(httplib::Response& res) {
  res.set_header("Content-Security-Policy", kWebCsp);
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
}

constexpr size_t kMaxDiskFile = size_t(16) << 20;

void serve_file(const std::string& web_dir, const std::string& rel, const httplib::Request& req,
                httplib::Response& res) {
  const std::string mime = web_mime_type(rel);
  if (!web_dir.empty()) {
    // Development: read from disk on every request, never cached.
    const std::filesystem::path p = std::filesystem::path(web_dir) / rel;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) throw NotFoundError("no file '" + rel + "' in --web-dir " + web_dir);
    const auto size = std::filesystem::file_size(p, ec);
    if (ec || size > kMaxDiskFile)
      throw IoError("cannot serve '" + rel + "' from --web-dir (unreadable or over 16 MiB)");
    std::ifstream in(p, std::ios::binary);
    std::string body(size, '\0');
    if (!in.read(body.data(), std::streamsize(size))) throw IoError("cannot read '" + p.string() + "'");
    page_headers(res);
    res.set_header("Cache-Control", "no-store");
    res.set_content(std::move(body), mime);
    return;
  }
  for (size_t i = 0; i < kWebFileCount; ++i) {
    if (rel != kWebFiles[i].path) continue;
    const std::string& tag = embedded_etags()[i];
    page_headers(res);
    res.set_header("Cache-Control", "no-cache");
    res.set_header("ETag", tag);
    if (req.get_header_value("If-None-Match") == tag) {
      res.status = 304;
      return;
    }
    res.set_content(reinterpret_cast<const char*>(kWebFiles[i].begin), size_t(kWebFiles[i].end - kWebFiles[i].begin),
                    mime);
    return;
  }
  if (kWebFileCount == 0) throw NotFoundError("this build has no web page (web/ was empty when it was built)");
  throw NotFoundError("no file '" + rel + "' in the web page");
}

}  // namespace

void add_web_routes(httplib::Server& srv, const std::string& web_dir) {
  srv.Get("/", [web_dir](const httplib::Request& req, httplib::Response& res) {
    serve_file(web_dir, "index.html", req, res);
  });
  srv.Get(R"(/ui/(.*))", [web_dir](const httplib::Request& req, httplib::Response& res) {
    const std::optional<std::string> rel = web_relative_path(req.matches[1].str());
    if (!rel) throw NotFoundError("no such file in the web page: " + req.matches[1].str().substr(0, 200));
    serve_file(web_dir, *rel, req, res);
  });
}

}  // namespace sdserve::server
