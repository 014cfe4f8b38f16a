#include "pipeline/stable_diffusion.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>

#include "io/png.h"
#include "io/resize.h"
#include "models/loader.h"
#include "ops/concat.h"
#include "pipeline/upscale.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace sdserve {

namespace {

// One generator per image, so image i of a batch is the image seed + i gives alone
// (diffusers with a list of generators; A1111's batch semantics).
class PerImageNoise : public NoiseGenerator {
 public:
  PerImageNoise(RngKind kind, const std::vector<int64_t>& seeds) {
    for (int64_t s : seeds) gens_.push_back(make_generator(kind, uint64_t(s)));
  }
  Tensor randn(const Shape& shape) override {
    SD_CHECK_ARG(!shape.empty() && shape[0] == int64_t(gens_.size()), "noise: batch size mismatch");
    Shape one = shape;
    one[0] = 1;
    std::vector<Tensor> parts;
    for (auto& g : gens_) parts.push_back(g->randn(one));
    return parts.size() == 1 ? parts[0] : ops::concat(parts, 0);
  }

 private:
  std::vector<std::unique_ptr<NoiseGenerator>> gens_;
};

Tensor repeat_batch(const Tensor& t, int64_t n) {
  if (n == 1) return t;
  return ops::concat(std::vector<Tensor>(size_t(n), t), 0);
}

std::unique_ptr<Sampler> make_sampler(const GenerateRequest& req, const ScheduleConfig& schedule) {
  SamplerOptions so;
  so.sampler = req.sampler;
  so.schedule = req.schedule;
  so.steps = req.steps;
  so.eta = req.eta;
  return Sampler::create(so, schedule);
}

// img2img's first model call (diffusers' get_timesteps): the last min(int(steps * strength), steps)
// steps of the schedule are run. 0 without an init image.
size_t begin_index(const GenerateRequest& req, const Sampler& sampler, bool img2img) {
  if (!img2img) return 0;
  const int init_steps = std::min(int(double(req.steps) * req.strength), req.steps);
  if (init_steps < 1)
    throw InvalidArgument("strength " + std::to_string(req.strength) + " with " + std::to_string(req.steps) +
                          " steps leaves no step to run: raise the strength or the steps (steps * strength >= 1)");
  return size_t(req.steps - init_steps) * size_t(sampler.order());
}

struct HiresUpscaler {
  bool latent = false;
  int mode = 0;  // latent: 0 bilinear, 1 nearest, 2 nearest-exact; pixel: 0 Lanczos, 1 nearest, 2 a model file
};

// Mode 2 of a pixel upscaler: an ESRGAN-family file (`path`).
HiresUpscaler parse_hires_upscaler(const std::string& name, const std::vector<std::string>& names, bool model_file) {
  const auto builtin = hires_upscaler_names();
  for (size_t i = 0; i < builtin.size(); ++i)
    if (name == builtin[i]) return i < 3 ? HiresUpscaler{true, int(i)} : HiresUpscaler{false, int(i - 3)};
  if (model_file) return HiresUpscaler{false, 2};
  std::string list;
  for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
  throw NotFoundError("hires upscaler \"" + name + "\" is not available: use one of " + list +
                      (names.size() == builtin.size() ? " (ESRGAN models need an upscaler folder)" : ""));
}

// torch.nn.functional.interpolate of [N, C, h, w] f32 latents to (oh, ow), align_corners=False, no
// antialias: mode 0 bilinear, 1 nearest (floor(dst * in / out)), 2 nearest-exact (floor((dst + 0.5)
// * in / out)).
Tensor interpolate_latents(const Tensor& x, int64_t oh, int64_t ow, int mode) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = Tensor::empty({N, C, oh, ow}, DType::F32);
  const float* s = x.data<float>();
  float* d = out.data<float>();
  const float sh = float(H) / float(oh), sw = float(W) / float(ow);
  for (int64_t p = 0; p < N * C; ++p) {
    const float* src = s + p * H * W;
    float* dst = d + p * oh * ow;
    for (int64_t y = 0; y < oh; ++y)
      for (int64_t xx = 0; xx < ow; ++xx) {
        if (mode != 0) {
          const float off = mode == 2 ? 0.5f : 0.f;
          const int64_t iy = std::min(int64_t(std::floor((float(y) + off) * sh)), H - 1);
          const int64_t ix = std::min(int64_t(std::floor((float(xx) + off) * sw)), W - 1);
          dst[y * ow + xx] = src[iy * W + ix];
          continue;
        }
        const float fy = std::max(sh * (float(y) + 0.5f) - 0.5f, 0.f),
                    fx = std::max(sw * (float(xx) + 0.5f) - 0.5f, 0.f);
        const int64_t y0 = int64_t(fy), x0 = int64_t(fx);
        const int64_t y1 = y0 + (y0 < H - 1 ? 1 : 0), x1 = x0 + (x0 < W - 1 ? 1 : 0);
        const float ly1 = fy - float(y0), ly0 = 1.f - ly1, lx1 = fx - float(x0), lx0 = 1.f - lx1;
        dst[y * ow + xx] = ly0 * (lx0 * src[y0 * W + x0] + lx1 * src[y0 * W + x1]) +
                           ly1 * (lx0 * src[y1 * W + x0] + lx1 * src[y1 * W + x1]);
      }
  }
  return out;
}

RgbImage upscale_image(const RgbImage& im, int w, int h, const HiresUpscaler& up) {
  RgbImage out;
  out.width = w;
  out.height = h;
  out.pixels = resize_image(im.pixels.data(), im.width, im.height, 3, w, h,
                            up.mode == 0 ? ResizeFilter::Lanczos : ResizeFilter::Nearest);
  return out;
}

// [1, 3, H, W] in [-1, 1], as diffusers' VaeImageProcessor: 2 * (u8 / 255) - 1 in f32.
Tensor image_tensor(const RgbImage& im) {
  const int64_t H = im.height, W = im.width;
  Tensor t = Tensor::empty({1, 3, H, W}, DType::F32);
  float* p = t.data<float>();
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t k = 0; k < H * W; ++k) p[c * H * W + k] = 2.0f * (float(im.pixels[size_t(k * 3 + c)]) / 255.0f) - 1.0f;
  return t;
}

}  // namespace

