#include "net/download.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "io/sha256.h"

namespace fs = std::filesystem;

namespace sdserve::net {

namespace {

using Clock = std::chrono::steady_clock;

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_hex(const std::string& s) {
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

std::string header(const httplib::Headers& h, const char* name) {
  // httplib's Headers compare names case-insensitively.
  auto it = h.find(name);
  return it == h.end() ? std::string() : it->second;
}

int64_t parse_size(const std::string& s) {
  if (s.empty() || s.size() > 19) return -1;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return -1;
  return int64_t(std::stoull(s));
}

const char* kOfflineHint =
    "check the network (or HF_ENDPOINT), or run with --model demo (a built-in test model) or --model PATH of a "
    "local model";

// One line for a transport failure before any answer came.
std::string connect_failure(const DownloadUrl& u, httplib::Error e) {
  const std::string where = u.host + ":" + std::to_string(u.port);
  if (e == httplib::Error::Connection) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(u.host.c_str(), nullptr, &hints, &res);
    if (res) ::freeaddrinfo(res);
    if (rc != 0) return "cannot resolve host " + u.host + " (" + gai_strerror(rc) + "): " + kOfflineHint;
    return "cannot connect to " + where + " (connection refused or no route): " + kOfflineHint;
  }
  if (e == httplib::Error::ConnectionTimeout) return "timed out connecting to " + where + ": " + kOfflineHint;
  if (e == httplib::Error::SSLConnection || e == httplib::Error::SSLServerVerification ||
      e == httplib::Error::SSLLoadingCerts)
    return "TLS connection to " + where + " failed (" + httplib::to_string(e) +
           "; is the system CA store installed, e.g. the ca-certificates package?)";
  return "request to " + where + " failed (" + httplib::to_string(e) + "): " + kOfflineHint;
}

std::string status_message(int status, const std::string& what, const std::string& error_code) {
  std::string m = what + ": HTTP " + std::to_string(status);
  if (!error_code.empty()) m += " (" + error_code + ")";
  if (status == 401 || status == 403)
    m += ": access denied; for a gated or private Hugging Face repo set HF_TOKEN to an access token that may read it";
  else if (status == 404)
    m += ": not found";
  return m;
}

bool transient_status(int status) { return status == 408 || status == 429 || status >= 500; }

// One GET that follows up to 10 redirects by hand, so that the hub's headers on the redirect (X-Linked-Etag,
// X-Linked-Size: the CDN's answer has neither) are seen, and the token goes to the first host only.
struct Fetch {
  httplib::Error error = httplib::Error::Success;
  bool answered = false;  // a final (non-redirect) status line arrived
  int status = 0;
  httplib::Headers headers;  // of the final answer
  std::string first_etag;    // ETag of the first answer
  std::string linked_etag;   // X-Linked-Etag of any answer
  int64_t linked_size = -1;  // X-Linked-Size of any answer
  std::string error_code;    // X-Error-Code
  DownloadUrl failed_at;     // the hop whose transport failed
};

Fetch fetch(const std::string& url, const std::string& token, const httplib::Headers& extra, int connect_timeout_s,
            int read_timeout_s, const std::function<bool(const Fetch&)>& on_final,
            const std::function<bool(const char*, size_t)>& sink) {
  Fetch f;
  DownloadUrl u = parse_download_url(url);
  const std::string first_origin = u.origin();
  for (int hop = 0; hop <= 10; ++hop) {
    httplib::Client cli(u.origin());
    cli.set_connection_timeout(connect_timeout_s, 0);
    cli.set_read_timeout(read_timeout_s, 0);
    cli.set_follow_location(false);
    httplib::Headers h = extra;
    h.emplace("Accept-Encoding", "identity");  // byte ranges of the stored file, never of a compressed form
    h.emplace("User-Agent", "sdserve");
    if (!token.empty() && u.origin() == first_origin) h.emplace("Authorization", "Bearer " + token);
    bool redirect = false;
    std::string location;
    auto on_response = [&](const httplib::Response& r) {
      if (hop == 0) f.first_etag = header(r.headers, "ETag");
      if (f.linked_etag.empty()) f.linked_etag = header(r.headers, "X-Linked-Etag");
      if (f.linked_size < 0) f.linked_size = parse_size(header(r.headers, "X-Linked-Size"));
      if (f.error_code.empty()) f.error_code = header(r.headers, "X-Error-Code");
      if (r.status >= 300 && r.status < 400 && r.has_header("Location")) {
        redirect = true;
        location = header(r.headers, "Location");
        return true;
      }
      f.answered = true;
      f.status = r.status;
      f.headers = r.headers;
      return on_final(f);
    };
    auto on_body = [&](const char* data, size_t n) { return redirect ? true : sink(data, n); };
    httplib::Result res = cli.Get(u.target, h, on_response, on_body);
    if (redirect && res) {
      u = parse_download_url(resolve_location(u, location));
      continue;
    }
    if (!res || res.error() != httplib::Error::Success) {
      f.error = res.error();
      f.failed_at = u;
    }
    return f;
  }
  throw IoError(parse_download_url(url).display() + ": more than 10 redirects");
}

struct PartFile {
  int fd = -1;
  ~PartFile() {
    if (fd >= 0) ::close(fd);
  }
};

uint64_t file_size_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return 0;
  return uint64_t(st.st_size);
}

std::string hash_file(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(p.string() + ": cannot read back (" + std::strerror(errno) + ")");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      throw IoError(p.string() + ": read failed (" + std::strerror(errno) + ")");
    }
    if (n == 0) break;
    h.update(buf.data(), size_t(n));
  }
  ::close(fd);
  const auto d = h.digest();
  return to_hex(d.data(), d.size());
}

