// libFuzzer target: the URL parser behind init images by URL (net/url.h) on arbitrary bytes, and
// redirect resolution against a parsed URL. What parses must be an http(s) URL with a non-empty
// host, a target starting with '/', printable ASCII only (no fragment), and print back to a URL that parses to
// the same thing; what fails must be an InvalidArgument. The address classification must give an
// answer for whatever numeric address the input spells.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/error.h"
#include "net/url.h"

namespace {

void check(const sdserve::net::Url& u) {
  if (u.scheme != "http" && u.scheme != "https") std::abort();
  if (u.host.empty() || u.port == 0 || u.target.empty() || u.target[0] != '/') std::abort();
  for (char c : u.str())
    if (c <= 0x20 || c >= 0x7f || c == '#' || c == '\\') std::abort();
  const sdserve::net::Url again = sdserve::net::parse_url(u.str());
  if (again.str() != u.str() || again.host != u.host || again.port != u.port || again.target != u.target) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  // The first line is a URL, the rest a Location header to resolve against it.
  const size_t nl = input.find('\n');
  const std::string_view first = input.substr(0, nl);
  try {
    const sdserve::net::Url u = sdserve::net::parse_url(first);
    check(u);
    if (nl != std::string_view::npos) {
      const std::string next = sdserve::net::resolve_location(u, input.substr(nl + 1));
      try {
        check(sdserve::net::parse_url(next));
      } catch (const sdserve::InvalidArgument&) {
      }
    }
  } catch (const sdserve::InvalidArgument&) {
    // malformed or refused: a clear error, never a crash
  }
  if (auto a = sdserve::net::IpAddress::parse(first)) {
    (void)sdserve::net::blocked_address_reason(*a);
    if (sdserve::net::IpAddress::parse(a->str()) != a) std::abort();
  }
  (void)sdserve::net::is_blocked_host_name(first);
  return 0;
}