std::unique_ptr<StableDiffusion> StableDiffusion::load(const std::string& path, const LoadOptions& opt) {
  // Bad options fail before any file is read.
  if (opt.prediction_type)
    SD_CHECK_ARG(*opt.prediction_type == "epsilon" || *opt.prediction_type == "v_prediction",
                 "prediction type must be epsilon or v_prediction, got \"" + *opt.prediction_type + "\"");
  if (opt.scheduler_config_path && !std::filesystem::is_regular_file(*opt.scheduler_config_path))
    throw NotFoundError("scheduler config not found: " + *opt.scheduler_config_path);
  if (opt.embeddings_dir && !std::filesystem::is_directory(*opt.embeddings_dir))
    throw NotFoundError("embeddings directory not found: " + *opt.embeddings_dir);
  if (!device_compiled(opt.device.type))
    throw UnsupportedError("device " + opt.device.str() +
                           " is not available in this build: rebuild with -DSDSERVE_WITH_CUDA=ON, or use --device cpu");
#ifdef SDSERVE_WITH_CUDA
  if (opt.device.type == DeviceType::CUDA) cuda::require_device(opt.device.index);
#endif
  SD_CHECK_ARG(opt.max_prompt_chunks >= 1, "max prompt chunks must be at least 1");
  auto sd = std::make_unique<StableDiffusion>();
  sd->loras_ = std::make_unique<LoraLibrary>(opt.lora_dir, opt.lora_cache_bytes);  // a missing folder: NotFound
  sd->max_prompt_chunks_ = opt.max_prompt_chunks;
  if (opt.upscaler_dir && !std::filesystem::is_directory(*opt.upscaler_dir))
    throw NotFoundError("upscaler directory not found: " + *opt.upscaler_dir);
  sd->upscaler_dir_ = opt.upscaler_dir;
  sd->files_ = std::make_unique<ModelFiles>(ModelFiles::open(path));
  const ModelFiles& m = *sd->files_;
  const ModelInfo& info = m.info();
  if (info.family != ModelFamily::SD1 && info.family != ModelFamily::SD2)
    throw UnsupportedError(path + ": " + family_name(info.family) + " models are not supported yet (SD1.x, SD2.x are)");
  for (const char* c : {"text_encoder", "unet", "vae"})
    if (std::find(info.components.begin(), info.components.end(), c) == info.components.end())
      throw ModelFormatError(path + ": the model has no " + c);

  TextEncoderOptions te;
  te.dtype = opt.dtype;
  te.device = opt.device;
  te.head_dim = opt.text_head_dim;
  sd->text_encoder_ = std::make_unique<ClipTextModel>(load_text_encoder(m, te));
  if (opt.tokenizer_dir) {
    sd->tokenizer_ = std::make_unique<ClipTokenizer>(ClipTokenizer::from_dir(*opt.tokenizer_dir));
  } else {
    sd->tokenizer_ = std::make_unique<ClipTokenizer>(model_tokenizer(m));
  }

  if (opt.embeddings_dir) {
    sd->embeddings_ = load_embeddings_dir(*opt.embeddings_dir, sd->text_encoder_->config().hidden_size);
    for (const TextualInversion& e : sd->embeddings_)
      sd->embedding_names_.push_back({sd->tokenizer_->tokenize(e.name), e.vectors.size(0)});
  }

  UNetConfig ucfg;
  VAEConfig vcfg;
  WeightSource usrc = m.component("unet"), vsrc = m.component("vae");
  if (info.layout == ModelLayout::Diffusers) {
    ucfg = UNetConfig::from_json(m.component_config("unet"));
    vcfg = VAEConfig::from_json(m.component_config("vae"));
    const auto sched_path = std::filesystem::path(info.path) / "scheduler" / "scheduler_config.json";
    if (std::filesystem::is_regular_file(sched_path))
      sd->schedule_ = ScheduleConfig::from_json(read_json_file(sched_path));
  } else {
    ucfg = infer_unet_config_ldm(usrc, info.family, opt.ldm);
    vcfg = infer_vae_config_ldm(vsrc, opt.ldm.norm_num_groups);
    usrc = usrc.with_renames(std::make_shared<const NameMap>(unet_ldm_name_map(ucfg)));
    vsrc = vsrc.with_renames(std::make_shared<const NameMap>(vae_ldm_name_map(vcfg)));
    // Single files carry no scheduler config: SD1.5's, with the prediction type diffusers'
    // from_single_file assumes (SD2 files are SD2.1-768, v-prediction; SD2-base needs the
    // sidecar or the option), unless an A1111 sidecar <checkpoint>.yaml says otherwise.
    if (info.family == ModelFamily::SD2) sd->schedule_.prediction_type = "v_prediction";
    if (auto pt = sidecar_prediction_type(info.path)) sd->schedule_.prediction_type = *pt;
  }
  if (opt.scheduler_config_path) sd->schedule_ = ScheduleConfig::from_json(read_json_file(*opt.scheduler_config_path));
  if (opt.prediction_type) sd->schedule_.prediction_type = *opt.prediction_type;
  sd->device_ = opt.device;
  sd->dtype_ = opt.dtype;
  sd->unet_ = std::make_unique<UNet>(UNet::load(ucfg, usrc.with_device(opt.device), opt.dtype));
  sd->vae_ = std::make_unique<VAE>(VAE::load(vcfg, vsrc.with_device(opt.device), opt.dtype));
  sd->vae_scale_ = 1 << (vcfg.block_out_channels.size() - 1);
  if (ucfg.cross_attention_dim != sd->text_encoder_->config().hidden_size)
    throw ModelFormatError(path + ": UNet cross-attention width " + std::to_string(ucfg.cross_attention_dim) +
                           " does not match the text encoder (" +
                           std::to_string(sd->text_encoder_->config().hidden_size) + ")");
  sd->patcher_ = std::make_unique<WeightPatcher>(patch_targets(sd->text_encoder_.get(), sd->unet_.get()));
  return sd;
}

std::vector<std::string> hires_upscaler_names() {
  return {"Latent", "Latent (nearest)", "Latent (nearest-exact)", "Lanczos", "Nearest"};
}

GenerateRequest hires_second_pass(const GenerateRequest& req) {
  GenerateRequest r = req;
  const HiresFix& h = req.hires;
  r.hires = HiresFix{};
  double w = h.width, hh = h.height;
  if (w <= 0 && hh <= 0) {
    w = req.width * h.scale;
    hh = req.height * h.scale;
  } else if (w <= 0) {
    w = hh * req.width / req.height;
  } else if (hh <= 0) {
    hh = w * req.height / req.width;
  }
  r.width = std::max(8, int(w) / 8 * 8);
  r.height = std::max(8, int(hh) / 8 * 8);
  if (h.steps > 0) r.steps = h.steps;
  r.strength = h.denoise;
  r.init_image = nullptr;
  r.mask = nullptr;
  return r;
}

