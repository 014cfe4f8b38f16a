// `sdserve pull` and what --model accepts besides a path: "demo", a Hugging Face repo id (from the
// cache, pulled on first use) or an http(s) URL (docs/MODELS.md).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace sdserve::cli {

struct PullArgs {
  std::string target, revision = "main", variant, cache_dir, endpoint, sha256;
};

CLI::App* add_pull_command(CLI::App& app, PullArgs& a);
// Prints the local path (what --model takes) as the last stdout line.
int cmd_pull(const PullArgs& a);

// --model SPEC to a local path: "demo" -> the demo model (written on first use); an existing path
// -> itself; an http(s) URL or a repo id ("org/name", "org/name/FILE.safetensors") -> its copy in
// the cache, pulled when missing (not when $HF_HUB_OFFLINE is set). Anything else is returned as is,
// for the loader's own "no such file" error. json_log: progress as JSON log lines (serve).
std::string resolve_model_arg(const std::string& spec, bool json_log);

}  // namespace sdserve::cli
