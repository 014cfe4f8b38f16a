// sdserve pull's pure logic: which files of a hub repo a pipeline needs, the cache layout, URL and
// Content-Range handling, resume decisions; and the demo model's parameter lists against real
// (tiny) checkpoints.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "io/model_files.h"
#include "io/safetensors.h"
#include "models/demo_model.h"
#include "net/download.h"
#include "net/hub.h"

namespace fs = std::filesystem;
using namespace sdserve;
using namespace sdserve::net;

namespace {

bool has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// The runwayml / stable-diffusion-v1-5 repo's listing (abridged but with every kind of file).
const std::vector<std::string> kSd15 = {
    ".gitattributes",
    "README.md",
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "safety_checker/config.json",
    "safety_checker/model.fp16.safetensors",
    "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned-emaonly.safetensors",
    "v1-5-pruned.ckpt",
    "v1-inference.yaml",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
};

}  // namespace

TEST(HubSelection, DefaultTakesFullPrecisionSafetensorsOnly) {
  const FileSelection s = select_pipeline_files(kSd15, "");
  const std::vector<std::string> want = {
      "model_index.json",
      "scheduler/scheduler_config.json",
      "tokenizer/merges.txt",
      "tokenizer/special_tokens_map.json",
      "tokenizer/tokenizer_config.json",
      "tokenizer/vocab.json",
      "text_encoder/config.json",
      "unet/config.json",
      "vae/config.json",
      "text_encoder/model.safetensors",
      "unet/diffusion_pytorch_model.safetensors",
      "vae/diffusion_pytorch_model.safetensors",
  };
  EXPECT_EQ(s.files, want);
  EXPECT_TRUE(s.indexes.empty());
  EXPECT_TRUE(s.pickle_only.empty());
  EXPECT_TRUE(s.variant_missing.empty());
  for (const std::string& f : s.files) {
    EXPECT_EQ(f.find(".bin"), std::string::npos) << f;
    EXPECT_EQ(f.find("safety_checker"), std::string::npos) << f;
  }
}

