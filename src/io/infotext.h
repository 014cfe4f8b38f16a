// A1111 "infotext": the generation parameters that stable-diffusion-webui writes into the PNG
// `parameters` text chunk and shows under each image. `to_infotext` writes the exact format of
// A1111's processing.create_infotext; `parse_infotext` follows infotext_utils.parse_generation_parameters.
// Format, quoting rules and the (few, documented) deviations: docs/INFOTEXT.md.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sdserve {

struct GenerationParams {
  std::string prompt;
  std::string negative_prompt;  // omitted from the infotext when empty
  int steps = 20;
  std::string sampler;        // "Euler a", "DPM++ 2M", ...; omitted when empty
  std::string schedule_type;  // "Karras", "Automatic", ...; omitted when empty
  float cfg_scale = 7.0f;     // written in shortest form: 7, 7.5
  int64_t seed = -1;
  int width = 512;
  int height = 512;
  std::string model_hash;  // first 10 hex digits of the checkpoint's SHA-256 (a1111_model_hash); omitted when empty
  std::string model_name;  // "Model: ..."; omitted when empty
  int clip_skip = 1;       // written only when > 1, as A1111 does; a parsed infotext without it means 1
  std::optional<float> denoising_strength;  // img2img / hires fix
  std::string version;                      // "Version: ..."; omitted when empty
  // Every other "Key: value" pair, in order (A1111 keeps insertion order: "Hires upscale", "VAE", ...).
  // Values are unquoted text; to_infotext quotes them again where A1111 would.
  std::vector<std::pair<std::string, std::string>> extra;

  // The value of an extra key, or nullptr.
  const std::string* find_extra(std::string_view key) const;
  // Replaces the value of an existing key in place (keeping its position) or appends it.
  void set_extra(std::string key, std::string value);
};

// A1111's `parameters` text: "prompt\nNegative prompt: ...\nSteps: 20, Sampler: Euler a, ...".
std::string to_infotext(const GenerationParams& p);

// Parses an infotext. Never throws on content: unknown keys land in `extra`, a core key whose value
// does not parse (e.g. "Steps: many") keeps its default and its raw text goes to `extra`.
GenerationParams parse_infotext(std::string_view text);

// A1111's quote(): values containing ',', ':' or '\n' become a JSON string (json.dumps with
// ensure_ascii=False); so do values starting with '"' (after whitespace), which A1111 leaves raw and
// then misreads; all others are returned unchanged.
std::string infotext_quote(std::string_view value);

// One "Key: value" pair as A1111's regex re_param finds it in the parameters line; values are raw
// (still quoted). Exposed for tests.
std::vector<std::pair<std::string, std::string>> infotext_find_params(std::string_view line);

// A1111's "Model hash" (AutoV2): the first 10 hex digits of the SHA-256 of the whole file.
// Throws NotFoundError / IoError. Reads the whole file: cache the result per (path, size, mtime).
std::string a1111_model_hash(const std::string& path);

}  // namespace sdserve