std::optional<std::string> sidecar_prediction_type(const std::string& checkpoint_path) {
  std::filesystem::path yaml(checkpoint_path);
  yaml.replace_extension(".yaml");
  std::ifstream in(yaml);
  if (!in) return std::nullopt;
  std::string line;
  while (std::getline(in, line)) {
    const size_t k = line.find("parameterization:");
    if (k == std::string::npos || line.find('#') < k) continue;
    std::string v = line.substr(k + 17);
    v.erase(
        std::remove_if(v.begin(), v.end(), [](char c) { return c == '"' || c == '\'' || std::isspace(uint8_t(c)); }),
        v.end());
    if (const size_t hash = v.find('#'); hash != std::string::npos) v.resize(hash);
    if (v == "v") return "v_prediction";
    if (v == "eps") return "epsilon";
    throw UnsupportedError(yaml.string() + ": parameterization \"" + v + "\" is not supported (eps, v)");
  }
  return std::nullopt;
}

void validate_request(const GenerateRequest& r) {
  auto check_size = [&](const char* what, int v) {
    SD_CHECK_ARG(v >= 8 && v <= 8192 && v % 8 == 0,
                 std::string(what) + " must be a multiple of 8 between 8 and 8192, got " + std::to_string(v));
  };
  check_size("width", r.width);
  check_size("height", r.height);
  SD_CHECK_ARG(r.steps >= 1 && r.steps <= 1000, "steps must be between 1 and 1000, got " + std::to_string(r.steps));
  SD_CHECK_ARG(std::isfinite(r.cfg_scale) && r.cfg_scale >= 0 && r.cfg_scale <= 100,
               "cfg scale must be between 0 and 100");
  SD_CHECK_ARG(r.batch_size >= 1 && r.batch_size <= 64, "batch size must be between 1 and 64");
  SD_CHECK_ARG(r.clip_skip >= 1, "clip skip must be at least 1 (1 = last layer)");
  SD_CHECK_ARG(r.seed >= -1 && r.seed <= std::numeric_limits<int64_t>::max() - 64,
               "seed must be -1 (random) or a non-negative integer");
  SD_CHECK_ARG(std::isfinite(r.guidance_rescale) && r.guidance_rescale >= 0 && r.guidance_rescale <= 1,
               "guidance rescale must be between 0 and 1");
  SD_CHECK_ARG(std::isfinite(r.eta) && r.eta >= 0 && r.eta <= 1, "eta must be between 0 and 1");
  parse_sampler(r.sampler, r.schedule);  // throws with the list of valid names
  // Extra networks: a malformed <lora:...> multiplier is a bad request. Hypernetworks are not
  // applied, so asking for one fails rather than being silently ignored. Other tags A1111 would
  // skip as unknown networks are removed from the prompt and ignored, as there.
  const ExtraNetworkPrompt extra = parse_extra_networks(r.prompt);
  lora_calls(extra.calls);
  for (const ExtraNetworkCall& c : extra.calls)
    if (c.network == "hypernet")
      throw UnsupportedError("hypernetworks are not supported (prompt asks for <hypernet:" +
                             (c.items.empty() ? std::string() : c.items[0]) + ">)");
  if (r.init_image) {
    const RgbImage& im = *r.init_image;
    if (r.init_latent_resize) {
      SD_CHECK_ARG(!r.mask, "latent upscale (resize mode 3) is for img2img without a mask");
      SD_CHECK_ARG(im.width >= 8 && im.height >= 8 && im.width <= 8192 && im.height <= 8192 && im.width % 8 == 0 &&
                       im.height % 8 == 0,
                   "init image for latent upscale must be 8 to 8192 pixels a side, multiples of 8; got " +
                       std::to_string(im.width) + "x" + std::to_string(im.height));
    } else {
      SD_CHECK_ARG(im.width == r.width && im.height == r.height,
                   "init image is " + std::to_string(im.width) + "x" + std::to_string(im.height) +
                       " but the request is " + std::to_string(r.width) + "x" + std::to_string(r.height) +
                       ": resize it first (pipeline/img2img.h)");
    }
    SD_CHECK_ARG(im.pixels.size() == size_t(im.width) * size_t(im.height) * 3, "init image: wrong number of pixels");
    SD_CHECK_ARG(std::isfinite(r.strength) && r.strength > 0 && r.strength <= 1,
                 "strength (denoising strength) must be in (0, 1], got " + std::to_string(r.strength));
    SD_CHECK_ARG(std::min(int(double(r.steps) * r.strength), r.steps) >= 1,
                 "strength " + std::to_string(r.strength) + " with " + std::to_string(r.steps) +
                     " steps leaves no step to run: raise the strength or the steps (steps * strength >= 1)");
  }
  if (r.mask) {
    SD_CHECK_ARG(r.init_image != nullptr, "a mask needs an init image (inpaint)");
    SD_CHECK_ARG(r.mask->width == r.width && r.mask->height == r.height,
                 "mask is " + std::to_string(r.mask->width) + "x" + std::to_string(r.mask->height) +
                     " but the request is " + std::to_string(r.width) + "x" + std::to_string(r.height));
    SD_CHECK_ARG(r.mask->pixels.size() == size_t(r.mask->width) * size_t(r.mask->height),
                 "mask: wrong number of pixels");
  }
  if (r.hires.enabled) {
    const HiresFix& h = r.hires;
    SD_CHECK_ARG(!r.init_image, "the hires fix is for txt2img; for img2img, generate at the size you want");
    SD_CHECK_ARG(std::isfinite(h.scale) && h.scale >= 1 && h.scale <= 8, "hires scale must be between 1 and 8");
    SD_CHECK_ARG(h.width >= 0 && h.height >= 0 && h.width <= 8192 && h.height <= 8192,
                 "hires resize width/height must be between 0 (use the scale) and 8192");
    SD_CHECK_ARG(h.steps >= 0 && h.steps <= 1000, "hires steps must be between 0 (same as steps) and 1000");
    SD_CHECK_ARG(std::isfinite(h.denoise) && h.denoise > 0 && h.denoise <= 1,
                 "hires denoising strength must be in (0, 1]");
    SD_CHECK_ARG(!h.upscaler.empty() && h.upscaler.size() <= 256, "hires upscaler: give a name");
    const GenerateRequest second = hires_second_pass(r);
    validate_request(second);  // the target size
    SD_CHECK_ARG(std::min(int(double(second.steps) * second.strength), second.steps) >= 1,
                 "hires denoising strength " + std::to_string(h.denoise) + " with " + std::to_string(second.steps) +
                     " hires steps leaves no step to run: raise one of them");
  }
  for (const LoraRequest& l : r.loras) {
    SD_CHECK_ARG(l.name.empty() != l.path.empty(), "a LoRA is given by a name or by a path, not both nor neither");
    SD_CHECK_ARG(std::isfinite(l.te_multiplier) && std::isfinite(l.unet_multiplier) &&
                     std::abs(l.te_multiplier) <= 1000 && std::abs(l.unet_multiplier) <= 1000,
                 "LoRA '" + l.name + l.path + "': multipliers must be finite numbers within +-1000");
  }
}