TEST(HubSelection, Fp16VariantAndFallback) {
  FileSelection s = select_pipeline_files(kSd15, "fp16");
  EXPECT_TRUE(has(s.files, "text_encoder/model.fp16.safetensors"));
  EXPECT_TRUE(has(s.files, "unet/diffusion_pytorch_model.fp16.safetensors"));
  EXPECT_TRUE(has(s.files, "vae/diffusion_pytorch_model.fp16.safetensors"));
  EXPECT_FALSE(has(s.files, "unet/diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(s.variant_missing.empty());

  // A component without the variant falls back to its default weights (and says so).
  std::vector<std::string> l = kSd15;
  l.erase(std::remove(l.begin(), l.end(), "vae/diffusion_pytorch_model.fp16.safetensors"), l.end());
  s = select_pipeline_files(l, "fp16");
  EXPECT_TRUE(has(s.files, "vae/diffusion_pytorch_model.safetensors"));
  EXPECT_EQ(s.variant_missing, std::vector<std::string>{"vae"});

  // Without a variant asked for, a repo that only has fp16 weights gives those.
  l = {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"};
  s = select_pipeline_files(l, "");
  EXPECT_TRUE(has(s.files, "unet/diffusion_pytorch_model.fp16.safetensors"));
}

TEST(HubSelection, PicklesAreNeverTaken) {
  const std::vector<std::string> l = {"model_index.json",
                                      "unet/config.json",
                                      "unet/diffusion_pytorch_model.bin",
                                      "vae/config.json",
                                      "vae/diffusion_pytorch_model.safetensors",
                                      "tokenizer/vocab.json",
                                      "tokenizer/evil.bin"};
  const FileSelection s = select_pipeline_files(l, "");
  EXPECT_EQ(s.pickle_only, std::vector<std::string>{"unet"});
  for (const std::string& f : s.files) EXPECT_EQ(f.find(".bin"), std::string::npos) << f;
  EXPECT_TRUE(has(s.files, "vae/diffusion_pytorch_model.safetensors"));
}

TEST(HubSelection, ShardedWeights) {
  const std::vector<std::string> l = {"model_index.json", "unet/config.json",
                                      "unet/diffusion_pytorch_model.safetensors.index.json",
                                      "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                                      "unet/diffusion_pytorch_model-00002-of-00002.safetensors"};
  const FileSelection s = select_pipeline_files(l, "");
  EXPECT_EQ(s.indexes, std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors.index.json"});
  EXPECT_TRUE(has(s.files, "unet/diffusion_pytorch_model.safetensors.index.json"));
  const nlohmann::json idx = {{"weight_map",
                               {{"a", "diffusion_pytorch_model-00001-of-00002.safetensors"},
                                {"b", "diffusion_pytorch_model-00002-of-00002.safetensors"},
                                {"c", "diffusion_pytorch_model-00001-of-00002.safetensors"}}}};
  const std::vector<std::string> want = {"unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                                         "unet/diffusion_pytorch_model-00002-of-00002.safetensors"};
  EXPECT_EQ(index_shards(idx, "unet/diffusion_pytorch_model.safetensors.index.json"), want);
  EXPECT_THROW(index_shards({{"weight_map", {{"a", "../evil.safetensors"}}}}, "unet/x.index.json"), ModelFormatError);
  EXPECT_THROW(index_shards({{"weight_map", {{"a", "shard.bin"}}}}, "unet/x.index.json"), ModelFormatError);
  EXPECT_THROW(index_shards(nlohmann::json::array(), "unet/x.index.json"), ModelFormatError);
}

TEST(HubRefs, RepoIdsAndFiles) {
  auto r = parse_repo_ref("stable-diffusion-v1-5/stable-diffusion-v1-5");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->repo, "stable-diffusion-v1-5/stable-diffusion-v1-5");
  EXPECT_EQ(r->file, "");
  r = parse_repo_ref("org/name/sub/model.safetensors");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->repo, "org/name");
  EXPECT_EQ(r->file, "sub/model.safetensors");
  for (const char* bad : {"", "demo", "/abs/path", "./rel/path", "org/../x", "org/name/model.ckpt", "a//b",
                          "https://example.com/x", "~/models/x", "org/name/"})
    EXPECT_FALSE(parse_repo_ref(bad)) << bad;
  EXPECT_TRUE(is_url("https://x/y"));
  EXPECT_FALSE(is_url("org/name"));
}

TEST(HubCache, Layout) {
  const fs::path c = "/cache";
  EXPECT_EQ(repo_cache_dir(c, "org/name"), fs::path("/cache/models--org--name"));
  EXPECT_EQ(snapshot_dir(c, "org/name", "abc123"), fs::path("/cache/models--org--name/snapshots/abc123"));
  EXPECT_EQ(ref_file(c, "org/name", "main"), fs::path("/cache/models--org--name/refs/main"));
  // URLs: the query (a presigned URL's signature) does not change the place.
  const fs::path a = url_cache_path(c, "https://bucket.s3.amazonaws.com/m/model.safetensors?X-Amz-Signature=1");
  const fs::path b = url_cache_path(c, "https://bucket.s3.amazonaws.com/m/model.safetensors?X-Amz-Signature=2");
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.filename(), "model.safetensors");
  EXPECT_EQ(a.parent_path().parent_path(), fs::path("/cache/urls"));
  EXPECT_NE(a, url_cache_path(c, "https://other.example/m/model.safetensors"));
  EXPECT_EQ(url_cache_path(c, "https://h/a/..").filename(), "download..");
}

TEST(HubCache, CachedRepoNeedsAFinishedSnapshot) {
  const fs::path c = fs::temp_directory_path() / ("sdserve_hubcache_" + std::to_string(::getpid()));
  fs::remove_all(c);
  const RepoRef ref{"org/name", ""};
  EXPECT_FALSE(cached_repo(ref, c));
  const fs::path snap = snapshot_dir(c, "org/name", "0123abcd");
  fs::create_directories(snap);
  std::ofstream(snap / "model_index.json") << "{}";
  fs::create_directories(ref_file(c, "org/name", "main").parent_path());
  std::ofstream(ref_file(c, "org/name", "main")) << "0123abcd\n";
  EXPECT_FALSE(cached_repo(ref, c));  // no completion marker yet
  std::ofstream(snap / ".sdserve-complete") << "default\n";
  ASSERT_TRUE(cached_repo(ref, c));
  EXPECT_EQ(*cached_repo(ref, c), snap);
  EXPECT_FALSE(cached_repo({"org/name", "model.safetensors"}, c));
  std::ofstream(snap / "model.safetensors") << "x";
  EXPECT_EQ(*cached_repo({"org/name", "model.safetensors"}, c), snap / "model.safetensors");
  fs::remove_all(c);
}

TEST(DownloadUrlParse, Basics) {
  DownloadUrl u = parse_download_url("https://huggingface.co/org/name/resolve/main/unet/x.safetensors?a=1#frag");
  EXPECT_EQ(u.scheme, "https");
  EXPECT_EQ(u.host, "huggingface.co");
  EXPECT_EQ(u.port, 443);
  EXPECT_EQ(u.target, "/org/name/resolve/main/unet/x.safetensors?a=1");
  EXPECT_EQ(u.origin(), "https://huggingface.co:443");
  EXPECT_EQ(u.display(), "https://huggingface.co/org/name/resolve/main/unet/x.safetensors");
  u = parse_download_url("http://127.0.0.1:8080");
  EXPECT_EQ(u.port, 8080);
  EXPECT_EQ(u.target, "/");
  EXPECT_EQ(u.display(), "http://127.0.0.1:8080/");
  u = parse_download_url("http://[::1]:9/x");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.origin(), "http://[::1]:9");
  for (const char* bad :
       {"ftp://x/y", "huggingface.co/x", "http://", "http://u:p@host/x", "http://h:99999/", "http://h/a b"})
    EXPECT_THROW(parse_download_url(bad), InvalidArgument) << bad;
  const DownloadUrl base = parse_download_url("https://h.example/a/b/c?q");
  EXPECT_EQ(resolve_location(base, "https://cdn.example/x"), "https://cdn.example/x");
  EXPECT_EQ(resolve_location(base, "//cdn.example/x"), "https://cdn.example/x");
  EXPECT_EQ(resolve_location(base, "/api/x"), "https://h.example:443/api/x");
  EXPECT_EQ(resolve_location(base, "d"), "https://h.example:443/a/b/d");
  EXPECT_EQ(url_encode("refs/pr/1", false), "refs%2Fpr%2F1");
  EXPECT_EQ(url_encode("unet/a b.json", true), "unet/a%20b.json");
}

TEST(DownloadResume, ContentRange) {
  ContentRange cr;
  ASSERT_TRUE(parse_content_range("bytes 100-199/200", cr));
  EXPECT_EQ(cr.first, 100u);
  EXPECT_EQ(cr.last, 199u);
  EXPECT_EQ(cr.total, 200);
  ASSERT_TRUE(parse_content_range("bytes 0-9/*", cr));
  EXPECT_EQ(cr.total, -1);
  ASSERT_TRUE(parse_content_range("bytes */500", cr));
  EXPECT_TRUE(cr.unsatisfied);
  EXPECT_EQ(cr.total, 500);
  for (const char* bad : {"", "bytes", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes x-1/2", "bytes */*"})
    EXPECT_FALSE(parse_content_range(bad, cr)) << bad;
}

TEST(DownloadResume, Actions) {
  EXPECT_EQ(resume_action(200, 0, "", -1), ResumeAction::Restart);
  EXPECT_EQ(resume_action(200, 500, "", -1), ResumeAction::Restart);  // server ignored Range
  EXPECT_EQ(resume_action(206, 500, "bytes 500-999/1000", -1), ResumeAction::Append);
  EXPECT_EQ(resume_action(206, 500, "bytes 0-999/1000", -1), ResumeAction::Restart);
  EXPECT_EQ(resume_action(206, 500, "nonsense", -1), ResumeAction::Fail);
  EXPECT_EQ(resume_action(416, 1000, "bytes */1000", -1), ResumeAction::Complete);
  EXPECT_EQ(resume_action(416, 1000, "", 1000), ResumeAction::Complete);
  EXPECT_EQ(resume_action(416, 1200, "bytes */1000", -1), ResumeAction::Discard);
  EXPECT_EQ(resume_action(416, 5, "", -1), ResumeAction::Discard);
  EXPECT_EQ(resume_action(404, 0, "", -1), ResumeAction::Fail);
  EXPECT_EQ(resume_action(500, 10, "", -1), ResumeAction::Fail);
}

TEST(DownloadChecks, EtagSha256) {
  const std::string h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  EXPECT_EQ(sha256_from_etag("\"" + h + "\""), h);
  EXPECT_EQ(sha256_from_etag("W/\"" + h + "\""), h);
  std::string upper = h;
  for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(sha256_from_etag(upper), h);
  EXPECT_EQ(sha256_from_etag("\"a9993e364706816aba3e25717850c26c9cd0d89d\""), "");  // git blob sha1
  EXPECT_EQ(sha256_from_etag("\"d41d8cd98f00b204e9800998ecf8427e\""), "");          // S3 md5
  EXPECT_EQ(sha256_from_etag(""), "");
}

TEST(HttpStatusErrors, Kinds) {
  EXPECT_EQ(HttpStatusError(404, "", "x").kind(), ErrorKind::NotFound);
  EXPECT_EQ(HttpStatusError(401, "", "x").kind(), ErrorKind::InvalidArgument);
  EXPECT_EQ(HttpStatusError(403, "GatedRepo", "x").error_code(), "GatedRepo");
  EXPECT_EQ(HttpStatusError(500, "", "x").kind(), ErrorKind::Io);
}

// ---- demo model: the parameter lists are exactly diffusers' / transformers' for a config ----

namespace {

std::map<std::string, Shape> file_shapes(const fs::path& p) {
  std::map<std::string, Shape> out;
  const SafeTensorsFile f = SafeTensorsFile::open(p.string());
  for (const TensorInfo& t : f.tensors()) out[t.name] = t.shape;
  return out;
}

std::map<std::string, Shape> as_map(const ParameterShapes& v) {
  std::map<std::string, Shape> out;
  for (const auto& [n, s] : v) EXPECT_TRUE(out.emplace(n, s).second) << "duplicate " << n;
  return out;
}

const fs::path kTiny = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "models";

}  // namespace

TEST(DemoModel, ParameterShapesMatchDiffusersCheckpoints) {
  for (const char* model : {"sd1-tiny", "sd2-tiny"}) {
    const fs::path d = kTiny / model;
    SCOPED_TRACE(model);
    EXPECT_EQ(as_map(unet_parameter_shapes(UNetConfig::from_json(read_json_file(d / "unet" / "config.json")))),
              file_shapes(d / "unet" / "diffusion_pytorch_model.safetensors"));
    EXPECT_EQ(as_map(vae_parameter_shapes(VAEConfig::from_json(read_json_file(d / "vae" / "config.json")))),
              file_shapes(d / "vae" / "diffusion_pytorch_model.safetensors"));
    EXPECT_EQ(as_map(clip_text_parameter_shapes(
                  ClipTextConfig::from_json(read_json_file(d / "text_encoder" / "config.json")))),
              file_shapes(d / "text_encoder" / "model.safetensors"));
  }
}

TEST(DemoModel, WritesAnSd1Folder) {
  const fs::path dir = fs::temp_directory_path() / ("sdserve_demo_" + std::to_string(::getpid())) / "demo";
  ensure_demo_model(dir);
  const ModelFiles m = ModelFiles::open(dir.string());
  EXPECT_EQ(m.info().family, ModelFamily::SD1);
  EXPECT_EQ(m.info().layout, ModelLayout::Diffusers);
  EXPECT_FALSE(m.tokenizer_dir());  // the bundled CLIP vocabulary
  const auto te = file_shapes(dir / "text_encoder" / "model.safetensors");
  EXPECT_EQ(te.at("text_model.embeddings.token_embedding.weight")[0], 49408);
  // A second call keeps the folder (same version).
  const auto t0 = fs::last_write_time(dir / "unet" / "diffusion_pytorch_model.safetensors");
  ensure_demo_model(dir);
  EXPECT_EQ(fs::last_write_time(dir / "unet" / "diffusion_pytorch_model.safetensors"), t0);
  fs::remove_all(dir.parent_path());
}
