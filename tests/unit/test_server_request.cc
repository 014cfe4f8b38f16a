// The HTTP service's pure parts: request JSON → GenerateRequest (types, aliases, caps) and the
// one engine-error → HTTP mapping. The routes themselves are black-box tested in
// tests/e2e/test_server.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "server/http_error.h"
#include "server/request.h"

namespace sdserve::server {
namespace {

using json = nlohmann::json;

TEST(ServerRequest, SeedBodyAndAliases) {
  const RequestLimits lim;
  auto p = parse_generate_request(json::parse(R"({"prompt": "a barn", "height": 256, "width": 384})"), lim);
  EXPECT_EQ(p.req.prompt, "a barn");
  EXPECT_EQ(p.req.width, 384);
  EXPECT_EQ(p.req.height, 256);
  EXPECT_EQ(p.type, "txt2img");
  p = parse_generate_request(
      json::parse(R"({"prompt": "x", "sampler_name": "DPM++ 2M Karras", "num_inference_steps": 30,
      "guidance_scale": 5.5, "seed": 7, "n": 2, "width": 512.0, "negative_prompt": null, "restore_faces": false,
      "loras": [{"name": "film", "weight": 0.5}, {"name": "grain", "te_weight": 0.2, "unet_weight": 0.9}]})"),
      lim);
  EXPECT_EQ(p.req.sampler, "DPM++ 2M Karras");
  EXPECT_EQ(p.req.steps, 30);
  EXPECT_FLOAT_EQ(p.req.cfg_scale, 5.5f);
  EXPECT_EQ(p.req.seed, 7);
  EXPECT_EQ(p.req.batch_size, 2);
  EXPECT_EQ(p.req.width, 512);
  EXPECT_EQ(p.ignored, std::vector<std::string>{"restore_faces"});
  ASSERT_EQ(p.req.loras.size(), 2u);
  EXPECT_EQ(p.req.loras[0].name, "film");
  EXPECT_FLOAT_EQ(p.req.loras[0].te_multiplier, 0.5f);
  EXPECT_FLOAT_EQ(p.req.loras[1].te_multiplier, 0.2f);
  EXPECT_FLOAT_EQ(p.req.loras[1].unet_multiplier, 0.9f);
  EXPECT_TRUE(p.req.loras[1].path.empty());
}

TEST(ServerRequest, BadFieldsNameTheField) {
  const RequestLimits lim;
  const std::pair<const char*, const char*> cases[] = {
      {R"({"width": 64})", "'prompt'"},
      {R"({"prompt": 5})", "'prompt'"},
      {R"({"prompt": "x", "width": "512"})", "'width'"},
      {R"({"prompt": "x", "width": 4096})", "'width'"},
      {R"({"prompt": "x", "width": 512.5})", "'width'"},
      {R"({"prompt": "x", "steps": 151})", "'steps'"},
      {R"({"prompt": "x", "seed": -2})", "'seed'"},
      {R"({"prompt": "x", "seed": 18446744073709551615})", "'seed'"},
      {R"({"prompt": "x", "cfg_scale": 1e300})", "'cfg_scale'"},
      {R"({"prompt": "x", "vae_tiling": 1})", "'vae_tiling'"},
      {R"({"prompt": "x", "loras": {"name": "a"}})", "'loras'"},
      {R"({"prompt": "x", "loras": [{"path": "/etc/passwd"}]})", "loras[0]"},
      {R"({"prompt": "x", "loras": [{"name": ""}]})", "loras[0].name"},
      {R"({"prompt": "x", "loras": [{"name": "a", "weight": "1"}]})", "loras[0].weight"},
      {R"({"prompt": "x", "sampler": "Bogus"})", "Euler a"},
      {R"({"prompt": "x", "rng": "gpu"})", "gpu"},
  };
  for (const auto& [body, needle] : cases) {
    try {
      parse_generate_request(json::parse(body), lim);
      ADD_FAILURE() << "accepted " << body;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << body << ": " << e.what();
    }
  }
  RequestLimits small;
  small.max_prompt_chars = 4;
  EXPECT_THROW(parse_generate_request(json::parse(R"({"prompt": "12345"})"), small), InvalidArgument);
}

TEST(ServerRequest, BodyMustBeAJsonObject) {
  EXPECT_THROW(parse_json_body("{bad"), InvalidArgument);
  EXPECT_THROW(parse_json_body("[1]"), InvalidArgument);
  EXPECT_THROW(parse_json_body(""), InvalidArgument);
  EXPECT_THROW(parse_json_body(std::string("{\"a\":1}\0junk", 12)), InvalidArgument);
  EXPECT_TRUE(parse_json_body(R"({"prompt": "x"})").is_object());
}

TEST(ServerErrors, OneMappingForEveryKind) {
  EXPECT_EQ(http_error(InvalidArgument("x")).status, 400);
  EXPECT_EQ(http_error(NotFoundError("x")).status, 404);
  EXPECT_EQ(http_error(ModelFormatError("x")).status, 422);
  EXPECT_EQ(http_error(UnsupportedError("x")).status, 422);
  EXPECT_EQ(http_error(IoError("x")).status, 500);
  EXPECT_EQ(http_error(ResourceError("x")).status, 503);
  EXPECT_EQ(http_error(InternalError("x")).status, 500);
  EXPECT_EQ(http_error(std::runtime_error("x")).error, "internal");
  const HttpError e = http_error(InvalidArgument("bad \xff byte\nsecond line"));
  EXPECT_EQ(e.detail.find('\n'), std::string::npos);
  const json j = json::parse(error_json(e));
  EXPECT_EQ(j.size(), 2u);
  EXPECT_EQ(j["error"], "invalid_argument");
}

}  // namespace
}  // namespace sdserve::server