std::string mib(uint64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f MiB", double(b) / (1024.0 * 1024.0));
  return s;
}

}  // namespace

// ---------------------------------------------------------------- URLs

std::string DownloadUrl::origin() const {
  const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return scheme + "://" + h + ":" + std::to_string(port);
}

std::string DownloadUrl::display() const {
  const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  const bool default_port = (scheme == "https" && port == 443) || (scheme == "http" && port == 80);
  std::string path = target.substr(0, target.find('?'));
  return scheme + "://" + h + (default_port ? "" : ":" + std::to_string(port)) + path;
}

DownloadUrl parse_download_url(const std::string& url) {
  DownloadUrl u;
  const size_t sep = url.find("://");
  if (sep == std::string::npos) throw InvalidArgument("'" + url + "' is not a URL (want http:// or https://)");
  u.scheme = lower(url.substr(0, sep));
  if (u.scheme != "http" && u.scheme != "https")
    throw InvalidArgument("unsupported URL scheme '" + u.scheme + "' (want http or https)");
  for (char c : url)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      throw InvalidArgument("URL contains a space or control character");
  const size_t auth_begin = sep + 3;
  const size_t auth_end = url.find_first_of("/?#", auth_begin);
  std::string authority =
      url.substr(auth_begin, auth_end == std::string::npos ? std::string::npos : auth_end - auth_begin);
  if (authority.find('@') != std::string::npos)
    throw InvalidArgument("URLs with user:password@ are not supported; pass a token in HF_TOKEN instead");
  std::string port_str;
  if (!authority.empty() && authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string::npos) throw InvalidArgument("URL has an unterminated IPv6 address");
    u.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') throw InvalidArgument("URL has a bad host");
      port_str = authority.substr(close + 2);
    }
  } else {
    const size_t colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_str = authority.substr(colon + 1);
  }
  if (u.host.empty()) throw InvalidArgument("URL '" + url + "' has no host");
  u.host = lower(u.host);
  u.port = u.scheme == "https" ? 443 : 80;
  if (!port_str.empty()) {
    const int64_t p = parse_size(port_str);
    if (p < 1 || p > 65535) throw InvalidArgument("URL has a bad port '" + port_str + "'");
    u.port = int(p);
  }
  std::string rest = auth_end == std::string::npos ? std::string() : url.substr(auth_end);
  const size_t hash = rest.find('#');
  if (hash != std::string::npos) rest.resize(hash);
  if (rest.empty() || rest[0] != '/') rest = "/" + rest;
  u.target = rest;
  return u;
}

