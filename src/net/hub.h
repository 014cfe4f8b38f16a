// Models from the Hugging Face hub (or any server with its layout) and plain URLs, in a local cache
// (docs/MODELS.md):
//   {cache}/models--{org}--{name}/refs/{revision}        the commit sha the revision resolved to
//   {cache}/models--{org}--{name}/snapshots/{sha}/...    the repo's files at that commit (plain files)
//   {cache}/models--{org}--{name}/snapshots/{sha}/.sdserve-complete   a pipeline pull finished
//   {cache}/urls/{16 hex of sha256(URL without query)}/{file name}
//   {cache}/demo/                                         the built-in demo model (models/demo_model.h)
// A file appears under its final name only after its size and SHA-256 were checked; the repo's ref
// is written after the last file, so a cache hit never needs the network.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "net/download.h"

namespace sdserve::net {

constexpr const char* kDefaultModelRepo = "stable-diffusion-v1-5/stable-diffusion-v1-5";

// $HF_ENDPOINT or https://huggingface.co, without a trailing '/'.
std::string default_endpoint();
// $HF_TOKEN, else $HUGGING_FACE_HUB_TOKEN; "" when neither is set.
std::string default_token();
// $SDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/sdserve, else $HOME/.cache/sdserve.
std::filesystem::path default_cache_dir();

// "org/name" (a diffusers pipeline) or "org/name/path/to/FILE.safetensors" (one file in a repo).
struct RepoRef {
  std::string repo;  // org/name
  std::string file;  // "" for a pipeline
};
// A repo reference by its shape: segments of [A-Za-z0-9._-] (not starting with '.' or '-'), a
// pipeline is exactly two, a file has more and ends in .safetensors. Nothing is looked up.
std::optional<RepoRef> parse_repo_ref(const std::string& s);
bool is_url(const std::string& s);  // http:// or https://

std::filesystem::path repo_cache_dir(const std::filesystem::path& cache, const std::string& repo);
std::filesystem::path snapshot_dir(const std::filesystem::path& cache, const std::string& repo, const std::string& sha);
std::filesystem::path ref_file(const std::filesystem::path& cache, const std::string& repo,
                               const std::string& revision);
std::filesystem::path url_cache_path(const std::filesystem::path& cache, const std::string& url);

// Which files of a repo listing a diffusers Stable Diffusion pipeline needs: model_index.json,
// scheduler/*.json, tokenizer(_2)/*, and for text_encoder(_2)/unet/vae their config.json plus one
// weight set: `{stem}.fp16.safetensors` when variant is "fp16" and the repo has it, else
// `{stem}.safetensors` (else the fp16 one), or the `.safetensors.index.json` of sharded weights
// (its shards are added from the index after it is downloaded). Pickles are never taken.
struct FileSelection {
  std::vector<std::string> files;            // in download order (small files first)
  std::vector<std::string> indexes;          // the subset of files that are shard indexes
  std::vector<std::string> pickle_only;      // components that have only .bin/.ckpt/.pt weights
  std::vector<std::string> variant_missing;  // components without the requested variant
};
FileSelection select_pipeline_files(const std::vector<std::string>& siblings, const std::string& variant);
// The shard files an index.json lists (component folder prepended); throws ModelFormatError for a
// bad index or a shard name with a path in it.
std::vector<std::string> index_shards(const nlohmann::json& index, const std::string& index_path);

struct PullOptions {
  std::string endpoint;  // default_endpoint() when empty
  std::string token;
  std::filesystem::path cache_dir;
  std::string revision = "main";
  std::string variant;  // "" or "fp16"
  std::string sha256;   // URL pulls: expected digest
  int max_attempts = 5;
  double backoff_s = 1.0;
  std::function<void(const DownloadProgress&)> progress;
  std::function<void(const std::string&)> notice;  // retries, skipped files
};

struct PullResult {
  std::filesystem::path path;  // what --model takes
  std::string sha;             // commit (repos)
  int files = 0, downloaded = 0;
};

PullResult pull_repo(const RepoRef& ref, const PullOptions& opt);
PullResult pull_url(const std::string& url, const PullOptions& opt);

// The finished local copy of a repo ref at `revision` in the cache, if any (no network).
std::optional<std::filesystem::path> cached_repo(const RepoRef& ref, const std::filesystem::path& cache,
                                                 const std::string& revision = "main");

}  // namespace sdserve::net