void StableDiffusion::validate(const GenerateRequest& r) const {
  validate_request(r);
  // Unknown LoRA names fail here, before any work, with the list of what is available.
  std::vector<std::string> names;
  for (const LoraCall& c : lora_calls(parse_extra_networks(r.prompt).calls)) names.push_back(c.name);
  for (const LoraRequest& l : r.loras)
    if (!l.name.empty()) names.push_back(l.name);
  for (const std::string& n : names)
    if (!loras_->has(n)) loras_->by_name(n);      // throws NotFoundError listing the names
  chunks(parse_extra_networks(r.prompt).prompt);  // too long: InvalidArgument
  chunks(r.negative_prompt);
  if (r.hires.enabled)
    parse_hires_upscaler(r.hires.upscaler, upscaler_names(), !upscaler_path(r.hires.upscaler).empty());
  const int64_t in = unet_->config().in_channels, lc = vae_->config().latent_channels;
  if (in != lc && in != 2 * lc + 1)
    throw UnsupportedError("UNet with " + std::to_string(in) + " input channels: only " + std::to_string(lc) +
                           " (normal) and " + std::to_string(2 * lc + 1) + " (inpainting) are supported");
  SD_CHECK_ARG(r.clip_skip <= text_encoder_->config().num_layers,
               "clip skip must be between 1 and " + std::to_string(text_encoder_->config().num_layers));
}

ClipTokenizer model_tokenizer(const ModelFiles& model) {
  if (auto dir = model.tokenizer_dir()) return ClipTokenizer::from_dir(dir->string());
  return ClipTokenizer::bundled();
}

std::vector<int32_t> context_ids(const ClipTokenizer& tok, const std::string& text, size_t length) {
  std::vector<int32_t> ids = tok.encode(text);
  if (ids.size() > length) {  // truncation=True keeps BOS ... EOS
    ids.resize(length);
    ids.back() = tok.eos_id();
  }
  ids.resize(length, tok.pad_id());
  return ids;
}

std::vector<PromptChunk> StableDiffusion::chunks(const std::string& text) const {
  ChunkOptions co;
  co.max_chunks = max_prompt_chunks_;
  return chunk_prompt(*tokenizer_, text, co, embedding_names_);
}

PromptTokenCount StableDiffusion::count_tokens(const std::string& prompt) const {
  return count_prompt_tokens(chunks(parse_extra_networks(prompt).prompt), tokenizer_->eos_id());
}

Tensor StableDiffusion::encode_prompt(const std::string& text, int clip_skip) const {
  SD_CHECK_ARG(text_encoder_->config().max_positions >= 77, "this text encoder has " +
                                                                std::to_string(text_encoder_->config().max_positions) +
                                                                " positions; prompts need 77 (75 tokens + BOS + EOS)");
  std::vector<Tensor> parts;
  for (const PromptChunk& c : chunks(text)) {
    std::vector<ClipTextModel::EmbeddingFix> fixes;
    for (const PromptChunk::Fix& f : c.fixes) fixes.push_back({f.position + 1, embeddings_[f.embedding].vectors});
    Tensor z =
        text_encoder_->forward(Tensor::from_ids(c.ids, {1, int64_t(c.ids.size())}), clip_skip, false, fixes).hidden;
    const bool weighted = std::any_of(c.multipliers.begin(), c.multipliers.end(), [](float m) { return m != 1.f; });
    if (weighted) {
      // A1111's "Original" emphasis: scale each token's hidden state, then rescale everything so
      // the mean over the chunk is what it was (on the host, sums in double; 77 x D values).
      const Device dev = z.device();
      const DType dt = z.dtype();
      Tensor h = z.to(DType::F32).to(Device::cpu()).contiguous();
      float* p = h.data<float>();
      const int64_t T = h.size(1), D = h.size(2);
      double before = 0, after = 0;
      for (int64_t i = 0; i < T * D; ++i) before += p[i];
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) {
          float& v = p[t * D + d];
          v *= c.multipliers[size_t(t)];
          after += v;
        }
      // A weighted mean of exactly zero (e.g. every token weighted 0) would make A1111 divide by
      // zero and return NaN; the weights are kept unrescaled instead.
      float ratio = after != 0 ? float(before / after) : 1.f;
      if (!std::isfinite(ratio)) ratio = 1.f;
      for (int64_t i = 0; i < T * D; ++i) p[i] *= ratio;
      z = h.to(dt).to(dev);
    }
    parts.push_back(z);
  }
  return parts.size() == 1 ? parts[0] : ops::concat(parts, 1);
}

std::vector<AppliedNetwork> StableDiffusion::resolve_loras(const GenerateRequest& req) const {
  std::vector<AppliedNetwork> set;
  for (const LoraCall& c : lora_calls(parse_extra_networks(req.prompt).calls))
    set.push_back({loras_->by_name(c.name), c.te_multiplier, c.unet_multiplier});
  for (const LoraRequest& l : req.loras)
    set.push_back(
        {l.name.empty() ? loras_->by_path(l.path) : loras_->by_name(l.name), l.te_multiplier, l.unet_multiplier});
  return set;
}

void StableDiffusion::apply_loras(const std::vector<AppliedNetwork>& set) {
  std::lock_guard<std::mutex> lk(run_mu_);
  patcher_->apply(set);
}

std::string StableDiffusion::weights_digest() const {
  std::lock_guard<std::mutex> lk(run_mu_);
  return patcher_->digest();
}

std::string StableDiffusion::model_name() const {
  const std::string& path = info().path;
  std::string name = std::filesystem::path(path).stem().string();
  if (name.empty()) name = std::filesystem::path(path).parent_path().filename().string();
  return name;
}

std::string StableDiffusion::model_hash() const {
  const std::string& path = info().path;
  std::call_once(hash_once_, [&] {
    if (std::filesystem::is_regular_file(path)) model_hash_ = a1111_model_hash(path);
  });
  return model_hash_;
}

