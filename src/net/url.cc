#include "net/url.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace sdserve::net {

namespace {

[[noreturn]] void bad(const std::string& what) { throw InvalidArgument("URL " + what); }

char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The scheme of `s` (letters, digits, + - .; starting with a letter) when it starts with one.
std::optional<std::string> scheme_of(std::string_view s) {
  if (s.empty() || !is_alpha(s[0])) return std::nullopt;
  for (size_t i = 1; i < s.size() && i < 32; ++i) {
    const char c = s[i];
    if (c == ':') return to_lower(s.substr(0, i));
    if (!is_alpha(c) && !is_digit(c) && c != '+' && c != '-' && c != '.') return std::nullopt;
  }
  return std::nullopt;
}

// A shown piece of the URL: short and printable (the URL itself may be hostile).
std::string shown(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 64) out += "...";
  return out;
}

std::string blocked_v4_reason(const uint8_t* b) {
  const uint8_t a = b[0], c = b[1];
  if (a == 0) return b[1] == 0 && b[2] == 0 && b[3] == 0 ? "unspecified (0.0.0.0)" : "'this network' (0.0.0.0/8)";
  if (a == 10) return "private (10.0.0.0/8)";
  if (a == 100 && (c & 0xc0) == 64) return "carrier-grade NAT (100.64.0.0/10)";
  if (a == 127) return "loopback (127.0.0.0/8)";
  if (a == 169 && c == 254) return "link-local (169.254.0.0/16, cloud metadata)";
  if (a == 172 && (c & 0xf0) == 16) return "private (172.16.0.0/12)";
  if (a == 192 && c == 0 && b[2] == 0) return "reserved (192.0.0.0/24)";
  if (a == 192 && c == 0 && b[2] == 2) return "documentation (192.0.2.0/24)";
  if (a == 192 && c == 88 && b[2] == 99) return "reserved (192.88.99.0/24, 6to4 relay)";
  if (a == 192 && c == 168) return "private (192.168.0.0/16)";
  if (a == 198 && (c & 0xfe) == 18) return "benchmarking (198.18.0.0/15)";
  if (a == 198 && c == 51 && b[2] == 100) return "documentation (198.51.100.0/24)";
  if (a == 203 && c == 0 && b[2] == 113) return "documentation (203.0.113.0/24)";
  if ((a & 0xf0) == 224) return "multicast (224.0.0.0/4)";
  if (a == 255 && c == 255 && b[2] == 255 && b[3] == 255) return "broadcast (255.255.255.255)";
  if ((a & 0xf0) == 240) return "reserved (240.0.0.0/4)";
  return "";
}

bool all_zero(const uint8_t* p, size_t n) {
  return std::all_of(p, p + n, [](uint8_t x) { return x == 0; });
}

}  // namespace

std::string Url::authority() const {
  const bool default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
  std::string h = ipv6_literal ? "[" + host + "]" : host;
  return default_port ? h : h + ":" + std::to_string(port);
}

std::string Url::str() const { return scheme + "://" + authority() + target; }

Url parse_url(std::string_view text, size_t max_length) {
  if (text.empty()) bad("is empty");
  if (text.size() > max_length) bad("is longer than " + std::to_string(max_length) + " bytes");
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) bad("holds a space, control or non-ASCII byte (percent-encode it)");
    if (c == '\\') bad("holds a backslash");
  }
  const auto scheme = scheme_of(text);
  if (!scheme) bad("'" + shown(text) + "' is not an absolute http:// or https:// URL");
  if (*scheme != "http" && *scheme != "https")
    bad("scheme '" + shown(*scheme) + "' is not allowed: only http and https URLs are fetched");
  Url u;
  u.scheme = *scheme;
  std::string_view rest = text.substr(scheme->size() + 1);
  if (rest.substr(0, 2) != "//") bad("'" + shown(text) + "' has no '//' after its scheme");
  rest.remove_prefix(2);
  const size_t auth_end = std::min(rest.find_first_of("/?#"), rest.size());
  std::string_view auth = rest.substr(0, auth_end);
  std::string_view tail = rest.substr(auth_end);
  if (auth.find('@') != std::string_view::npos) bad("holds user information (user@host), which is not allowed");
  if (auth.empty()) bad("has no host");

  std::string_view port_text;
  bool has_port = false;
  if (auth[0] == '[') {
    const size_t close = auth.find(']');
    if (close == std::string_view::npos) bad("has an unclosed '[' in its host");
    const std::string inner(auth.substr(1, close - 1));
    if (inner.find('%') != std::string::npos) bad("has an IPv6 zone id, which is not allowed");
    in6_addr a6{};
    if (inet_pton(AF_INET6, inner.c_str(), &a6) != 1) bad("has a malformed IPv6 address '" + shown(inner) + "'");
    u.host = to_lower(inner);
    u.ipv6_literal = true;
    const std::string_view after = auth.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') bad("has characters after its IPv6 address");
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    const size_t colon = auth.find(':');
    std::string_view host = auth.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = auth.substr(colon + 1);
      has_port = true;
    }
    if (host.empty()) bad("has no host");
    if (host.size() > 253) bad("has a host name longer than 253 characters");
    for (char c : host)
      if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.' && c != '_')
        bad("has a character '" + std::string(1, c) + "' that is not allowed in a host name");
    if (host[0] == '.' || host.find("..") != std::string_view::npos) bad("has an empty label in its host name");
    u.host = to_lower(host);
  }
  if (has_port) {
    if (port_text.empty() || port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(), is_digit))
      bad("has a malformed port '" + shown(port_text) + "'");
    const int p = std::stoi(std::string(port_text));
    if (p < 1 || p > 65535) bad("has port " + std::to_string(p) + ", outside 1-65535");
    u.port = uint16_t(p);
  } else {
    u.port = u.scheme == "https" ? 443 : 80;
  }
  const size_t hash = tail.find('#');
  if (hash != std::string_view::npos) tail = tail.substr(0, hash);
  u.target = tail.empty() || tail[0] != '/' ? "/" + std::string(tail) : std::string(tail);
  return u;
}