std::string resolve_location(const DownloadUrl& base, const std::string& location) {
  if (location.find("://") != std::string::npos) return location;
  const std::string h = base.host.find(':') != std::string::npos ? "[" + base.host + "]" : base.host;
  if (location.rfind("//", 0) == 0) return base.scheme + ":" + location;
  const std::string origin = base.scheme + "://" + h + ":" + std::to_string(base.port);
  if (!location.empty() && location[0] == '/') return origin + location;
  // Relative to the base path's folder.
  std::string path = base.target.substr(0, base.target.find('?'));
  path = path.substr(0, path.rfind('/') + 1);
  return origin + path + location;
}

std::string url_encode(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += char(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// ---------------------------------------------------------------- resume bookkeeping

bool parse_content_range(const std::string& value, ContentRange& out) {
  std::string v = value;
  while (!v.empty() && v.back() == ' ') v.pop_back();
  if (lower(v.substr(0, 6)) != "bytes ") return false;
  v = v.substr(6);
  const size_t slash = v.find('/');
  if (slash == std::string::npos) return false;
  const std::string range = v.substr(0, slash), total = v.substr(slash + 1);
  out = ContentRange{};
  if (total == "*") {
    out.total = -1;
  } else {
    out.total = parse_size(total);
    if (out.total < 0) return false;
  }
  if (range == "*") {
    out.unsatisfied = true;
    return out.total >= 0;
  }
  const size_t dash = range.find('-');
  if (dash == std::string::npos) return false;
  const int64_t a = parse_size(range.substr(0, dash)), b = parse_size(range.substr(dash + 1));
  if (a < 0 || b < a) return false;
  if (out.total >= 0 && b >= out.total) return false;
  out.first = uint64_t(a);
  out.last = uint64_t(b);
  return true;
}

ResumeAction resume_action(int status, uint64_t offset, const std::string& content_range, int64_t expected_size) {
  if (status == 200) return ResumeAction::Restart;
  if (status == 206) {
    ContentRange cr;
    if (!parse_content_range(content_range, cr) || cr.unsatisfied) return ResumeAction::Fail;
    return cr.first == offset ? ResumeAction::Append : ResumeAction::Restart;
  }
  if (status == 416 && offset > 0) {
    ContentRange cr;
    const int64_t total = parse_content_range(content_range, cr) && cr.total >= 0 ? cr.total : expected_size;
    return total >= 0 && uint64_t(total) == offset ? ResumeAction::Complete : ResumeAction::Discard;
  }
  return ResumeAction::Fail;
}

std::string sha256_from_etag(const std::string& etag) {
  std::string e = etag;
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  if (e.size() != 64 || !is_hex(e)) return "";
  return lower(e);
}

HttpStatusError::HttpStatusError(int status, std::string error_code, const std::string& msg)
    : Error(status == 404                    ? ErrorKind::NotFound
            : status == 401 || status == 403 ? ErrorKind::InvalidArgument
                                             : ErrorKind::Io,
            msg),
      status_(status),
      error_code_(std::move(error_code)) {}

// ---------------------------------------------------------------- downloads

std::string http_get_text(const std::string& url, const std::string& bearer_token, size_t max_bytes,
                          int connect_timeout_s) {
  const DownloadUrl u = parse_download_url(url);
  std::string body;
  bool too_big = false;
  const Fetch f = fetch(
      url, bearer_token, {}, connect_timeout_s, 60, [](const Fetch&) { return true; },
      [&](const char* d, size_t n) {
        if (body.size() + n > max_bytes) return !(too_big = true);
        body.append(d, n);
        return true;
      });
  if (too_big) throw IoError(u.display() + ": answer larger than " + std::to_string(max_bytes) + " bytes");
  if (!f.answered) throw IoError(connect_failure(f.failed_at.host.empty() ? u : f.failed_at, f.error));
  if (f.error != httplib::Error::Success)
    throw IoError(u.display() + ": connection dropped (" + httplib::to_string(f.error) + ")");
  if (f.status != 200)
    throw HttpStatusError(f.status, f.error_code, status_message(f.status, u.display(), f.error_code));
  return body;
}

DownloadResult download_file(const std::string& url, const fs::path& dest, const DownloadOptions& opt) {
  const DownloadUrl u = parse_download_url(url);
  const std::string name = opt.name.empty() ? dest.filename().string() : opt.name;
  std::error_code ec;
  if (dest.has_parent_path()) {
    fs::create_directories(dest.parent_path(), ec);
    if (ec) throw IoError(dest.parent_path().string() + ": cannot create folder (" + ec.message() + ")");
  }
  const fs::path part = dest.string() + ".part";
  PartFile pf;
  pf.fd = ::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (pf.fd < 0) throw IoError(part.string() + ": cannot open (" + std::strerror(errno) + ")");
  if (::flock(pf.fd, LOCK_EX | LOCK_NB) != 0)
    throw ResourceError(part.string() + ": another process is downloading this file; wait for it or stop it");

  DownloadResult result;
  int64_t expected_size = opt.expected_size;
  std::string expected_sha = lower(opt.expected_sha256);
  bool ever_answered = false;
  double backoff = opt.backoff_s;
  std::string last_problem;
  for (int attempt = 1; attempt <= std::max(1, opt.max_attempts); ++attempt) {
    result.attempts = attempt;
    uint64_t offset = file_size_fd(pf.fd);
    if (expected_size >= 0 && offset > uint64_t(expected_size)) {
      if (::ftruncate(pf.fd, 0) != 0) throw IoError(part.string() + ": cannot truncate");
      offset = 0;
    }
    if (offset > 0) result.resumed = true;
    httplib::Headers extra;
    if (offset > 0) extra.emplace("Range", "bytes=" + std::to_string(offset) + "-");

    ResumeAction action = ResumeAction::Fail;
    bool write_failed = false;
    std::string write_error;
    uint64_t pos = offset;
    int64_t total = expected_size;
    const auto t0 = Clock::now();
    auto last_report = Clock::time_point{};
    const uint64_t resumed_from = offset;
    auto report = [&](bool finished) {
      if (!opt.progress) return;
      const auto now = Clock::now();
      if (!finished && now - last_report < std::chrono::milliseconds(100)) return;
      last_report = now;
      DownloadProgress p;
      p.name = name;
      p.done = pos;
      p.total = total;
      p.resumed_from = resumed_from;
      p.seconds = std::chrono::duration<double>(now - t0).count();
      p.finished = finished;
      opt.progress(p);
    };

    const Fetch f = fetch(
        url, opt.bearer_token, extra, opt.connect_timeout_s, opt.read_timeout_s,
        [&](const Fetch& fr) {
          if (fr.linked_size >= 0 && expected_size < 0) total = expected_size = fr.linked_size;
          action = resume_action(fr.status, offset, header(fr.headers, "Content-Range"), expected_size);
          if (action == ResumeAction::Restart) {
            if (::ftruncate(pf.fd, 0) != 0) return false;
            pos = 0;
            if (fr.status == 200 && total < 0) total = parse_size(header(fr.headers, "Content-Length"));
          } else if (action == ResumeAction::Append) {
            ContentRange cr;
            parse_content_range(header(fr.headers, "Content-Range"), cr);
            if (total < 0) total = cr.total;
          }
          if (fr.status == 206 && action == ResumeAction::Restart) {
            // A range that starts elsewhere: only usable from 0.
            ContentRange cr;
            parse_content_range(header(fr.headers, "Content-Range"), cr);
            if (cr.first != 0) {
              action = ResumeAction::Discard;
              return false;
            }
          }
          if (::lseek(pf.fd, off_t(pos), SEEK_SET) < 0) return false;
          return action == ResumeAction::Append || action == ResumeAction::Restart;
        },
        [&](const char* d, size_t n) {
          while (n > 0) {
            const ssize_t w = ::write(pf.fd, d, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
              write_failed = true;
              write_error = std::strerror(errno);
              return false;
            }
            d += w;
            n -= size_t(w);
            pos += uint64_t(w);
          }
          report(false);
          return true;
        });
    if (write_failed) throw IoError(part.string() + ": write failed (" + write_error + ")");
    if (f.answered) ever_answered = true;
    if (!f.answered) {
      // No answer at all: an unreachable host fails at once (offline); a host that answered before is retried.
      if (!ever_answered &&
          (f.error == httplib::Error::Connection || f.error == httplib::Error::ConnectionTimeout ||
           f.error == httplib::Error::SSLConnection || f.error == httplib::Error::SSLServerVerification ||
           f.error == httplib::Error::SSLLoadingCerts))
        throw IoError(connect_failure(f.failed_at.host.empty() ? u : f.failed_at, f.error));
      last_problem = httplib::to_string(f.error);
    } else if (action == ResumeAction::Complete) {
      pos = offset;
    } else if (action == ResumeAction::Discard) {
      if (::ftruncate(pf.fd, 0) != 0) throw IoError(part.string() + ": cannot truncate");
      last_problem = "the server's range did not continue the partial file";
      continue;  // retry at once from 0
    } else if (action == ResumeAction::Fail) {
      if (!transient_status(f.status))
        throw HttpStatusError(f.status, f.error_code,
                              status_message(f.status, name + " (" + u.display() + ")", f.error_code));
      last_problem = "HTTP " + std::to_string(f.status);
    } else if (f.error != httplib::Error::Success) {
      last_problem = "connection dropped (" + httplib::to_string(f.error) + ") at " + mib(pos) +
                     (total >= 0 ? " of " + mib(uint64_t(total)) : "");
    } else {
      last_problem.clear();
    }
    if (last_problem.empty() || action == ResumeAction::Complete) {
      // Whole body received.
      const uint64_t size = file_size_fd(pf.fd);
      if (total >= 0 && size != uint64_t(total)) {
        last_problem = "got " + std::to_string(size) + " bytes, expected " + std::to_string(total);
        if (size > uint64_t(total)) {
          ::close(pf.fd);
          pf.fd = -1;
          fs::remove(part, ec);
          throw ModelFormatError(name + ": " + last_problem + " (partial file deleted)");
        }
      } else {
        report(true);
        if (expected_sha.empty()) expected_sha = sha256_from_etag(f.linked_etag);
        if (expected_sha.empty() && opt.trust_etag) expected_sha = sha256_from_etag(f.first_etag);
        ::fsync(pf.fd);
        result.sha256 = hash_file(part);
        result.bytes = size;
        if (!expected_sha.empty()) {
          result.checked_sha256 = true;
          if (result.sha256 != expected_sha) {
            ::close(pf.fd);
            pf.fd = -1;
            fs::remove(part, ec);
            throw ModelFormatError(name + ": SHA-256 mismatch (expected " + expected_sha + ", got " + result.sha256 +
                                   "); the partial file was deleted, run the same command again");
          }
        }
        fs::rename(part, dest, ec);
        if (ec) throw IoError(dest.string() + ": cannot rename the finished download (" + ec.message() + ")");
        return result;
      }
    }
    if (attempt < opt.max_attempts) {
      if (opt.notice)
        opt.notice(name + ": " + last_problem + "; retrying in " + std::to_string(int(backoff * 1000)) +
                   " ms (attempt " + std::to_string(attempt + 1) + " of " + std::to_string(opt.max_attempts) + ")");
      std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
      backoff *= 2;
    }
  }
  throw IoError(name + " (" + u.display() + "): download failed after " + std::to_string(opt.max_attempts) +
                " attempts: " + last_problem + "; run the same command again to resume");
}

}  // namespace sdserve::net