GenerationParams StableDiffusion::infotext_params(const GenerateRequest& req, const GeneratedImage& im) const {
  GenerationParams gp;
  gp.prompt = req.prompt;
  std::string lora_hashes;
  const auto tags = lora_calls(parse_extra_networks(req.prompt).calls);
  const auto nets = resolve_loras(req);
  for (size_t i = 0; i < nets.size(); ++i) {
    std::string name = i < tags.size() ? tags[i].name : nets[i].network->name();
    if (i >= tags.size()) {
      char w[32];
      std::snprintf(w, sizeof w, "%g", double(nets[i].unet_multiplier));
      gp.prompt += " <lora:" + name + ":" + w + ">";
    }
    std::erase_if(name, [](char c) { return c == ':' || c == ','; });
    lora_hashes += (lora_hashes.empty() ? "" : ", ") + name + ": " + nets[i].network->short_hash();
  }
  const SamplerChoice choice = parse_sampler(req.sampler, req.schedule);
  gp.negative_prompt = req.negative_prompt;
  gp.steps = req.steps;
  gp.sampler = sampler_name(choice.sampler);
  gp.schedule_type = schedule_name(choice.schedule);
  gp.cfg_scale = req.cfg_scale;
  gp.seed = im.seed;
  gp.width = im.width;
  gp.height = im.height;
  if (req.init_image) gp.denoising_strength = float(req.strength);
  if (req.hires.enabled) {
    // A1111 writes the first pass's size and the hires settings.
    const GenerateRequest second = hires_second_pass(req);
    gp.width = req.width;
    gp.height = req.height;
    gp.denoising_strength = float(req.hires.denoise);
    char buf[64];
    if (req.hires.width > 0 || req.hires.height > 0) {
      std::snprintf(buf, sizeof buf, "%dx%d", second.width, second.height);
      gp.set_extra("Hires resize", buf);
    } else {
      std::snprintf(buf, sizeof buf, "%g", req.hires.scale);
      gp.set_extra("Hires upscale", buf);
    }
    if (req.hires.steps > 0) gp.set_extra("Hires steps", std::to_string(req.hires.steps));
    gp.set_extra("Hires upscaler", req.hires.upscaler);
  }
  gp.model_name = model_name();
  gp.model_hash = model_hash();
  gp.clip_skip = req.clip_skip;
  if (req.rng == RngKind::CPU) gp.set_extra("RNG", "CPU");
  if (!lora_hashes.empty()) gp.set_extra("Lora hashes", lora_hashes);
  return gp;
}

namespace {
// A VAE pass, tiled when asked. An untiled pass that runs out of device memory is retried tiled
// (diffusers' tile layout), so a large image still comes out where it would not fit whole; the
// result then differs slightly from an untiled one, exactly as with --vae-tiling.
template <class Whole, class Tiled>
Tensor vae_pass(bool tiled, const char* what, Whole whole, Tiled tiles) {
  if (tiled) return tiles();
  try {
    return whole();
  } catch (const ResourceError& e) {
    std::fprintf(stderr, "sdserve: warning: VAE %s ran out of memory (%s); retrying in tiles\n", what, e.what());
    return tiles();
  }
}
}  // namespace

Tensor StableDiffusion::sample_latents(const Tensor& image, bool tiled, NoiseGenerator& noise, int64_t n) const {
  // The VAE runs on the memory the UNet's graphs leave idle between steps; its result comes to
  // the host inside, so none of that memory stays in use.
  Tensor moments;
  unet_->lend_idle_graph_memory([&] {
    moments = vae_pass(
                  tiled, "encode", [&] { return vae_->encode_moments(image); },
                  [&] { return vae_->encode_moments_tiled(image); })
                  .to(DType::F32)
                  .to(Device::cpu())
                  .contiguous();
  });
  const int64_t lc = moments.size(1) / 2, plane = moments.size(2) * moments.size(3), per = lc * plane;
  SD_CHECK_ARG(moments.size(0) == 1 || moments.size(0) == n, "sample_latents: image batch mismatch");
  const int64_t image_stride = moments.size(0) == 1 ? 0 : 2 * per;
  const Tensor eps = noise.randn({n, lc, moments.size(2), moments.size(3)});
  const VAEConfig& vc = vae_->config();
  Tensor out = Tensor::empty(eps.shape(), DType::F32);
  const float* mean = moments.data<float>();
  const float* logvar = mean + per;
  const float* e = eps.data<float>();
  float* o = out.data<float>();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t k = 0; k < per; ++k) {
      const int64_t at = b * image_stride + k;
      const float sd = std::exp(0.5f * std::clamp(logvar[at], -30.0f, 20.0f));
      o[b * per + k] = vc.scaling_factor * ((mean[at] + sd * e[b * per + k]) - vc.shift_factor);
    }
  return out;
}

std::string StableDiffusion::upscaler_path(const std::string& name) const {
  if (!upscaler_dir_ || name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name == "." || name == "..")
    return {};
  for (const char* ext : {".safetensors", ".pth", ".pt"}) {
    const std::filesystem::path p = std::filesystem::path(*upscaler_dir_) / (name + ext);
    if (std::filesystem::is_regular_file(p)) return p.string();
  }
  return {};
}

std::vector<std::string> StableDiffusion::upscaler_names() const {
  std::vector<std::string> names = hires_upscaler_names();
  if (!upscaler_dir_) return names;
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(*upscaler_dir_, ec)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".pth" || ext == ".pt"))
      files.push_back(e.path().stem().string());
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  names.insert(names.end(), files.begin(), files.end());
  return names;
}

size_t StableDiffusion::model_calls(const GenerateRequest& req) const {
  const auto calls = [&](const GenerateRequest& r, bool img2img) {
    const auto sampler = make_sampler(r, schedule_);
    return sampler->num_model_calls() - begin_index(r, *sampler, img2img);
  };
  if (!req.hires.enabled) return calls(req, req.init_image != nullptr);
  return calls(req, false) + calls(hires_second_pass(req), true);
}

