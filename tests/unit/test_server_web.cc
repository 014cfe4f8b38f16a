// The web page's routes (src/server/web.cc): which paths map to files, MIME types, and which
// routes skip the API key. The page itself is tested in a browser (tests/web/).
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "server/web.h"

namespace sdserve::server {
namespace {

TEST(Web, RelativePathsAreSafeNames) {
  for (const char* ok : {"app.js", "js/api.js", "css/a-b_c.css", "icons/x.svg", "a/b/c/d/e/f/g/h.js"})
    EXPECT_EQ(web_relative_path(ok), std::string(ok)) << ok;
  for (const char* bad : {"", "/etc/passwd", "../x", "js/../x", "..", ".env", "js/.git/config", "a//b", "a/", "a\\b",
                          "a%2e%2e/b", "a b", "a\nb", "a/b/c/d/e/f/g/h/i.js", "\xc3\xa9.js", "x:y"})
    EXPECT_FALSE(web_relative_path(bad).has_value()) << bad;
  EXPECT_FALSE(web_relative_path(std::string(201, 'a')).has_value());
  EXPECT_TRUE(web_relative_path(std::string(200, 'a')).has_value());
}

TEST(Web, MimeTypes) {
  EXPECT_EQ(web_mime_type("index.html"), "text/html; charset=utf-8");
  EXPECT_EQ(web_mime_type("js/app.js"), "text/javascript; charset=utf-8");  // modules need a JS type
  EXPECT_EQ(web_mime_type("style.css"), "text/css; charset=utf-8");
  EXPECT_EQ(web_mime_type("icon.svg"), "image/svg+xml");
  EXPECT_EQ(web_mime_type("README"), "application/octet-stream");
  EXPECT_EQ(web_mime_type("x.exe"), "application/octet-stream");
}

TEST(Web, OnlyThePageIsPublic) {
  EXPECT_TRUE(is_web_route("GET", "/"));
  EXPECT_TRUE(is_web_route("HEAD", "/"));
  EXPECT_TRUE(is_web_route("GET", "/ui/app.js"));
  for (const char* p : {"/v1/jobs", "/sdapi/v1/txt2img", "/metrics", "/ui", "/uix/a", "//", "/openapi.json"})
    EXPECT_FALSE(is_web_route("GET", p)) << p;
  EXPECT_FALSE(is_web_route("POST", "/"));
  EXPECT_FALSE(is_web_route("POST", "/ui/app.js"));
  EXPECT_FALSE(is_web_route("DELETE", "/ui/app.js"));
}

TEST(Web, CspKeepsThePageOnItsOrigin) {
  const std::string csp = kWebCsp;
  for (const char* part :
       {"default-src 'self'", "connect-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"})
    EXPECT_NE(csp.find(part), std::string::npos) << part;
  EXPECT_EQ(csp.find("unsafe-inline"), std::string::npos);
  EXPECT_EQ(csp.find("unsafe-eval"), std::string::npos);
}

TEST(Web, EmbeddedTableIsTerminatedAndHasTheIndexWhenBuiltWithAPage) {
  EXPECT_EQ(kWebFiles[kWebFileCount].path, nullptr);
  bool index = false;
  for (size_t i = 0; i < kWebFileCount; ++i) {
    ASSERT_TRUE(web_relative_path(kWebFiles[i].path).has_value()) << kWebFiles[i].path;
    EXPECT_LE(kWebFiles[i].begin, kWebFiles[i].end);
    index |= std::strcmp(kWebFiles[i].path, "index.html") == 0;
  }
  EXPECT_TRUE(kWebFileCount == 0 || index);
}

}  // namespace
}  // namespace sdserve::server
