// Init images by URL: URL parsing, address classification, the guard with an injected resolver
// (no DNS), and the guarded GET against an in-process loopback server (pinning, Host header,
// redirects re-checked, size cap, timeout). The routes are black-box tested in
// tests/e2e/test_url_fetch.py.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <atomic>
#include <map>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/png.h"
#include "net/fetch.h"
#include "net/url.h"
#include "server/http_error.h"
#include "server/request.h"

namespace sdserve::net {
namespace {

IpAddress ip(const char* s) {
  auto a = IpAddress::parse(s);
  EXPECT_TRUE(a.has_value()) << s;
  return a.value_or(IpAddress{});
}

TEST(UrlParse, AcceptsHttpAndHttps) {
  Url u = parse_url("http://Example.COM/a/b.png?x=1#frag");
  EXPECT_EQ(u.scheme, "http");
  EXPECT_EQ(u.host, "example.com");
  EXPECT_EQ(u.port, 80);
  EXPECT_EQ(u.target, "/a/b.png?x=1");
  EXPECT_EQ(u.authority(), "example.com");
  EXPECT_EQ(u.str(), "http://example.com/a/b.png?x=1");

  u = parse_url("HTTPS://img.example.org:8443");
  EXPECT_EQ(u.scheme, "https");
  EXPECT_EQ(u.port, 8443);
  EXPECT_EQ(u.target, "/");
  EXPECT_EQ(u.authority(), "img.example.org:8443");

  u = parse_url("https://example.com?q");
  EXPECT_EQ(u.target, "/?q");
  EXPECT_EQ(u.port, 443);

  u = parse_url("http://[2606:4700:4700::1111]:8080/x");
  EXPECT_TRUE(u.ipv6_literal);
  EXPECT_EQ(u.host, "2606:4700:4700::1111");
  EXPECT_EQ(u.port, 8080);
  EXPECT_EQ(u.authority(), "[2606:4700:4700::1111]:8080");

  u = parse_url("http://[::FFFF:127.0.0.1]/");
  EXPECT_EQ(u.host, "::ffff:127.0.0.1");
}

TEST(UrlParse, RefusesOtherSchemesAndOddForms) {
  for (const char* bad : {"file:///etc/passwd",
                          "gopher://example.com:70/_x",
                          "ftp://example.com/a",
                          "data:image/png;base64,AAAA",
                          "javascript:alert(1)",
                          "dict://example.com:11211/",
                          "ldap://x",
                          "FILE:///etc/passwd",
                          "/relative/path",
                          "example.com/x.png",
                          "http:example.com",
                          "http:/example.com",
                          "http://",
                          "http:///x",
                          "http://:80/",
                          "http://user@example.com/",
                          "http://user:pw@example.com/",
                          "http://example.com@evil.com/",
                          "http://exa mple.com/",
                          "http://example.com/a b",
                          "http://example.com\\@evil.com/",
                          "http://ex%61mple.com/",
                          "http://example.com:0/",
                          "http://example.com:65536/",
                          "http://example.com:99999999/",
                          "http://example.com:/",
                          "http://example.com:8o/",
                          "http://[::1/",
                          "http://[::1]x/",
                          "http://[fe80::1%25eth0]/",
                          "http://[zz::1]/",
                          "http://a..b/",
                          "http://.a/",
                          "http://exa\xc3\xa9mple.com/",
                          "http://example.com/\x01",
                          "",
                          "http://a:1:2/"}) {
    EXPECT_THROW(parse_url(bad), InvalidArgument) << bad;
  }
  try {
    parse_url("file:///etc/passwd");
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("scheme 'file' is not allowed"), std::string::npos) << e.what();
  }
  try {
    parse_url("http://u:p@example.com/");
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("user information"), std::string::npos) << e.what();
  }
  const std::string longest = "http://example.com/" + std::string(kMaxUrlLength - 19, 'a');
  EXPECT_NO_THROW(parse_url(longest));
  EXPECT_THROW(parse_url(longest + "a"), InvalidArgument);
}

TEST(UrlParse, ResolvesRedirectLocations) {
  const Url base = parse_url("http://example.com:8080/dir/img.png?x=1");
  EXPECT_EQ(resolve_location(base, "https://other.org/a"), "https://other.org/a");
  EXPECT_EQ(resolve_location(base, "file:///etc/passwd"), "file:///etc/passwd");  // refused when parsed
  EXPECT_EQ(resolve_location(base, "//cdn.example.net/p"), "http://cdn.example.net/p");
  EXPECT_EQ(resolve_location(base, "/root.png"), "http://example.com:8080/root.png");
  EXPECT_EQ(resolve_location(base, "other.png"), "http://example.com:8080/dir/other.png");
  EXPECT_EQ(resolve_location(base, "?y=2"), "http://example.com:8080/dir/img.png?y=2");
  EXPECT_EQ(resolve_location(base, "/a#frag"), "http://example.com:8080/a");
}

