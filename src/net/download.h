// HTTP(S) file downloads for `sdserve pull` (and the default model of `serve`): a file goes to
// FILE.part first, is resumed with `Range: bytes=N-` after a dropped connection or an interrupted
// run, is checked (size against Content-Length / X-Linked-Size, SHA-256 against the hub's LFS
// etag or a given digest) and only then renamed to FILE. Errors are typed (core/error.h) and
// one line: an unreachable host names the host and says what to do instead.
//
// This module has its own small URL parser (DownloadUrl): it only fetches what the operator
// asked for from the command line. The SSRF-guarded fetch of user-supplied URLs in HTTP
// requests is src/net/fetch.h.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "core/error.h"

namespace sdserve::net {

struct DownloadUrl {
  std::string scheme;  // "http" or "https"
  std::string host;    // IPv6 literals without brackets
  int port = 0;
  std::string target;  // path and query, starting with '/'

  std::string origin() const;   // scheme://host:port, for httplib::Client
  std::string display() const;  // scheme://host[:port]/path, without the query (it may hold a signature)
};

// http:// or https:// URLs only; throws InvalidArgument naming what is wrong.
DownloadUrl parse_download_url(const std::string& url);
// A Location header (absolute, scheme-relative or a path) resolved against the URL it came from.
std::string resolve_location(const DownloadUrl& base, const std::string& location);
// Percent-encodes everything but unreserved characters (and '/' when keep_slash).
std::string url_encode(const std::string& s, bool keep_slash);

// ---- resume bookkeeping (pure) ----
struct ContentRange {
  uint64_t first = 0, last = 0;
  int64_t total = -1;        // -1: "*"
  bool unsatisfied = false;  // "bytes */TOTAL" (a 416 answer)
};
bool parse_content_range(const std::string& value, ContentRange& out);

enum class ResumeAction {
  Append,    // 206 starting at our offset: append to the part file
  Restart,   // 200 (the server ignored Range) or a 206 that starts elsewhere: truncate and take it
  Complete,  // 416 and the part file already holds the whole file
  Discard,   // 416 otherwise: the part file is not a prefix of this file; delete it and retry from 0
  Fail,      // any other status
};
// What to do with the answer (status, Content-Range) to a GET sent with `offset` bytes already in
// the part file (with `Range: bytes=offset-` when offset > 0). expected_size: -1 when unknown.
ResumeAction resume_action(int status, uint64_t offset, const std::string& content_range, int64_t expected_size);

// The SHA-256 in an LFS etag ("\"<64 hex>\"", optionally W/-prefixed), lowercase; "" when the value
// is not 64 hex digits (a git blob sha1, an S3 md5, ...).
std::string sha256_from_etag(const std::string& etag);

// An HTTP answer other than success; kind NotFound for 404, InvalidArgument for 401/403 (credentials),
// Io otherwise.
class HttpStatusError : public Error {
 public:
  HttpStatusError(int status, std::string error_code, const std::string& msg);
  int status() const { return status_; }
  // The hub's X-Error-Code header (RepoNotFound, EntryNotFound, RevisionNotFound, GatedRepo, ...).
  const std::string& error_code() const { return error_code_; }

 private:
  int status_;
  std::string error_code_;
};

struct DownloadProgress {
  std::string name;
  uint64_t done = 0;   // bytes in the part file
  int64_t total = -1;  // -1 unknown
  uint64_t resumed_from = 0;
  double seconds = 0;  // since this attempt's first byte
  bool finished = false;
};

struct DownloadOptions {
  std::string name;             // shown in progress and messages (default: the URL's file name)
  std::string bearer_token;     // Authorization: Bearer, sent to the first URL's host only
  std::string expected_sha256;  // lowercase hex; empty: the hub's X-Linked-Etag when it is a sha256
  bool trust_etag = false;      // also take a 64-hex ETag of the first answer as the sha256 (the hub)
  int64_t expected_size = -1;
  int max_attempts = 5;    // a dropped connection is resumed this many times in all
  double backoff_s = 1.0;  // doubled after each failed attempt
  int connect_timeout_s = 15;
  int read_timeout_s = 60;
  std::function<void(const DownloadProgress&)> progress;  // at most ~10 times a second
  std::function<void(const std::string&)> notice;         // one line per retry
};

struct DownloadResult {
  uint64_t bytes = 0;
  std::string sha256;  // of the whole file
  bool resumed = false;
  int attempts = 0;
  bool checked_sha256 = false;
};

// Downloads `url` to `dest` (through dest + ".part"), creating dest's folder. Throws: IoError
// (unreachable host, connection dropped more than max_attempts times, disk), HttpStatusError,
// ModelFormatError (size or SHA-256 mismatch; the part file is deleted), ResourceError (another
// process is downloading the same file).
DownloadResult download_file(const std::string& url, const std::filesystem::path& dest, const DownloadOptions& opt);

// GET of a small body (an API answer), redirects followed; longer than max_bytes is an error.
std::string http_get_text(const std::string& url, const std::string& bearer_token, size_t max_bytes = 16u << 20,
                          int connect_timeout_s = 15);

}  // namespace sdserve::net
