// A loaded Stable Diffusion model (SD1.x / SD2.x) and txt2img on it, step for step
// as diffusers' StableDiffusionPipeline: same prompt encoding, latents, CFG batch,
// sampler and VAE decode, so a seed gives a diffusers user's image.
#pragma once
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "io/infotext.h"
#include "io/ldm_names.h"
#include "io/model_files.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/embeddings.h"
#include "pipeline/lora.h"
#include "pipeline/prompt.h"
#include "pipeline/rng.h"
#include "pipeline/scheduler.h"
#include "pipeline/tokenizer.h"

namespace sdserve {

struct LoadOptions {
  DType dtype = DType::F32;
  // Where the weights live and the models run ("cpu" or "cuda:N"). Sampling arithmetic stays
  // on the host; the latents (a few hundred KiB) cross once per model call.
  Device device = Device::cpu();
  // Single-file checkpoints store neither head counts nor group counts; these defaults
  // are those of every released SD1/SD2 model. Tests with tiny models override them.
  int64_t text_head_dim = 64;
  LdmInferOptions ldm;  // UNet heads and group counts of single files
  // A diffusers scheduler_config.json to use instead of the model's own. Single files carry
  // none (they get SD1.5's defaults), so a v-prediction single file needs this, as
  // diffusers' from_single_file needs a config.
  std::optional<std::string> scheduler_config_path;
  // "epsilon" or "v_prediction", overriding the scheduler config and the sidecar below. Single
  // files say nothing about it: load() takes SD1 files as epsilon and SD2 files as v-prediction
  // (SD2.1-768, as diffusers' from_single_file does), unless an A1111 sidecar <checkpoint>.yaml
  // next to the file says `parameterization: "eps"` or `"v"`.
  std::optional<std::string> prediction_type;
  // A tokenizer folder (vocab.json, merges.txt, ...) to use instead of the model's own, or of
  // the bundled CLIP vocabulary that single files get (models with another vocabulary need it).
  std::optional<std::string> tokenizer_dir;
  // Longest prompt accepted, in chunks of 75 tokens; longer prompts are an InvalidArgument.
  size_t max_prompt_chunks = 64;
  // A folder of textual-inversion embeddings (<name>.safetensors), used by writing <name> in a
  // prompt (docs/PROMPTS.md).
  std::optional<std::string> embeddings_dir;
  // A folder of LoRA-family networks (*.safetensors, searched recursively): <lora:NAME:W> tags and
  // LoraRequest::name resolve to NAME.safetensors there (docs/PROMPTS.md).
  std::optional<std::string> lora_dir;
  // Parsed networks kept in memory between requests (f32 factors), least recently used out first.
  size_t lora_cache_bytes = size_t(2) << 30;
  // A folder of ESRGAN-family upscalers (*.safetensors, *.pth, *.pt): the hires fix's upscaler
  // names include their file stems (pipeline/upscale.h).
  std::optional<std::string> upscaler_dir;
};

// A LoRA a request asks for besides the prompt's <lora:...> tags.
struct LoraRequest {
  // A name in LoadOptions::lora_dir (what untrusted callers such as the HTTP API may give), or,
  // for trusted callers only (the CLI's --lora), a file path.
  std::string name;
  std::string path;
  float te_multiplier = 1.f;
  float unet_multiplier = 1.f;
};

// 8-bit images given to img2img and inpaint, rows top to bottom, interleaved, no padding.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // width * height * 3
};
struct GrayImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // width * height
};

// What an inpaint starts from inside the mask (A1111's "masked content"). Fill and Original are the
// image's pixels (fill: prepared by pipeline/img2img.h); the latent ones replace the image's latents
// inside the mask before noising: fresh noise from each image's seed, or zeros.
enum class MaskedContent { Fill = 0, Original = 1, LatentNoise = 2, LatentNothing = 3 };