TEST(AddressGuard, BlocksNonPublicIPv4) {
  const std::map<std::string, std::string> cases = {
      {"127.0.0.1", "loopback"},         {"127.255.1.2", "loopback"},      {"10.1.2.3", "private"},
      {"172.16.0.1", "private"},         {"172.31.255.255", "private"},    {"192.168.1.1", "private"},
      {"169.254.169.254", "link-local"}, {"169.254.0.1", "link-local"},    {"0.0.0.0", "unspecified"},
      {"0.1.2.3", "this network"},       {"100.64.0.1", "carrier-grade"},  {"100.127.255.254", "carrier-grade"},
      {"224.0.0.1", "multicast"},        {"239.255.255.250", "multicast"}, {"255.255.255.255", "broadcast"},
      {"240.0.0.1", "reserved"},         {"192.0.0.170", "reserved"},      {"198.18.0.1", "benchmarking"},
      {"192.0.2.1", "documentation"},    {"203.0.113.5", "documentation"}, {"198.51.100.7", "documentation"},
  };
  for (const auto& [addr, why] : cases) {
    const std::string r = blocked_address_reason(ip(addr.c_str()));
    EXPECT_NE(r.find(why), std::string::npos) << addr << " -> '" << r << "'";
  }
  for (const char* pub : {"8.8.8.8", "1.1.1.1", "93.184.216.34", "172.15.255.255", "172.32.0.1", "100.63.255.255",
                          "100.128.0.1", "169.253.1.1", "11.0.0.1", "223.255.255.255", "192.169.0.1"})
    EXPECT_EQ(blocked_address_reason(ip(pub)), "") << pub;
}