std::vector<GeneratedImage> StableDiffusion::generate(const GenerateRequest& req, const ProgressFn& progress,
                                                      const LatentsFn& on_latents) const {
  validate(req);
  const std::vector<AppliedNetwork> networks = resolve_loras(req);
  std::lock_guard<std::mutex> lk(run_mu_);
  patcher_->apply(networks);
  int64_t seed = req.seed;
  if (seed < 0) seed = int64_t(std::random_device{}() & 0xFFFFFFFFu);
  std::vector<int64_t> seeds;
  for (int64_t i = 0; i < req.batch_size; ++i) seeds.push_back(seed + i);
  const int total = int(model_calls(req));
  int done = 0;
  const auto tick = [&](const Tensor& latents) {
    ++done;
    if (on_latents) on_latents(done, latents);
    return !progress || progress(done, total);
  };
  if (!req.hires.enabled) return decode(sample(req, seeds, {}, tick), req.vae_tiling, seeds);

  // Hires fix (A1111's enable_hr): the txt2img image of the same seed, upscaled, then img2img at the
  // target size with the hires steps and denoising strength and fresh noise from the same seeds.
  const GenerateRequest second = hires_second_pass(req);
  const Tensor first = sample(req, seeds, {}, tick);
  const std::string up_path = upscaler_path(req.hires.upscaler);
  const HiresUpscaler up = parse_hires_upscaler(req.hires.upscaler, upscaler_names(), !up_path.empty());
  PassInput in;
  Tensor latents, pixels;
  if (up.latent) {
    latents = interpolate_latents(first, second.height / vae_scale_, second.width / vae_scale_, up.mode);
    in.latents = &latents;
  } else {
    const std::vector<GeneratedImage> images = decode(first, req.vae_tiling, seeds);
    std::vector<Tensor> parts;
    for (const GeneratedImage& im : images) {
      RgbImage rgb;
      rgb.width = im.width;
      rgb.height = im.height;
      rgb.pixels = im.rgb;
      if (up.mode == 2) {
        const Upscaler net = Upscaler::open(up_path, device_, dtype_);
        const Rgb8Image big = net.upscale_to(rgb.pixels.data(), rgb.width, rgb.height, second.width, second.height);
        rgb.width = big.width;
        rgb.height = big.height;
        rgb.pixels = big.rgb;
      } else {
        rgb = upscale_image(rgb, second.width, second.height, up);
      }
      parts.push_back(image_tensor(rgb));
    }
    pixels = parts.size() == 1 ? parts[0] : ops::concat(parts, 0);
    in.pixels = &pixels;
  }
  return decode(sample(second, seeds, in, tick), req.vae_tiling, seeds);
}

struct StableDiffusion::Pass {
  const GenerateRequest* req = nullptr;
  int64_t n = 1;
  bool cfg = false, inpaint_model = false;
  Tensor context;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<NoiseGenerator> noise;
  size_t begin = 0, calls = 0;
  int64_t lc = 4, lh = 0, lw = 0;
  Tensor latents, image_latents, first_noise, mask_latent, masked_image_latents;
};

std::unique_ptr<StableDiffusion::Pass> StableDiffusion::start_pass(const GenerateRequest& req,
                                                                   const std::vector<int64_t>& seeds,
                                                                   const PassInput& in) const {
  const int64_t n = req.batch_size;
  const bool cfg = req.cfg_scale > 1.f;  // diffusers: guidance only when scale > 1
  // Extra-network tags come out of the positive prompt (A1111 leaves the negative one as is).
  const ExtraNetworkPrompt extra = parse_extra_networks(req.prompt);
  Tensor cond = encode_prompt(extra.prompt, req.clip_skip);
  Tensor context = repeat_batch(cond, n);
  if (cfg) {
    Tensor uncond = encode_prompt(req.negative_prompt, req.clip_skip);
    // Prompts of different lengths: the shorter one is padded with the empty prompt's chunk
    // (A1111's pad_cond_uncond), so cond and uncond run as one batch.
    if (uncond.size(1) != cond.size(1)) {
      const Tensor empty = encode_prompt("", req.clip_skip);
      Tensor& shorter = uncond.size(1) < cond.size(1) ? uncond : cond;
      const int64_t repeats = std::abs(cond.size(1) - uncond.size(1)) / empty.size(1);
      std::vector<Tensor> parts{shorter};
      for (int64_t k = 0; k < repeats; ++k) parts.push_back(empty);
      shorter = ops::concat(parts, 1);
    }
    context = ops::concat({repeat_batch(uncond, n), repeat_batch(cond, n)}, 0);
  }

  auto pass = std::make_unique<Pass>();
  pass->sampler = make_sampler(req, schedule_);
  Sampler* sampler = pass->sampler.get();
  sampler->set_noise_seeds(req.rng, std::vector<uint64_t>(seeds.begin(), seeds.end()));
  const bool img2img = req.init_image || in.pixels || in.latents;
  const size_t begin = begin_index(req, *sampler, img2img);
  sampler->set_begin_index(begin);
  pass->noise = std::make_unique<PerImageNoise>(req.rng, seeds);
  NoiseGenerator& noise = *pass->noise;
  const int64_t lc = vae_->config().latent_channels;
  const int64_t lh = req.height / vae_scale_, lw = req.width / vae_scale_;
  const Shape latent_shape{n, lc, lh, lw};
  const bool inpaint_model = unet_->config().in_channels == lc * 2 + 1;

  // Initial latents, drawing from each image's generator in diffusers' order: the image's latent
  // sample (img2img; inpaint when the UNet is 4-channel or strength < 1), the noise, then (inpaint)
  // the masked image's latent sample.
  const bool image_mode = img2img || inpaint_model;
  Tensor latents, image_latents, first_noise, mask_latent, masked_image_latents;
  if (!image_mode) {
    latents = noise.randn(latent_shape);
    const float s = sampler->init_noise_sigma();
    float* p = latents.data<float>();
    for (int64_t i = 0; i < latents.numel(); ++i) p[i] *= s;
  } else {
    // txt2img on an inpainting model: everything masked, so the image itself is never seen.
    const Tensor init = in.pixels        ? *in.pixels
                        : req.init_image ? image_tensor(*req.init_image)
                                         : Tensor::zeros({1, 3, req.height, req.width}, DType::F32);
    const bool masked = req.mask != nullptr || inpaint_model;
    const bool full_strength = !img2img || req.strength >= 1.0;
    if (in.latents)
      image_latents = in.latents->clone();
    else if (!masked || !inpaint_model || !full_strength)
      image_latents = sample_latents(init, req.vae_tiling, noise, n);
    if (image_latents.defined() && (image_latents.size(2) != lh || image_latents.size(3) != lw))
      image_latents = interpolate_latents(image_latents, lh, lw, 0);  // latent upscale: bilinear
    if (req.mask && image_latents.defined() &&
        (req.masked_content == MaskedContent::LatentNoise || req.masked_content == MaskedContent::LatentNothing)) {
      // A1111's latent noise / latent nothing: the masked area's latents become fresh noise from
      // each image's seed (its own generators, as A1111's create_random_tensors) or zeros.
      Tensor fresh;
      if (req.masked_content == MaskedContent::LatentNoise) fresh = PerImageNoise(req.rng, seeds).randn(latent_shape);
      float* il = image_latents.data<float>();
      const int64_t plane = lh * lw;
      for (int64_t k = 0; k < image_latents.numel(); ++k) {
        const int64_t p = k % plane;
        const size_t y = size_t(p / lw) * size_t(vae_scale_), x = size_t(p % lw) * size_t(vae_scale_);
        if (req.mask->pixels[y * size_t(req.width) + x] >= 128) il[k] = fresh.defined() ? fresh.data<float>()[k] : 0.f;
      }
    }
    first_noise = noise.randn(latent_shape);
    if (masked && full_strength) {
      latents = first_noise.clone();
      const float s = sampler->init_noise_sigma();
      float* p = latents.data<float>();
      for (int64_t i = 0; i < latents.numel(); ++i) p[i] *= s;
    } else {
      latents = sampler->add_noise(image_latents, first_noise, begin);
    }
    if (masked) {
      // Binarized at 0.5 (diffusers' mask processor: white >= 128 is repainted); the masked image is
      // the init image times (mask < 0.5) in [-1, 1]; the latent mask is the binary mask at every
      // 8th pixel (nearest interpolation to the latent size).
      const int64_t H = req.height, W = req.width;
      std::vector<uint8_t> bin(size_t(H * W), 1);
      if (req.mask)
        for (size_t k = 0; k < bin.size(); ++k) bin[k] = req.mask->pixels[k] >= 128;
      Tensor masked_image = init.clone();
      float* mi = masked_image.data<float>();
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t k = 0; k < H * W; ++k) mi[c * H * W + k] = mi[c * H * W + k] * float(bin[size_t(k)] == 0);
      std::vector<float> m(size_t(n * lh * lw));
      for (int64_t b = 0; b < n; ++b)
        for (int64_t y = 0; y < lh; ++y)
          for (int64_t x = 0; x < lw; ++x)
            m[size_t((b * lh + y) * lw + x)] = bin[size_t(y * vae_scale_ * W + x * vae_scale_)];
      mask_latent = Tensor::from_vector(m, {n, 1, lh, lw});
      masked_image_latents = sample_latents(masked_image, req.vae_tiling, noise, n);
    }
  }

  pass->req = &req;
  pass->n = n;
  pass->cfg = cfg;
  pass->inpaint_model = inpaint_model;
  pass->context = context;
  pass->begin = begin;
  pass->calls = sampler->num_model_calls();
  pass->lc = lc;
  pass->lh = lh;
  pass->lw = lw;
  pass->latents = latents;
  pass->image_latents = image_latents;
  pass->first_noise = first_noise;
  pass->mask_latent = mask_latent;
  pass->masked_image_latents = masked_image_latents;
  return pass;
}

