#include "server/http_util.h"

#include <cstdio>
#include <ctime>

#include "server/extras.h"

namespace sdserve::server {

void log_line(nlohmann::json j) {
  char ts[32];
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  j["ts"] = ts;
  const std::string line = dump(j) + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

std::string base64_decode(const std::string& in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() / 4 * 3);
  int bits = 0;
  uint32_t acc = 0;
  for (char c : in) {
    const int v = val(c);
    if (v < 0) continue;
    acc = ((acc << 6) | uint32_t(v)) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string base64_encode(const std::string& in) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8 | uint8_t(in[i + 2]);
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += tbl[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += i + 1 < in.size() ? tbl[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string requested_format(const httplib::Request& req, const std::string& job_default) {
  if (req.has_param("format")) return parse_output_format(req.get_param_value("format"), "format");
  const std::string accept = req.get_header_value("Accept");
  // The job's format whenever the client takes it (or anything); another only when asked for alone.
  if (accept.empty() || accept.find("*/*") != std::string::npos || accept.find("image/*") != std::string::npos ||
      accept.find(image_mime(job_default)) != std::string::npos)
    return job_default;
  size_t best = std::string::npos;
  std::string fmt = job_default;
  for (const char* f : {"png", "jpeg", "webp"}) {
    const size_t at = accept.find(std::string("image/") + f);
    if (at < best) best = at, fmt = f;
  }
  return fmt;
}

void send_job_error(const Job& job, httplib::Response& res) {
  if (job.status == JobStatus::Canceled)
    send_error(res, http_error(409, "canceled", "the job was canceled"));
  else if (job.error)
    send_error(res, *job.error);
  else
    send_error(res, http_error(500, "internal", "the job ended without a result"));
}

}  // namespace sdserve::server