TEST(AddressGuard, BlocksNonPublicIPv6AndEmbeddedIPv4) {
  const std::map<std::string, std::string> cases = {
      {"::1", "loopback"},
      {"::", "unspecified"},
      {"fe80::1", "link-local"},
      {"febf::1", "link-local"},
      {"fc00::1", "unique local"},
      {"fd12:3456::1", "unique local"},
      {"ff02::1", "multicast"},
      {"fec0::1", "site-local"},
      {"::ffff:127.0.0.1", "IPv4-mapped loopback"},
      {"::ffff:10.0.0.1", "IPv4-mapped private"},
      {"::ffff:169.254.169.254", "IPv4-mapped link-local"},
      {"::ffff:0.0.0.0", "IPv4-mapped unspecified"},
      {"64:ff9b::7f00:1", "NAT64 of loopback"},
      {"64:ff9b::a9fe:a9fe", "NAT64 of link-local"},
      {"64:ff9b::c0a8:0101", "NAT64 of private"},
      {"2002:7f00:1::", "6to4 of loopback"},
      {"2002:a00:1::1", "6to4 of private"},
      {"::127.0.0.1", "IPv4-compatible"},
      {"2001:db8::1", "documentation"},
      {"2001::1", "Teredo"},
      {"100::1", "not global unicast"},
      {"64:ff9b:1::1", "not global unicast"},
      {"3fff::1", "documentation"},
  };
  for (const auto& [addr, why] : cases) {
    const std::string r = blocked_address_reason(ip(addr.c_str()));
    EXPECT_NE(r.find(why), std::string::npos) << addr << " -> '" << r << "'";
  }
  for (const char* pub :
       {"2606:4700:4700::1111", "2a00:1450:4001:82a::200e", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"})
    EXPECT_EQ(blocked_address_reason(ip(pub)), "") << pub;
}

TEST(AddressGuard, BlockedNames) {
  for (const char* n : {"localhost", "LOCALHOST", "localhost.", "foo.localhost", "metadata.google.internal",
                        "metadata.google.internal.", "instance-data", "metadata"})
    EXPECT_TRUE(is_blocked_host_name(n)) << n;
  for (const char* n : {"example.com", "localhost.example.com", "notlocalhost", "metadata.example.com"})
    EXPECT_FALSE(is_blocked_host_name(n)) << n;
}

// A resolver from a table, counting lookups (no DNS in tests).
struct FakeDns {
  std::map<std::string, std::vector<std::string>> table;
  std::shared_ptr<std::atomic<int>> lookups = std::make_shared<std::atomic<int>>(0);
  Resolver resolver() const {
    return [t = table, n = lookups](const std::string& host) {
      ++*n;
      auto it = t.find(host);
      if (it == t.end()) throw FetchFailed("cannot resolve host '" + host + "'");
      std::vector<IpAddress> out;
      for (const std::string& a : it->second) out.push_back(*IpAddress::parse(a));
      return out;
    };
  }
};

TEST(AddressGuard, InjectedResolver) {
  FakeDns dns;
  dns.table = {{"public.example", {"93.184.216.34"}},
               {"intranet.example", {"10.0.0.7"}},
               {"mixed.example", {"93.184.216.34", "127.0.0.1"}},
               {"v6.example", {"2606:4700:4700::1111"}},
               {"v6local.example", {"2606:4700:4700::1111", "fd00::1"}},
               {"mapped.example", {"::ffff:192.168.0.10"}},
               {"nat64.example", {"64:ff9b::a9fe:a9fe"}},
               {"meta.example", {"169.254.169.254"}}};
  FetchOptions o;
  o.resolve = dns.resolver();
  VettedUrl v = vet_url("http://public.example/x.png", o);
  ASSERT_EQ(v.addresses.size(), 1u);
  EXPECT_EQ(v.addresses[0].str(), "93.184.216.34");
  EXPECT_EQ(vet_url("https://v6.example/", o).addresses[0].str(), "2606:4700:4700::1111");
  for (const char* refused : {"http://intranet.example/", "http://mixed.example/", "http://v6local.example/",
                              "http://mapped.example/", "http://nat64.example/", "http://meta.example/latest/"})
    EXPECT_THROW(vet_url(refused, o), UrlRefused) << refused;
  try {
    vet_url("http://mixed.example/", o);
  } catch (const UrlRefused& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("loopback"), std::string::npos) << e.what();
  }
  // IP literals and refused names never reach the resolver.
  const int before = *dns.lookups;
  for (const char* refused :
       {"http://127.0.0.1/", "http://[::1]:8080/", "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/", "http://localhost:7860/", "http://metadata.google.internal/", "http://0.0.0.0/",
        "http://[::]/", "http://[fe80::1]/"})
    EXPECT_THROW(vet_url(refused, o), UrlRefused) << refused;
  EXPECT_EQ(*dns.lookups, before);
  EXPECT_THROW(vet_url("http://nxdomain.example/", o), FetchFailed);
  EXPECT_THROW(vet_url("gopher://public.example/", o), InvalidArgument);
  EXPECT_EQ(*dns.lookups, before + 1);
}

TEST(AddressGuard, TestHostExemptsExactlyOneHostAndPort) {
  FakeDns dns;
  dns.table = {{"img.test", {"127.0.0.1"}}};
  FetchOptions o;
  o.resolve = dns.resolver();
  o.allow_test_host = "img.test:8080";
  EXPECT_NO_THROW(vet_url("http://img.test:8080/a.png", o));
  EXPECT_THROW(vet_url("http://img.test:8081/a.png", o), UrlRefused);
  EXPECT_THROW(vet_url("http://127.0.0.1:8080/a.png", o), UrlRefused);
  o.allow_test_host = "127.0.0.1:9000";
  EXPECT_NO_THROW(vet_url("http://127.0.0.1:9000/", o));
  EXPECT_THROW(vet_url("http://127.0.0.1:9001/", o), UrlRefused);
  EXPECT_THROW(vet_url("http://localhost:9000/", o), UrlRefused);
  o.allow_test_host = "img.test:80";  // the default port, left out of the URL
  EXPECT_NO_THROW(vet_url("http://img.test/", o));
}

// ---- the guarded GET against a loopback server ----

std::string tiny_png() {
  const uint8_t px[3 * 4] = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120};
  const auto v = encode_png(px, 2, 2, 3, {});
  return std::string(v.begin(), v.end());
}

class LocalServer {
 public:
  explicit LocalServer(std::function<void(httplib::Server&)> routes, const char* address = "127.0.0.1") {
    routes(srv_);
    srv_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response&) {
      ++hits;
      host_header = req.get_header_value("Host");
      return httplib::Server::HandlerResponse::Unhandled;
    });
    port = srv_.bind_to_any_port(address);
    if (port < 0) return;  // no such address here (IPv6)
    thread_ = std::thread([this] { srv_.listen_after_bind(); });
    while (!srv_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~LocalServer() {
    if (!thread_.joinable()) return;
    srv_.stop();
    thread_.join();
  }
  int port = 0;
  std::atomic<int> hits{0};
  std::string host_header;

 private:
  httplib::Server srv_;
  std::thread thread_;
};

