// libFuzzer target for HTTP request bodies: any bytes go through parse_json_body and
// parse_generate_request (as POST /v1/jobs and /txt2img do). They must parse into a request the
// engine's validate_request accepts, or fail with an sdserve::Error carrying a one-line message
// that error_json() turns into a JSON body; a crash, sanitizer report, other exception or hang
// is a bug. Seeds: fuzz/corpus/request. See docs/FUZZING.md.
#include <cstdint>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "pipeline/stable_diffusion.h"
#include "server/http_error.h"
#include "server/request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sdserve;
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    const auto p = server::parse_generate_request(server::parse_json_body(body), server::RequestLimits{});
    validate_request(p.req);  // what parsed must be a valid request
    if (p.req.width > 2048 || p.req.height > 2048 || p.req.steps > 150 || p.req.batch_size > 8) __builtin_trap();
    for (const LoraRequest& l : p.req.loras)
      if (!l.path.empty() || l.name.empty()) __builtin_trap();
  } catch (const Error& e) {
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();
    const std::string j = server::error_json(server::http_error(e));
    if (!nlohmann::json::accept(j)) __builtin_trap();
  }
  return 0;
}