// A1111's hires fix (enable_hr): the txt2img image at the request's size, upscaled, then img2img at
// the target size. Targets are rounded down to multiples of 8.
struct HiresFix {
  bool enabled = false;
  double scale = 2.0;         // hr_scale, used when width/height are 0
  int width = 0, height = 0;  // hr_resize_x / hr_resize_y (0: scale; one of them 0: keeps the ratio)
  // "Latent" (bilinear), "Latent (nearest)", "Latent (nearest-exact)" upscale the latents; "Lanczos",
  // "Nearest" and the ESRGAN-family files in LoadOptions::upscaler_dir (by file stem) the decoded image.
  std::string upscaler = "Latent";
  int steps = 0;         // hr_second_pass_steps; 0 = the first pass's steps
  double denoise = 0.7;  // denoising strength of the second pass
};

struct GenerateRequest {
  std::string prompt;
  std::string negative_prompt;
  int width = 512;
  int height = 512;
  int steps = 20;
  float cfg_scale = 7.f;
  std::string sampler = "Euler";
  std::string schedule = "Automatic";
  int64_t seed = -1;  // -1: random; image i of a batch uses seed + i (A1111)
  RngKind rng = RngKind::CPU;
  int batch_size = 1;
  int clip_skip = 1;  // A1111 semantics: 1 = last layer
  float eta = 0.f;
  float guidance_rescale = 0.f;
  // Decode in overlapping tiles (diffusers enable_tiling): VAE memory stays that of one tile, so
  // large images fit; the image differs slightly from an untiled decode. Off by default.
  bool vae_tiling = false;
  // Networks to merge for this request, after those the prompt's <lora:...> tags name. Each request
  // gets exactly its own set: the base weights are restored exactly between requests.
  std::vector<LoraRequest> loras;

  // img2img (diffusers' StableDiffusionImg2ImgPipeline): start from this image, width x height of
  // the request (front ends resize it first: pipeline/img2img.h), encoded by the VAE and noised to
  // `strength` of the schedule; min(int(steps * strength), steps) of the `steps` are run.
  std::shared_ptr<const RgbImage> init_image;
  // Inpaint (diffusers' StableDiffusionInpaintPipeline): with init_image, repaint where the mask is
  // white (>= 128; it is binarized), keep the rest. A 4-channel model blends the noised original
  // into the latents outside the mask after every step; a 9-channel inpainting model gets the mask
  // and the masked image's latents as extra UNet input. A 9-channel model without a mask repaints
  // everything (txt2img on it: a gray image and a white mask, as A1111 does).
  std::shared_ptr<const GrayImage> mask;
  double strength = 0.75;  // denoising strength, (0, 1]; with init_image only
  // A1111's resize mode 3 ("just resize (latent upscale)"): init_image keeps its own size (a
  // multiple of 8) and its latents are resized (bilinear) to the request's. img2img without a mask.
  bool init_latent_resize = false;
  MaskedContent masked_content = MaskedContent::Original;  // with a mask
  HiresFix hires;                                          // txt2img only
};

// The hires fix's second pass: img2img at the target size with the hires steps and strength (no
// init image of its own: generate() hands it the upscaled first pass).
GenerateRequest hires_second_pass(const GenerateRequest& req);
// Model-free hires upscalers, in A1111's menu order.
std::vector<std::string> hires_upscaler_names();

struct GeneratedImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3
  int64_t seed = 0;
};

// Called after every model evaluation; return false to cancel (the call then throws Cancelled).
using ProgressFn = std::function<bool(int step, int total)>;
// Called after model call `step` (before ProgressFn) with the current latents, [n, C, H/8, W/8]
// scaled, f32 on the host (live previews; server/extras.h). Not called when empty.
using LatentsFn = std::function<void(int step, const Tensor& latents)>;

struct Cancelled : Error {
  Cancelled() : Error(ErrorKind::InvalidArgument, "generation canceled") {}
};

// What generate_batch() reports for one of its requests: the images, or that it was canceled (its
// progress function returned false; the others go on), or the error it failed with.
struct BatchResult {
  std::vector<GeneratedImage> images;
  bool canceled = false;
  std::exception_ptr error;
};

// The model's own tokenizer/ folder, else the bundled CLIP vocabulary (single files).
ClipTokenizer model_tokenizer(const ModelFiles& model);

// Token ids of `text` as diffusers feeds the text encoder: padding="max_length",
// truncation=True to `length` (a truncated sequence still ends with EOS).
std::vector<int32_t> context_ids(const ClipTokenizer& tok, const std::string& text, size_t length);

