// LoRA-family networks (LoRA / LoCon, LyCORIS LoHa and LoKr, full diffs) read from .safetensors,
// and merging them into a model's weights per request with an exact restore.
//
//   LoraNetwork::open(path)  parses a file in any of the layouts people download (kohya
//                            "lora_unet_*"/"lora_te_*", diffusers/PEFT "unet.*.lora_A.weight",
//                            old diffusers ".lora.down.weight" / "to_q_lora", LyCORIS) into one
//                            factorised update per module, scale (alpha / rank) included.
//   WeightPatcher            holds the model's patchable weights by name; apply(set) restores
//                            whatever the last set changed from a backup taken before the first
//                            change (so the base weights are bit-identical to a fresh load, however
//                            many sets came before), then merges the new set:
//                                W = round(f32(W0) + sum_i m_i * scale_i * delta_i)
//                            on the weights' own device, with GEMMs there (the factors are
//                            prepared for the device once and kept between switches).
//   LoraLibrary              resolves names (<lora:NAME:...> tags, API lists) to files in a
//                            folder, and caches parsed networks.
//
// docs/PROMPTS.md ("LoRA") has the user-facing rules; tools/make_lora_fixtures.py is the reference.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace sdserve {

class SafeTensorsFile;

// One module's update in a network file, before it is bound to a model.
struct LoraModule {
  enum class Kind {
    LoRA,  // up [out, r(,1,1)] @ down [r, in(, kh, kw)], optionally with a Tucker mid [r, r, kh, kw]
    LoHa,  // (w1a @ w1b) * (w2a @ w2b), elementwise
    LoKr,  // kron(w1 | w1a @ w1b, w2 | w2a @ w2b)
    Full,  // diff: the whole update, the weight's shape
  };
  std::string key;  // the module's name as the file writes it ("lora_unet_..." or "unet.down_blocks...")
  Kind kind = Kind::LoRA;
  // Factors as stored (f32, host), by role: LoRA: "up", "down", "mid"; LoHa: "h1a", "h1b", "h2a",
  // "h2b"; LoKr: "w1" or "w1a"+"w1b", "w2" or "w2a"+"w2b"; Full: "diff".
  std::map<std::string, Tensor> t;
  std::map<std::string, std::string> stored_key;  // role -> the full tensor key in the file (messages)
  float scale = 1.f;                              // alpha / rank (1 without alpha), rslora alpha / sqrt(rank)
};

class LoraNetwork {
 public:
  // Throws NotFoundError (no file), ModelFormatError (corrupt, truncated, a tensor with the wrong
  // rank or dtype, a module with missing factors) or UnsupportedError (a layout or feature we do
  // not merge, e.g. DoRA or LoHa's Tucker form), each naming the file and the key.
  static std::shared_ptr<const LoraNetwork> open(const std::string& path);
  // The same from a file already read (fuzzing, in-memory files); messages name f.path().
  static std::shared_ptr<const LoraNetwork> from_file(const SafeTensorsFile& f);

  const std::string& path() const { return path_; }
  std::string name() const;  // the file's stem
  const std::vector<LoraModule>& modules() const { return modules_; }
  size_t bytes() const { return bytes_; }  // factor memory (f32)
  // A1111's short hash of a LoRA file (the "addnet" hash: SHA-256 of everything after the
  // safetensors header, first 12 hex digits), as its infotext records under "Lora hashes".
  const std::string& short_hash() const { return short_hash_; }

 private:
  std::string path_;
  std::vector<LoraModule> modules_;
  size_t bytes_ = 0;
  std::string short_hash_;
};

// A patchable weight of a model: a canonical name ("unet.<diffusers module>" or
// "text_encoder.text_model.encoder.layers.N.<...>", no ".weight"), the tensor (weights are
// modified in place, so models see the change) and the component it belongs to.
struct PatchTarget {
  std::string name;
  Tensor* weight = nullptr;
  enum class Component { TextEncoder, UNet } component = Component::UNet;
  // Alternative module names a file may use for it (e.g. the UNet's LDM name in kohya form).
  std::vector<std::string> aliases;
};

class ClipTextModel;
class UNet;
// The patchable weights of a text encoder and/or a UNet (either may be null): every Linear and
// conv of the UNet, the attention and MLP weights of the text encoder. The UNet's weights also
// answer to their LDM names in kohya form ("lora_unet_input_blocks_1_1_proj_in"), which LoRAs
// trained on A1111-layout models use.
std::vector<PatchTarget> patch_targets(ClipTextModel* text_encoder, UNet* unet);

// A network with its multipliers, as a request asks for it.
struct AppliedNetwork {
  std::shared_ptr<const LoraNetwork> network;
  float te_multiplier = 1.f;
  float unet_multiplier = 1.f;
};

