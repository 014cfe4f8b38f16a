#include "net/fetch.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include <httplib.h>

namespace sdserve::net {

namespace {

using Clock = std::chrono::steady_clock;

std::string seconds_text(std::chrono::milliseconds ms) {
  char b[32];
  std::snprintf(b, sizeof b, "%g s", double(ms.count()) / 1000.0);
  return b;
}

// Calls ClientImpl::stop() at the deadline, so that a server that trickles bytes (each read
// within the read timeout) cannot hold the request past it.
class Watchdog {
 public:
  Watchdog(httplib::ClientImpl& cli, Clock::time_point deadline)
      : thread_([this, &cli, deadline] {
          std::unique_lock<std::mutex> lk(mu_);
          if (!cv_.wait_until(lk, deadline, [this] { return done_; })) {
            fired_ = true;
            cli.stop();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  bool fired() {
    std::lock_guard<std::mutex> lk(mu_);
    return fired_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false, fired_ = false;
  std::thread thread_;
};

struct Hop {
  int status = 0;
  std::string location, content_type, body;
};

std::string describe(const Url& u, const IpAddress& a) {
  return u.authority() + " (" + (a.family == AF_INET6 ? "[" + a.str() + "]" : a.str()) + ":" + std::to_string(u.port) +
         ")";
}

// One GET to one vetted address. Returns false when the connection could not be made (the caller
// tries the next address); throws FetchFailed for everything after a connection.
bool get_once(const VettedUrl& v, const IpAddress& addr, const FetchOptions& opt, Clock::time_point deadline,
              Hop& hop) {
  const Url& u = v.url;
  const auto remaining = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now());
  if (remaining.count() <= 0) throw FetchFailed("timed out after " + seconds_text(opt.timeout));
  std::unique_ptr<httplib::ClientImpl> cli;
  if (u.scheme == "https")
    cli = std::make_unique<httplib::SSLClient>(u.host, u.port);  // SNI and certificate checks: u.host
  else
    cli = std::make_unique<httplib::ClientImpl>(u.host, u.port);
  // The connection goes to the address that was checked, never to a second lookup of the name.
  cli->set_hostname_addr_map({{u.host, addr.str()}});
  cli->set_follow_location(false);
  cli->set_keep_alive(false);
  cli->set_url_encode(false);  // the target is sent as written (parse_url allows printable ASCII only)
  const time_t sec = time_t(remaining.count() / 1000000), usec = time_t(remaining.count() % 1000000);
  cli->set_connection_timeout(sec, usec);
  cli->set_read_timeout(sec, usec);
  cli->set_write_timeout(sec, usec);
  const httplib::Headers headers = {{"Host", u.authority()},
                                    {"Accept", "image/png,image/jpeg,image/webp,image/*;q=0.8,*/*;q=0.5"},
                                    {"Accept-Encoding", "identity"},
                                    {"User-Agent", "sdserve-url-fetch"}};
  bool too_big = false, got_response = false, late = false;
  hop = Hop{};
  httplib::Result res = [&] {
    Watchdog dog(*cli, deadline);
    auto r = cli->Get(
        u.target, headers,
        [&](const httplib::Response& r) {
          got_response = true;
          hop.status = r.status;
          hop.location = r.get_header_value("Location");
          hop.content_type = r.get_header_value("Content-Type");
          if (r.status < 200 || r.status > 299) return false;  // the body is not wanted
          if (r.has_header("Content-Length")) {
            const std::string cl = r.get_header_value("Content-Length");
            if (cl.size() > 19 || std::strtoull(cl.c_str(), nullptr, 10) > opt.max_bytes) {
              too_big = true;
              return false;
            }
          }
          return true;
        },
        [&](const char* data, size_t n) {
          if (Clock::now() >= deadline) {
            late = true;
            return false;
          }
          if (n > opt.max_bytes - hop.body.size()) {
            too_big = true;
            return false;
          }
          hop.body.append(data, n);
          return true;
        });
    late |= dog.fired();
    return r;
  }();
  if (too_big)
    throw FetchFailed("the response from " + u.authority() + " is larger than " + std::to_string(opt.max_bytes) +
                      " bytes");
  if (res) {
    hop.status = res->status;
    return true;
  }
  if (got_response && (hop.status < 200 || hop.status > 299)) return true;  // we stopped it: a status to report
  if (late || Clock::now() >= deadline) throw FetchFailed("timed out after " + seconds_text(opt.timeout));
  switch (res.error()) {
    case httplib::Error::Connection:
    case httplib::Error::ConnectionTimeout:
      return false;
    case httplib::Error::SSLServerVerification:
      throw FetchFailed("the TLS certificate of " + u.host + " could not be verified");
    case httplib::Error::SSLConnection:
      throw FetchFailed("the TLS handshake with " + describe(u, addr) + " failed");
    default:
      throw FetchFailed("fetching from " + describe(u, addr) + " failed: " + httplib::to_string(res.error()));
  }
}

}  // namespace

std::vector<IpAddress> system_resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &list);
  if (rc != 0) throw FetchFailed("cannot resolve host '" + host + "': " + gai_strerror(rc));
  std::vector<IpAddress> out;
  for (addrinfo* p = list; p; p = p->ai_next) {
    IpAddress a;
    if (p->ai_family == AF_INET) {
      a.family = AF_INET;
      std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in*>(p->ai_addr)->sin_addr, 4);
    } else if (p->ai_family == AF_INET6) {
      a.family = AF_INET6;
      std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in6*>(p->ai_addr)->sin6_addr, 16);
    } else {
      continue;
    }
    bool dup = false;
    for (const IpAddress& b : out) dup |= b == a;
    if (!dup) out.push_back(a);
  }
  ::freeaddrinfo(list);
  if (out.empty()) throw FetchFailed("host '" + host + "' has no IPv4 or IPv6 address");
  return out;
}