// Checks what can be checked without a model (sizes, steps, sampler names, ...), so a
// front end can refuse a request before loading anything. Throws InvalidArgument.
// The prediction type an A1111 sidecar config (<checkpoint>.yaml next to a single file) gives:
// "v_prediction" for `parameterization: "v"`, "epsilon" for "eps", nothing if the file or the
// key is absent. Only that key is read; the rest of the LDM yaml is ignored.
std::optional<std::string> sidecar_prediction_type(const std::string& checkpoint_path);

void validate_request(const GenerateRequest& req);

class StableDiffusion {
 public:
  static std::unique_ptr<StableDiffusion> load(const std::string& path, const LoadOptions& opt = {});

  // validate_request plus the model-dependent checks; throws InvalidArgument naming the bad value.
  void validate(const GenerateRequest& req) const;
  // Generations on one model run one at a time (a request's LoRA set is merged into the shared
  // weights for its duration); concurrent calls wait.
  // txt2img, img2img or inpaint, as the request says (init_image, mask).
  std::vector<GeneratedImage> generate(const GenerateRequest& req, const ProgressFn& progress = {},
                                       const LatentsFn& on_latents = {}) const;
  std::vector<GeneratedImage> txt2img(const GenerateRequest& req, const ProgressFn& progress = {}) const {
    return generate(req, progress);
  }
  // Several requests as one UNet batch (the server's batching of compatible jobs): every request
  // keeps its own prompts, seeds, noise streams, sampler state, CFG scale and VAE decode; only the
  // UNet evaluations are shared, so each request's images are bit for bit those generate() gives
  // it alone (the UNet's kernels are batch-invariant on the CPU; tests/unit/test_batch.cc).
  // Requests must have equal, non-empty batch_key()s. `progress[k]` (may be empty) is request k's;
  // when it returns false, request k drops out and the others go on. `done(k, result)` is called
  // once per request, as soon as it ends; `on_model_call` after every shared UNet evaluation.
  void generate_batch(const std::vector<GenerateRequest>& reqs, const std::vector<ProgressFn>& progress,
                      const std::function<void(size_t, BatchResult)>& done,
                      const std::function<void()>& on_model_call = {}) const;
  // Requests with equal non-empty keys can run through generate_batch() together: same size,
  // sampler, schedule, steps and (img2img) strength, the same LoRA set, CFG on or off alike and
  // prompts of as many 75-token chunks. Empty for requests that run alone (the hires fix).
  // Throws what validate() throws.
  std::string batch_key(const GenerateRequest& req) const;
  // Model calls a request makes (what ProgressFn counts to): after img2img's strength cut.
  size_t model_calls(const GenerateRequest& req) const;
  // UNet input channels: 4, or 9 for an inpainting model.
  int64_t unet_in_channels() const { return unet_->config().in_channels; }

  // [1, 77 * chunks, D] conditioning of a prompt by A1111's method (docs/PROMPTS.md): attention
  // weights and BREAK parsed, 75-token chunks each encoded as [BOS] + 75 + [EOS], token weights
  // applied to the hidden states with their mean restored, chunks concatenated. A prompt of at
  // most 75 tokens without weights gives exactly diffusers' embedding. `text` must not contain
  // extra-network tags (parse_extra_networks removes them). On the model's device and dtype.
  Tensor encode_prompt(const std::string& text, int clip_skip) const;
  // A1111's token count of a prompt as this model chunks it (its tokenizer and embeddings;
  // extra-network tags removed). Throws InvalidArgument for a prompt of too many chunks.
  PromptTokenCount count_tokens(const std::string& prompt) const;

  const ModelInfo& info() const { return files_->info(); }
  // The textual-inversion embeddings loaded from LoadOptions::embeddings_dir.
  const std::vector<TextualInversion>& embeddings() const { return embeddings_; }
  int vae_scale_factor() const { return vae_scale_; }