Tensor StableDiffusion::pass_input(Pass& p, size_t i) const {
  Tensor scaled = p.sampler->scale_model_input(p.latents, i);
  // An inpainting UNet's extra input: [latents | mask | masked image latents].
  if (p.inpaint_model) scaled = ops::concat({scaled, p.mask_latent, p.masked_image_latents}, 1);
  return p.cfg ? ops::concat({scaled, scaled}, 0) : scaled;
}

void StableDiffusion::pass_step(Pass& p, size_t i, const Tensor& pred) const {
  const GenerateRequest& req = *p.req;
  const int64_t n = p.n, lc = p.lc, lh = p.lh, lw = p.lw;
  const bool cfg = p.cfg, inpaint_model = p.inpaint_model;
  const size_t calls = p.calls;
  Sampler* sampler = p.sampler.get();
  Tensor& latents = p.latents;
  const Tensor& image_latents = p.image_latents;
  const Tensor& mask_latent = p.mask_latent;
  const Tensor& first_noise = p.first_noise;
  Tensor guided = pred;
  if (cfg) {
    const int64_t per = latents.numel();
    guided = Tensor::empty(latents.shape(), DType::F32);
    const float* u = pred.data<float>();
    const float* c = u + per;
    float* g = guided.data<float>();
    for (int64_t k = 0; k < per; ++k) g[k] = u[k] + req.cfg_scale * (c[k] - u[k]);
    if (req.guidance_rescale > 0.f) {
      // diffusers rescale_noise_cfg: match the std of the text prediction, per sample.
      const int64_t each = per / n;
      for (int64_t b = 0; b < n; ++b) {
        double sc = 0, sg = 0, mc = 0, mg = 0;
        for (int64_t k = 0; k < each; ++k) mc += c[b * each + k], mg += g[b * each + k];
        mc /= double(each), mg /= double(each);
        for (int64_t k = 0; k < each; ++k) {
          sc += std::pow(c[b * each + k] - mc, 2);
          sg += std::pow(g[b * each + k] - mg, 2);
        }
        const double ratio = std::sqrt(sc / double(each - 1)) / std::sqrt(sg / double(each - 1));
        for (int64_t k = 0; k < each; ++k) {
          float& v = g[b * each + k];
          v = float(req.guidance_rescale * (v * ratio) + (1.0 - req.guidance_rescale) * v);
        }
      }
    }
  }
  latents = sampler->step(guided, i, latents, *p.noise);
  if (image_latents.defined() && mask_latent.defined() && !inpaint_model) {
    // 4-channel inpaint: outside the mask, the original noised to the next call's level.
    const Tensor proper = i + 1 < calls ? sampler->add_noise(image_latents, first_noise, i + 1) : image_latents;
    const float* o = proper.data<float>();
    const float* mk = mask_latent.data<float>();
    float* l = latents.data<float>();
    const int64_t per_image = lc * lh * lw, plane = lh * lw;
    for (int64_t k = 0; k < latents.numel(); ++k) {
      const float w = mk[(k / per_image) * plane + k % plane];
      l[k] = (1.0f - w) * o[k] + w * l[k];
    }
  }
}

Tensor StableDiffusion::sample(const GenerateRequest& req, const std::vector<int64_t>& seeds, const PassInput& in,
                               const std::function<bool(const Tensor& latents)>& tick) const {
  const std::unique_ptr<Pass> p = start_pass(req, seeds, in);
  for (size_t i = p->begin; i < p->calls; ++i) {
    const Tensor pred = unet_->forward(pass_input(*p, i), {p->sampler->timesteps()[i]}, p->context)
                            .to(DType::F32)
                            .to(Device::cpu())
                            .contiguous();
    pass_step(*p, i, pred);
    if (tick && !tick(p->latents)) throw Cancelled();
  }
  return p->latents;
}

