// A guarded HTTP GET for URLs that come from requests (docs/API.md, "Init images by URL"): only
// http/https, every address the host resolves to must be public, the connection goes to the
// address that was checked (no second lookup: no DNS rebinding), redirects are followed by hand
// and checked again, and time and size are capped.
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "net/url.h"

namespace sdserve::net {

// The guard refused the URL (a blocked address or name), on the first hop or after a redirect.
// HTTP 403 "url_refused".
struct UrlRefused : InvalidArgument {
  explicit UrlRefused(const std::string& m) : InvalidArgument(m) {}
};
// The fetch was allowed but failed: lookup or connection failure, timeout, a non-2xx status,
// too many redirects, a body over the cap, TLS verification. HTTP 422 "url_fetch_failed".
struct FetchFailed : InvalidArgument {
  explicit FetchFailed(const std::string& m) : InvalidArgument(m) {}
};
// A request gave a URL and this server does not fetch URLs. HTTP 403 "url_fetch_disabled".
struct UrlFetchDisabled : InvalidArgument {
  explicit UrlFetchDisabled(const std::string& m) : InvalidArgument(m) {}
};

// Host name -> all its addresses. Throws FetchFailed when the name does not resolve.
using Resolver = std::function<std::vector<IpAddress>(const std::string& host)>;
// getaddrinfo, every address family, every address.
std::vector<IpAddress> system_resolve(const std::string& host);

struct FetchOptions {
  std::chrono::milliseconds timeout{10000};  // the whole fetch: connects, redirects, body (not getaddrinfo)
  size_t max_bytes = size_t(32) << 20;       // larger bodies fail as soon as they pass this
  int max_redirects = 5;
  size_t max_url_length = kMaxUrlLength;
  Resolver resolve;  // empty: system_resolve (tests inject their own)
  // Tests only: "host:port" (as in the URL, "[::1]:8080" for IPv6) whose addresses are not
  // checked, so a test server on loopback can stand for a public host. Other ports stay refused.
  std::string allow_test_host;
};

// A URL checked by the guard: the parsed URL and its vetted addresses, in lookup order.
struct VettedUrl {
  Url url;
  std::vector<IpAddress> addresses;
};

// Parses `url` (InvalidArgument when malformed or not http/https), refuses blocked names
// (UrlRefused), resolves the host (an IP literal is its own address) and refuses it if ANY of
// its addresses is blocked (UrlRefused naming the address and why).
VettedUrl vet_url(const std::string& url, const FetchOptions& opt);

struct FetchResult {
  std::string body;
  std::string final_url;  // after redirects
  std::string content_type;
};

// GET `url` under the guard and the options' limits. Throws as vet_url for every hop, and
// FetchFailed for the rest.
FetchResult fetch_url(const std::string& url, const FetchOptions& opt);

}  // namespace sdserve::net