class WeightPatcher {
 public:
  explicit WeightPatcher(std::vector<PatchTarget> targets);

  // Makes the weights those of the base model plus `set` (an empty set: the base model). A set
  // equal to the current one (the same parsed networks, multipliers and order) costs nothing. Every
  // network is bound and checked before any weight changes, so an error (ModelFormatError naming
  // the first key whose shape does not fit, or InvalidArgument for a network that touches nothing
  // in this model) leaves the model as it was.
  void apply(const std::vector<AppliedNetwork>& set);
  // The weights as loaded (same as apply({})).
  void restore() { apply({}); }

  // SHA-256 over every patchable weight (names and bytes, in name order): equal to a fresh
  // load's digest whenever no network is applied.
  std::string digest() const;
  size_t target_count() const { return targets_.size(); }
  size_t patched_count() const { return patched_.size(); }
  size_t backup_bytes() const;
  // Module keys of the last applied set that matched nothing in this model (skipped, as A1111
  // does), for logging.
  const std::vector<std::string>& unmatched() const { return unmatched_; }

  // Weights on a GPU (and any but the CPU's f32 weights) merge from factors prepared for their
  // device: uploaded once, V transposed there, the multipliers applied at merge time. Those are
  // kept between switches, up to `bytes` in all (default 1 GiB, or SDSERVE_LORA_FACTOR_CACHE_MB),
  // least recently used network first out, so switching among a few networks uploads nothing; a
  // set larger than the limit is prepared again at every switch. 0 keeps nothing.
  void set_factor_cache_limit(size_t bytes);
  size_t factor_cache_bytes() const;
  // Tests: the CPU's f32 weights take the device path (the one GPU weights take) instead of the
  // in-place sgemm.
  static void set_device_path_on_cpu_for_testing(bool on);

 private:
  struct Use;            // a module bound to a target, with its network and multiplier
  struct Bound;          // a network's modules resolved to targets
  struct Factors {       // one module's update on a device, before its multiplier (f32)
    Tensor u, vt, full;  // U [out, R] and V^T [in_flat, R], or the whole [out, in_flat]
    size_t bytes() const;
  };
  struct FactorCache {  // one network's factors on one device
    std::shared_ptr<const LoraNetwork> net;
    Device device;
    std::unordered_map<const LoraModule*, Factors> modules;
    size_t bytes = 0;
    uint64_t used = 0;  // clock_ at the last apply that used it
  };
  Bound bind(const AppliedNetwork& n) const;
  std::optional<size_t> resolve(const std::string& key) const;
  void merge_in_place(size_t idx, const std::vector<Use>& list);
  void merge_on_device(size_t idx, const std::vector<Use>& list);
  Factors device_factors(const std::shared_ptr<const LoraNetwork>& net, const LoraModule& m, size_t idx,
                         const Device& dev);
  // Drops the least recently used network's factors among those last used before `used_before`;
  // false if there is none.
  bool evict_least_recent(uint64_t used_before);

  std::vector<PatchTarget> targets_;
  std::unordered_map<std::string, size_t> by_name_;  // canonical names and aliases -> target
  std::unordered_map<size_t, Tensor> backups_;       // target -> weights as loaded
  std::vector<size_t> patched_;                      // targets the current set changed
  std::vector<AppliedNetwork> current_;
  std::vector<std::string> unmatched_;
  std::vector<FactorCache> factor_cache_;
  size_t factor_cache_limit_;
  uint64_t clock_ = 0;
};

// Networks by name: every *.safetensors under `dir` (recursively; the name is the file's stem,
// the first path in sorted order winning a tie), parsed on first use and kept in a cache of at
// most `cache_bytes` (least recently used first out; a file changed on disk is re-read).
class LoraLibrary {
 public:
  explicit LoraLibrary(std::optional<std::string> dir, size_t cache_bytes = size_t(2) << 30);

  // NotFoundError listing the available names when `name` is not one (the folder is re-scanned
  // first, so files added since start are found).
  std::shared_ptr<const LoraNetwork> by_name(const std::string& name);
  std::shared_ptr<const LoraNetwork> by_path(const std::string& path);
  std::vector<std::string> names();  // sorted, after a re-scan
  bool has(const std::string& name);
  const std::optional<std::string>& dir() const { return dir_; }

 private:
  void scan();
  std::string not_found_message(const std::string& name) const;

  std::optional<std::string> dir_;
  size_t cache_bytes_;
  std::mutex mu_;
  std::map<std::string, std::filesystem::path> files_;  // name -> path
  struct Cached {
    std::shared_ptr<const LoraNetwork> net;
    std::filesystem::file_time_type mtime;
    uintmax_t size = 0;
    uint64_t used = 0;
  };
  std::map<std::string, Cached> cache_;  // path -> network
  uint64_t clock_ = 0;
};

}  // namespace sdserve