std::string resolve_location(const Url& base, std::string_view loc) {
  const size_t hash = loc.find('#');
  if (hash != std::string_view::npos) loc = loc.substr(0, hash);
  if (scheme_of(loc)) return std::string(loc);
  const std::string origin = base.scheme + "://" + base.authority();
  if (loc.substr(0, 2) == "//") return base.scheme + ":" + std::string(loc);
  if (!loc.empty() && loc[0] == '/') return origin + std::string(loc);
  const std::string path = base.target.substr(0, base.target.find('?'));
  if (loc.empty()) return origin + base.target;
  if (loc[0] == '?') return origin + path + std::string(loc);
  return origin + path.substr(0, path.rfind('/') + 1) + std::string(loc);
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  const std::string s(text);
  IpAddress a;
  if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET;
    return a;
  }
  if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET6;
    return a;
  }
  return std::nullopt;
}

IpAddress IpAddress::v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  IpAddress ip;
  ip.family = AF_INET;
  ip.bytes[0] = a, ip.bytes[1] = b, ip.bytes[2] = c, ip.bytes[3] = d;
  return ip;
}

std::string IpAddress::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (!inet_ntop(family == AF_INET ? AF_INET : AF_INET6, bytes.data(), buf, sizeof buf)) return "?";
  return buf;
}

std::string blocked_address_reason(const IpAddress& ip) {
  const uint8_t* b = ip.bytes.data();
  if (ip.family == AF_INET) return blocked_v4_reason(b);
  if (ip.family != AF_INET6) return "not an IP address";
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (std::memcmp(b, mapped, 12) == 0) {
    const std::string r = blocked_v4_reason(b + 12);
    return r.empty() ? "" : "IPv4-mapped " + r;
  }
  if (std::memcmp(b, nat64, 12) == 0) {
    const std::string r = blocked_v4_reason(b + 12);
    return r.empty() ? "" : "NAT64 of " + r;
  }
  if (all_zero(b, 15) && b[15] == 0) return "unspecified (::)";
  if (all_zero(b, 15) && b[15] == 1) return "loopback (::1)";
  if (all_zero(b, 12)) return "IPv4-compatible (::/96, deprecated)";
  if (b[0] == 0x20 && b[1] == 0x02) {  // 6to4: the IPv4 address in bits 16-47
    const std::string r = blocked_v4_reason(b + 2);
    return r.empty() ? "" : "6to4 of " + r;
  }
  if ((b[0] & 0xfe) == 0xfc) return "unique local (fc00::/7)";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "link-local (fe80::/10)";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return "site-local (fec0::/10, deprecated)";
  if (b[0] == 0xff) return "multicast (ff00::/8)";
  if ((b[0] & 0xe0) != 0x20) return "not global unicast (outside 2000::/3)";
  if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return "documentation (2001:db8::/32)";
  if (b[0] == 0x20 && b[1] == 0x01 && (b[2] & 0xfe) == 0) return "IETF special-purpose (2001::/23, Teredo)";
  if (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0) return "documentation (3fff::/20)";
  return "";
}

bool is_blocked_host_name(std::string_view host) {
  std::string h = to_lower(host);
  while (!h.empty() && h.back() == '.') h.pop_back();
  if (h == "localhost" || (h.size() > 10 && h.compare(h.size() - 10, 10, ".localhost") == 0)) return true;
  static const char* const names[] = {"metadata",      "metadata.google.internal",   "metadata.goog",
                                      "instance-data", "instance-data.ec2.internal", "metadata.azure.internal"};
  for (const char* n : names)
    if (h == n) return true;
  return false;
}

}  // namespace sdserve::net