VettedUrl vet_url(const std::string& url, const FetchOptions& opt) {
  VettedUrl v{parse_url(url, opt.max_url_length), {}};
  const Url& u = v.url;
  const bool test_host = !opt.allow_test_host.empty() && u.authority() == opt.allow_test_host;
  // authority() leaves out a default port; the flag may still name it.
  const bool test_host_port =
      !opt.allow_test_host.empty() &&
      (u.ipv6_literal ? "[" + u.host + "]" : u.host) + ":" + std::to_string(u.port) == opt.allow_test_host;
  const bool exempt = test_host || test_host_port;
  if (!exempt && is_blocked_host_name(u.host))
    throw UrlRefused("host '" + u.host + "' is not fetched (a local or cloud metadata name)");
  const bool literal = IpAddress::parse(u.host).has_value();
  if (literal) {
    v.addresses.push_back(*IpAddress::parse(u.host));
  } else {
    v.addresses = opt.resolve ? opt.resolve(u.host) : system_resolve(u.host);
    if (v.addresses.empty()) throw FetchFailed("host '" + u.host + "' has no address");
  }
  if (!exempt)
    for (const IpAddress& a : v.addresses) {
      const std::string why = blocked_address_reason(a);
      if (!why.empty())
        throw UrlRefused(
            (literal ? "address " + a.str() + " is a " : "host '" + u.host + "' resolves to " + a.str() + ", a ") +
            why + " address, which this server does not fetch from");
    }
  return v;
}

FetchResult fetch_url(const std::string& url, const FetchOptions& opt) {
  const auto deadline = Clock::now() + opt.timeout;
  std::string current = url;
  for (int redirects = 0;; ++redirects) {
    VettedUrl v;
    try {
      v = vet_url(current, opt);
    } catch (const UrlRefused& e) {
      if (redirects == 0) throw;
      throw UrlRefused("redirected to a refused URL: " + std::string(e.what()));
    } catch (const FetchFailed& e) {
      if (redirects == 0) throw;
      throw FetchFailed("after a redirect: " + std::string(e.what()));
    } catch (const InvalidArgument& e) {
      if (redirects == 0) throw;
      throw UrlRefused("redirected to a refused URL: " + std::string(e.what()));
    }
    Hop hop;
    bool connected = false;
    for (const IpAddress& a : v.addresses)
      if ((connected = get_once(v, a, opt, deadline, hop))) break;
    if (!connected) {
      if (Clock::now() >= deadline) throw FetchFailed("timed out after " + seconds_text(opt.timeout));
      throw FetchFailed("cannot connect to " + describe(v.url, v.addresses.front()));
    }
    if (hop.status == 301 || hop.status == 302 || hop.status == 303 || hop.status == 307 || hop.status == 308) {
      if (redirects >= opt.max_redirects)
        throw FetchFailed("more than " + std::to_string(opt.max_redirects) + " redirects");
      if (hop.location.empty())
        throw FetchFailed("HTTP " + std::to_string(hop.status) + " from " + v.url.authority() + " without a Location");
      current = resolve_location(v.url, hop.location);
      continue;
    }
    if (hop.status < 200 || hop.status > 299)
      throw FetchFailed("HTTP status " + std::to_string(hop.status) + " from " + v.url.authority());
    return {std::move(hop.body), v.url.str(), std::move(hop.content_type)};
  }
}

}  // namespace sdserve::net