std::string StableDiffusion::batch_key(const GenerateRequest& req) const {
  validate(req);
  if (req.hires.enabled) return {};
  const SamplerChoice choice = parse_sampler(req.sampler, req.schedule);
  // What the shared UNet calls need alike: input shape and kind, timesteps, weights, CFG layout and
  // the conditioning's length (each request's cond and uncond are padded to the longer of the two).
  const size_t cond_chunks = chunks(parse_extra_networks(req.prompt).prompt).size();
  const size_t uncond_chunks = req.cfg_scale > 1.f ? chunks(req.negative_prompt).size() : 0;
  std::string key = std::string(req.init_image ? "img2img" : "txt2img") + "|" + std::to_string(req.width) + "x" +
                    std::to_string(req.height) + "|" + sampler_name(choice.sampler) + "|" +
                    schedule_name(choice.schedule) + "|" + std::to_string(req.steps) + "|" +
                    (req.cfg_scale > 1.f ? "cfg" : "nocfg") + "|" +
                    std::to_string(std::max(cond_chunks, uncond_chunks)) + "|";
  if (req.init_image) {
    const auto sampler = make_sampler(req, schedule_);
    key += "begin " + std::to_string(begin_index(req, *sampler, true)) + (req.mask ? "|mask" : "|nomask") +
           (req.init_latent_resize ? "|latent-resize " : "|") + std::to_string(req.init_image->width) + "x" +
           std::to_string(req.init_image->height) + "|";
  }
  // The LoRA set, exactly (it is merged into the shared weights): file identity and multipliers.
  for (const AppliedNetwork& a : resolve_loras(req)) {
    char w[64];
    std::snprintf(w, sizeof w, ":%.9g:%.9g;", double(a.te_multiplier), double(a.unet_multiplier));
    key += a.network->name() + "#" + a.network->short_hash() + w;
  }
  return key;
}

void StableDiffusion::generate_batch(const std::vector<GenerateRequest>& reqs, const std::vector<ProgressFn>& progress,
                                     const std::function<void(size_t, BatchResult)>& done,
                                     const std::function<void()>& on_model_call) const {
  SD_CHECK_ARG(progress.empty() || progress.size() == reqs.size(), "generate_batch: one progress function per request");
  if (reqs.empty()) return;
  std::vector<bool> ended(reqs.size(), false);
  const auto finish = [&](size_t k, BatchResult r) {
    if (ended[k]) return;
    ended[k] = true;
    if (done) done(k, std::move(r));
  };
  const auto fail = [&](size_t k) {
    BatchResult r;
    r.error = std::current_exception();
    finish(k, std::move(r));
  };
  try {
    std::string key;
    for (size_t k = 0; k < reqs.size(); ++k) {
      const std::string kk = batch_key(reqs[k]);
      SD_CHECK_ARG(!kk.empty(), "generate_batch: request " + std::to_string(k) + " cannot be batched (hires fix)");
      if (k == 0) key = kk;
      SD_CHECK_ARG(kk == key, "generate_batch: request " + std::to_string(k) + " is not compatible with request 0");
    }
    const std::vector<AppliedNetwork> networks = resolve_loras(reqs[0]);
    std::lock_guard<std::mutex> lk(run_mu_);
    patcher_->apply(networks);
    // Each request's state, prepared as sample() prepares it (its own seeds, noise and encodings).
    std::vector<std::vector<int64_t>> seeds(reqs.size());
    std::vector<std::unique_ptr<Pass>> passes(reqs.size());
    for (size_t k = 0; k < reqs.size(); ++k) {
      try {
        int64_t seed = reqs[k].seed;
        if (seed < 0) seed = int64_t(std::random_device{}() & 0xFFFFFFFFu);
        for (int64_t i = 0; i < reqs[k].batch_size; ++i) seeds[k].push_back(seed + i);
        passes[k] = start_pass(reqs[k], seeds[k], {});
      } catch (...) {
        fail(k);
      }
    }
    size_t begin = 0, calls = 0;
    for (const auto& p : passes)
      if (p) begin = p->begin, calls = p->calls;
    std::vector<int> ticks(reqs.size(), 0);
    const int total = int(calls - begin);
    for (size_t i = begin; i < calls; ++i) {
      std::vector<Tensor> inputs, contexts;
      std::vector<size_t> active;
      for (size_t k = 0; k < reqs.size(); ++k)
        if (passes[k] && !ended[k]) {
          active.push_back(k);
          inputs.push_back(pass_input(*passes[k], i));
          contexts.push_back(passes[k]->context);
        }
      if (active.empty()) break;
      const Tensor input = inputs.size() == 1 ? inputs[0] : ops::concat(inputs, 0);
      const Tensor context = contexts.size() == 1 ? contexts[0] : ops::concat(contexts, 0);
      const Tensor pred = unet_->forward(input, {passes[active[0]]->sampler->timesteps()[i]}, context)
                              .to(DType::F32)
                              .to(Device::cpu())
                              .contiguous();
      if (on_model_call) on_model_call();
      int64_t row = 0;
      for (size_t a = 0; a < active.size(); ++a) {
        const size_t k = active[a];
        const int64_t rows = inputs[a].size(0);
        const Tensor part = pred.narrow(0, row, rows).contiguous();
        row += rows;
        try {
          pass_step(*passes[k], i, part);
          ++ticks[k];
          if (!progress.empty() && progress[k] && !progress[k](ticks[k], total)) {
            BatchResult r;
            r.canceled = true;
            finish(k, std::move(r));
          }
        } catch (...) {
          fail(k);
        }
      }
    }
    // Each request decodes alone, as generate() decodes it.
    for (size_t k = 0; k < reqs.size(); ++k) {
      if (ended[k] || !passes[k]) continue;
      try {
        BatchResult r;
        r.images = decode(passes[k]->latents, reqs[k].vae_tiling, seeds[k]);
        passes[k].reset();
        finish(k, std::move(r));
      } catch (...) {
        fail(k);
      }
    }
  } catch (...) {
    for (size_t k = 0; k < reqs.size(); ++k) fail(k);
  }
}

std::vector<GeneratedImage> StableDiffusion::decode(const Tensor& latents, bool tiled,
                                                    const std::vector<int64_t>& seeds) const {
  const int64_t n = latents.size(0);
  Tensor z = latents.clone();
  {
    const VAEConfig& vc = vae_->config();
    float* p = z.data<float>();
    for (int64_t i = 0; i < z.numel(); ++i) p[i] = p[i] / vc.scaling_factor + vc.shift_factor;
  }
  Tensor images;  // decoded in the memory the UNet's graphs leave idle (see sample_latents)
  unet_->lend_idle_graph_memory([&] {
    images = vae_pass(
                 tiled, "decode", [&] { return vae_->decode(z); }, [&] { return vae_->decode_tiled(z); })
                 .to(DType::F32)
                 .to(Device::cpu())
                 .contiguous();
  });
  std::vector<GeneratedImage> out;
  for (int64_t b = 0; b < n; ++b) {
    GeneratedImage im;
    im.width = int(images.size(3));
    im.height = int(images.size(2));
    im.rgb = image_to_rgb8(images.select(0, b).contiguous());
    im.seed = seeds[size_t(b)];
    out.push_back(std::move(im));
  }
  return out;
}

}  // namespace sdserve
