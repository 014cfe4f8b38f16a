// URLs a request may ask the server to fetch, and which addresses they may reach (docs/API.md,
// "Init images by URL"). Pure functions, no I/O: the guarded GET is in net/fetch.h.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sdserve::net {

inline constexpr size_t kMaxUrlLength = 2048;

// An absolute http or https URL, parsed strictly.
struct Url {
  std::string scheme;         // "http" or "https"
  std::string host;           // lower case; an IPv6 literal without its brackets
  bool ipv6_literal = false;  // the host was written [..]
  uint16_t port = 0;          // as written, or 80/443
  std::string target;         // path and query as written, "/" at least; the fragment is dropped

  // "host" or "host:port" (the port only when not the scheme's default), brackets for IPv6.
  std::string authority() const;
  std::string str() const;  // scheme://authority target
};

// Parses `text` as an absolute http(s) URL. Throws InvalidArgument saying what is wrong: longer
// than max_length bytes, a byte outside printable ASCII (spaces included: percent-encode them),
// another scheme (file:, gopher:, ftp:, data:, ...), user information ("user@host"), an empty or
// malformed host (percent signs, IPv6 zone ids), a port outside 1-65535.
Url parse_url(std::string_view text, size_t max_length = kMaxUrlLength);

// A redirect's Location resolved against the URL that answered it (absolute, "//host/p",
// "/p", "?q", or relative to the base's folder). The result is parsed again by the caller.
std::string resolve_location(const Url& base, std::string_view location);

// A numeric IPv4 or IPv6 address.
struct IpAddress {
  int family = 0;                   // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};  // IPv4 in the first 4
  // Only the canonical numeric forms inet_pton accepts ("1.2.3.4", "::1"); nullopt otherwise.
  static std::optional<IpAddress> parse(std::string_view text);
  static IpAddress v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d);
  std::string str() const;  // inet_ntop's form, without brackets
  bool operator==(const IpAddress&) const = default;
};

// Why the server must not connect to `a` ("loopback", "private (RFC 1918)", "link-local (cloud
// metadata)", "IPv4-mapped loopback", ...), or "" for a public unicast address. IPv4: 0/8,
// 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.0.0/24, 192.0.2/24, 192.88.99/24,
// 192.168/16, 198.18/15, 198.51.100/24, 203.0.113/24, 224/4 and 240/4 (broadcast included).
// IPv6: only global unicast (2000::/3) outside its documentation, Teredo and IETF blocks; the
// IPv4 inside ::ffff:0:0/96 (mapped), 64:ff9b::/96 (NAT64) and 2002::/16 (6to4) is judged as IPv4.
std::string blocked_address_reason(const IpAddress& a);

// Host names refused before any lookup: localhost and *.localhost, and cloud metadata names
// (metadata.google.internal, instance-data, ...). `host` as in Url::host.
bool is_blocked_host_name(std::string_view host);

}  // namespace sdserve::net