  // The networks a request merges: its prompt's <lora:...> tags in order, then req.loras. Throws
  // NotFoundError listing the available names for an unknown one; parses (and caches) the files.
  std::vector<AppliedNetwork> resolve_loras(const GenerateRequest& req) const;
  // Merges `set` into the weights (restoring the base weights first); an empty set restores them.
  // txt2img does this itself; exposed for tests and the bench.
  void apply_loras(const std::vector<AppliedNetwork>& set);
  // SHA-256 of every weight a network can change (equal to a fresh load's when none is merged).
  std::string weights_digest() const;
  // A1111's infotext fields for image `im` of `req` (Version left to the caller): the networks
  // merged are tags in the prompt (those from req.loras appended by file stem, so the text pasted
  // into A1111 reproduces the image) and "Lora hashes"; the model's name and, for a single file,
  // its A1111 hash (computed once per model).
  GenerationParams infotext_params(const GenerateRequest& req, const GeneratedImage& im) const;

  // The model's name as A1111 writes it ("Model: ..."): the file stem of a single file, the folder
  // name of a diffusers folder.
  std::string model_name() const;
  // A1111's "Model hash" of a single file (first 10 hex digits of its SHA-256, computed once per
  // model); empty for a diffusers folder.
  std::string model_hash() const;
  // Names of the networks in LoadOptions::lora_dir (empty without one).
  std::vector<std::string> lora_names() const { return loras_->names(); }
  // The hires fix's upscalers: hires_upscaler_names() and the files in LoadOptions::upscaler_dir.
  std::vector<std::string> upscaler_names() const;

 private:
  std::unique_ptr<ModelFiles> files_;
  size_t max_prompt_chunks_ = 64;
  std::vector<TextualInversion> embeddings_;
  std::vector<EmbeddingName> embedding_names_;
  // chunk_prompt with this model's tokenizer, chunk cap and embeddings.
  std::vector<PromptChunk> chunks(const std::string& text) const;
  std::unique_ptr<ClipTokenizer> tokenizer_;
  std::unique_ptr<ClipTextModel> text_encoder_;
  std::unique_ptr<UNet> unet_;
  std::unique_ptr<VAE> vae_;
  ScheduleConfig schedule_;
  int vae_scale_ = 8;
  std::unique_ptr<LoraLibrary> loras_;
  std::unique_ptr<WeightPatcher> patcher_;
  mutable std::mutex run_mu_;  // one generation (and LoRA merge) at a time
  mutable std::once_flag hash_once_;
  mutable std::string model_hash_;
  std::optional<std::string> upscaler_dir_;
  Device device_ = Device::cpu();  // where the models run (LoadOptions::device), and the upscalers
  DType dtype_ = DType::F32;
  // The path of upscaler `name` in upscaler_dir_, or empty.
  std::string upscaler_path(const std::string& name) const;

  // What a pass starts from besides the request: images or latents (the hires fix's second pass).
  struct PassInput {
    const Tensor* pixels = nullptr;   // [1 or n, 3, H, W] in [-1, 1]
    const Tensor* latents = nullptr;  // [n, latent, H/8, W/8], scaled
  };
  // One request's sampling state between model calls (prompt conditioning, sampler, noise streams,
  // latents, inpaint inputs); sample() and generate_batch() drive it.
  struct Pass;
  std::unique_ptr<Pass> start_pass(const GenerateRequest& req, const std::vector<int64_t>& seeds,
                                   const PassInput& in) const;
  // The UNet input of model call i (CFG: [scaled; scaled]).
  Tensor pass_input(Pass& p, size_t i) const;
  // Guidance, the sampler step and the inpaint blend from the UNet output of call i ([2n or n, ...] f32 host).
  void pass_step(Pass& p, size_t i, const Tensor& pred) const;
  // Prompt encoding and the sampling loop; returns the final latents. `tick` after every model call.
  Tensor sample(const GenerateRequest& req, const std::vector<int64_t>& seeds, const PassInput& in,
                const std::function<bool(const Tensor& latents)>& tick) const;
  std::vector<GeneratedImage> decode(const Tensor& latents, bool tiled, const std::vector<int64_t>& seeds) const;

  // Latents of a [1 or n, 3, H, W] image in [-1, 1] for each of n images: the VAE posterior's mean +
  // std * one normal draw from each image's generator, times the scaling factor (diffusers'
  // retrieve_latents(sample_mode="sample")). [n, latent, H/8, W/8] f32 on the host.
  Tensor sample_latents(const Tensor& image, bool tiled, NoiseGenerator& noise, int64_t n) const;
};

}  // namespace sdserve