TEST(GuardedFetch, ConnectsToTheVettedAddressWithTheOriginalHost) {
  LocalServer other([](httplib::Server& s) {
    s.Get("/secret", [](const httplib::Request&, httplib::Response& res) { res.set_content("secret", "text/plain"); });
  });
  const std::string png = tiny_png();
  const int other_port = other.port;
  LocalServer srv([&](httplib::Server& s) {
    s.Get("/a.png", [&](const httplib::Request&, httplib::Response& res) { res.set_content(png, "image/png"); });
    s.Get("/moved", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/a.png"); });
    s.Get("/escape", [=](const httplib::Request&, httplib::Response& res) {
      res.set_redirect("http://127.0.0.1:" + std::to_string(other_port) + "/secret");
    });
    s.Get("/file", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("file:///etc/passwd"); });
    s.Get("/loop", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/loop"); });
    s.Get("/missing", [](const httplib::Request&, httplib::Response& res) { res.status = 404; });
    s.Get("/big", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(5000, 'x'), "application/octet-stream");
    });
    s.Get("/stream", [](const httplib::Request&, httplib::Response& res) {  // no Content-Length
      res.set_chunked_content_provider("application/octet-stream", [](size_t, httplib::DataSink& sink) {
        const std::string chunk(1000, 'y');
        return sink.write(chunk.data(), chunk.size());
      });
    });
    s.Get("/slow", [](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider("image/png", [](size_t off, httplib::DataSink& sink) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a trickle, never finishing
        return off < 100000 && sink.write("x", 1);
      });
    });
  });
  FakeDns dns;
  dns.table = {{"img.test", {"127.0.0.1"}}};
  FetchOptions o;
  o.resolve = dns.resolver();
  o.allow_test_host = "img.test:" + std::to_string(srv.port);
  o.max_bytes = 4096;
  o.timeout = std::chrono::milliseconds(800);
  const std::string base = "http://img.test:" + std::to_string(srv.port);

  FetchResult r = fetch_url(base + "/a.png", o);
  EXPECT_EQ(r.body, png);
  EXPECT_EQ(r.content_type, "image/png");
  EXPECT_EQ(srv.host_header, "img.test:" + std::to_string(srv.port));  // the name, though we dialed the IP
  EXPECT_EQ(*dns.lookups, 1);

  r = fetch_url(base + "/moved", o);
  EXPECT_EQ(r.body, png);
  EXPECT_EQ(r.final_url, base + "/a.png");
  EXPECT_EQ(*dns.lookups, 3);  // every hop is checked again

  EXPECT_THROW(fetch_url(base + "/escape", o), UrlRefused);
  EXPECT_EQ(other.hits, 0);
  EXPECT_THROW(fetch_url(base + "/file", o), UrlRefused);
  try {
    fetch_url(base + "/loop", o);
    ADD_FAILURE() << "no throw";
  } catch (const FetchFailed& e) {
    EXPECT_NE(std::string(e.what()).find("more than 5 redirects"), std::string::npos) << e.what();
  }
  try {
    fetch_url(base + "/missing", o);
    ADD_FAILURE() << "no throw";
  } catch (const FetchFailed& e) {
    EXPECT_NE(std::string(e.what()).find("404"), std::string::npos) << e.what();
  }
  EXPECT_THROW(fetch_url(base + "/big", o), FetchFailed);
  EXPECT_THROW(fetch_url(base + "/stream", o), FetchFailed);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    fetch_url(base + "/slow", o);
    ADD_FAILURE() << "no throw";
  } catch (const FetchFailed& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST(GuardedFetch, TriesTheNextVettedAddressAndSpeaksIPv6) {
  const std::string png = tiny_png();
  LocalServer v4([&](httplib::Server& s) {
    s.Get("/a.png", [&](const httplib::Request&, httplib::Response& res) { res.set_content(png, "image/png"); });
  });
  FakeDns dns;
  // 127.0.0.2 is loopback too, but nothing listens there on this port: the fetch moves on.
  dns.table = {{"two.test", {"127.0.0.2", "127.0.0.1"}}, {"six.test", {"::1"}}};
  FetchOptions o;
  o.resolve = dns.resolver();
  o.allow_test_host = "two.test:" + std::to_string(v4.port);
  EXPECT_EQ(fetch_url("http://two.test:" + std::to_string(v4.port) + "/a.png", o).body, png);

  std::unique_ptr<LocalServer> v6;
  try {
    v6 = std::make_unique<LocalServer>(
        [&](httplib::Server& s) {
          s.Get("/a.png", [&](const httplib::Request&, httplib::Response& res) { res.set_content(png, "image/png"); });
        },
        "::1");
  } catch (...) {
  }
  if (!v6 || v6->port <= 0) GTEST_SKIP() << "no IPv6 loopback here";
  o.allow_test_host = "six.test:" + std::to_string(v6->port);
  EXPECT_EQ(fetch_url("http://six.test:" + std::to_string(v6->port) + "/a.png", o).body, png);
  EXPECT_EQ(v6->host_header, "six.test:" + std::to_string(v6->port));
  o.allow_test_host = "[::1]:" + std::to_string(v6->port);
  EXPECT_EQ(fetch_url("http://[::1]:" + std::to_string(v6->port) + "/a.png", o).body, png);
  EXPECT_EQ(v6->host_header, "[::1]:" + std::to_string(v6->port));
}

}  // namespace
}  // namespace sdserve::net

