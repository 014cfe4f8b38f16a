// The web page (docs/WEB.md): web/ compiled into the binary (cmake/Embed.cmake, sdserve_embed_dir)
// and served at `/` (index.html) and `/ui/PATH`; with --web-dir the files are read from that
// folder on every request instead, for development. The page's routes are public (it asks for the
// API key itself) and carry a strict Content-Security-Policy: the page talks to its own origin only.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace httplib {
class Server;
}

namespace sdserve::server {

struct EmbeddedFile {
  const char* path;  // relative to web/, '/'-separated
  const unsigned char* begin;
  const unsigned char* end;
};
// The generated table (build/*/embed/web_files.cc); the last row is all nulls.
extern const EmbeddedFile kWebFiles[];
extern const size_t kWebFileCount;

// The Content-Security-Policy the page is served with.
extern const char* const kWebCsp;

// True for the page's own routes (GET/HEAD of `/` and `/ui/...`), which need no API key.
bool is_web_route(std::string_view method, std::string_view path);

// A path under /ui/ as a file name relative to the web folder, or nullopt when it is not one we
// serve: only [A-Za-z0-9._-] components, none empty or starting with '.', at most 8 deep and
// 200 bytes (so no "..", no absolute paths, no hidden files).
std::optional<std::string> web_relative_path(std::string_view path);

// The MIME type for a file name by its extension (application/octet-stream when unknown).
std::string web_mime_type(std::string_view name);

// GET / and GET /ui/(.*): from `web_dir` on disk when it is not empty, else the embedded copy.
void add_web_routes(httplib::Server& srv, const std::string& web_dir);

}  // namespace sdserve::server