namespace sdserve::server {
namespace {

using json = nlohmann::json;

TEST(UrlFetchRequest, FieldsAndErrorMapping) {
  const RequestLimits lim;
  const std::string png = net::tiny_png();
  std::vector<std::string> asked;
  const UrlFetcher fake = [&](const std::string& url) {
    asked.push_back(url);
    if (url.find("refused") != std::string::npos) throw net::UrlRefused("refused by the guard");
    if (url.find("fail") != std::string::npos) throw net::FetchFailed("HTTP status 500 from x");
    if (url.find("text") != std::string::npos) return std::string("hello, not an image");
    return png;
  };
  auto p = parse_generate_request(
      json::parse(R"({"prompt": "p", "url": "http://x/a.png", "width": 64, "height": 64, "steps": 2})"), lim, fake);
  EXPECT_EQ(p.type, "img2img");
  EXPECT_EQ(asked, std::vector<std::string>{"http://x/a.png"});
  p = parse_generate_request(json::parse(R"({"prompt": "p", "init_image_url": "http://x/a.png",
      "mask_url": "http://x/m.png", "width": 64, "height": 64, "steps": 2})"),
                             lim, fake);
  EXPECT_EQ(p.type, "img2img");
  EXPECT_NE(p.req.mask, nullptr);

  auto error_of = [&](const char* body, const UrlFetcher& f) {
    try {
      parse_generate_request(json::parse(body), lim, f);
    } catch (const std::exception& e) {
      return http_error(e);
    }
    return HttpError{200, "", ""};
  };
  HttpError e = error_of(R"({"prompt": "p", "url": "http://x/a.png"})", {});
  EXPECT_EQ(e.status, 403);
  EXPECT_EQ(e.error, "url_fetch_disabled");
  EXPECT_NE(e.detail.find("--allow-url-fetch"), std::string::npos) << e.detail;
  e = error_of(R"({"prompt": "p", "url": "http://x/refused"})", fake);
  EXPECT_EQ(e.status, 403);
  EXPECT_EQ(e.error, "url_refused");
  EXPECT_NE(e.detail.find("field 'url'"), std::string::npos) << e.detail;
  e = error_of(R"({"prompt": "p", "init_image_url": "http://x/fail"})", fake);
  EXPECT_EQ(e.status, 422);
  EXPECT_EQ(e.error, "url_fetch_failed");
  EXPECT_NE(e.detail.find("field 'init_image_url'"), std::string::npos) << e.detail;
  e = error_of(R"({"prompt": "p", "url": "http://x/text"})", fake);
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.detail.find("not a usable image"), std::string::npos) << e.detail;
  e = error_of(R"({"prompt": "p", "mask_url": "http://x/m.png"})", fake);
  EXPECT_EQ(e.status, 400);  // a mask needs an init image
  e = error_of(R"({"prompt": "p", "url": 5})", fake);
  EXPECT_EQ(e.status, 400);
  // Cheap checks run before any download.
  asked.clear();
  e = error_of(R"({"url": "http://x/a.png"})", fake);
  EXPECT_EQ(e.status, 400);
  e = error_of(R"({"prompt": "p", "url": "http://x/a.png", "steps": 100000})", fake);
  EXPECT_EQ(e.status, 400);
  EXPECT_TRUE(asked.empty());
}

}  // namespace
}  // namespace sdserve::server
