// sdserve command line. Every failure is one line on stderr and a non-zero exit;
// typed engine errors map to exit codes here and nowhere else.
#include <omp.h>

#include <unistd.h>
#include <CLI/CLI.hpp>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/pull.h"
#include "core/error.h"
#include "cpu/gemm.h"
#include "io/image.h"
#include "io/infotext.h"
#include "io/model_files.h"
#include "io/png.h"
#include "io/resize.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "models/loader.h"
#include "net/hub.h"
#include "pipeline/img2img.h"
#include "pipeline/stable_diffusion.h"
#include "pipeline/tokenizer.h"
#include "pipeline/upscale.h"
#include "server/server.h"

namespace sd = sdserve;

namespace {

int exit_code_for(sd::ErrorKind k) {
  switch (k) {
    case sd::ErrorKind::InvalidArgument:
      return 2;
    case sd::ErrorKind::NotFound:
      return 3;
    case sd::ErrorKind::ModelFormat:
      return 4;
    case sd::ErrorKind::Unsupported:
      return 5;
    case sd::ErrorKind::Io:
      return 6;
    case sd::ErrorKind::Resource:
      return 7;
    case sd::ErrorKind::Internal:
      return 70;
  }
  return 70;
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

sd::ClipTokenizer tokenizer_for(const std::string& model_path) {
  if (model_path.empty()) return sd::ClipTokenizer::bundled();
  return sd::model_tokenizer(sd::ModelFiles::open(model_path));
}

void print_ids(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
}

int cmd_inspect(const std::string& path, bool as_json) {
  const sd::ModelFiles m = sd::ModelFiles::open(path);
  const sd::ModelInfo& i = m.info();
  nlohmann::json j = {
      {"path", i.path},
      {"family", sd::family_name(i.family)},
      {"layout", i.layout == sd::ModelLayout::Diffusers ? "diffusers" : "single-file"},
      {"inpaint", i.inpaint},
      {"unet_in_channels", i.unet_in_channels},
      {"context_dim", i.context_dim},
      {"tensors", i.tensor_count},
      {"weight_bytes", i.weight_bytes},
      {"components", i.components},
  };
  if (as_json) {
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::string comps;
  for (const auto& c : i.components) comps += (comps.empty() ? "" : ", ") + c;
  std::cout << "path:       " << i.path << "\n"
            << "family:     " << sd::family_name(i.family) << (i.inpaint ? " (inpainting)" : "") << "\n"
            << "layout:     " << sd::layout_name(i.layout) << "\n"
            << "tensors:    " << i.tensor_count << "\n"
            << "weights:    " << (i.weight_bytes / (1024.0 * 1024.0)) << " MiB\n"
            << "components: " << (comps.empty() ? "(none)" : comps) << "\n";
  return 0;
}

int cmd_tokenize(const std::string& model, bool from_stdin, const std::vector<std::string>& texts) {
  const sd::ClipTokenizer tok = tokenizer_for(model);
  if (from_stdin) {
    std::string line;
    while (std::getline(std::cin, line)) print_ids(tok.encode(line));
    return 0;
  }
  if (texts.empty()) throw sd::InvalidArgument("tokenize: give TEXT or --stdin");
  std::string joined;
  for (size_t i = 0; i < texts.size(); ++i) joined += (i ? " " : "") + texts[i];
  print_ids(tok.encode(joined));
  return 0;
}

// Encodes a prompt the way diffusers' StableDiffusionPipeline.encode_prompt does
// (pad/truncate to the encoder's context, no attention mask) and writes the embeddings.
int cmd_encode(const std::string& model_path, const std::string& text, int clip_skip, const std::string& output) {
  const sd::ModelFiles m = sd::ModelFiles::open(model_path);
  const sd::ClipTextModel te = sd::load_text_encoder(m);
  const size_t ctx = size_t(te.config().max_positions);
  const std::vector<int32_t> ids = sd::context_ids(sd::model_tokenizer(m), text, ctx);
  const sd::Tensor idt = sd::Tensor::from_ids(ids, {1, int64_t(ctx)});
  const auto out = te.forward(idt, clip_skip, /*want_pooled=*/true);
  sd::write_safetensors(output, {{"input_ids", idt}, {"hidden", out.hidden}, {"pooled", out.pooled}});
  std::cerr << "wrote " << output << ": hidden " << sd::shape_str(out.hidden.shape()) << "\n";
  return 0;
}

// FILE.png for one image; for a batch, "{n}" in the name is replaced by the image index,
// else -N is inserted before the extension (out.png -> out-0.png, out-1.png, ...).
std::string output_name(const std::string& pattern, int index, int count) {
  if (count == 1) return pattern;
  const size_t brace = pattern.find("{n}");
  if (brace != std::string::npos) return pattern.substr(0, brace) + std::to_string(index) + pattern.substr(brace + 3);
  const std::filesystem::path p(pattern);
  return (p.parent_path() / (p.stem().string() + "-" + std::to_string(index) + p.extension().string())).string();
}

struct GenerateArgs {
  std::string model, output, rng = "cpu", device = "cpu", dtype = "auto";
  std::vector<std::string> loras;  // PATH[:WEIGHT]
  sd::GenerateRequest req;
  sd::LoadOptions load;
  // img2img / inpaint / outpaint (pipeline/img2img.h)
  std::string init_image, mask, inpaint_fill, resize_mode = "just resize", outpaint;
  double mask_blur = 4;
  bool mask_invert = false, only_masked = false, size_given = false;
  int only_masked_padding = 32;
};

sd::DecodedImage read_image_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw sd::NotFoundError(std::string(what) + ": cannot read " + path);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return sd::decode_image(bytes.data(), bytes.size());
  } catch (const sd::Error& e) {
    throw sd::InvalidArgument(std::string(what) + " " + path + ": " + e.what());
  }
}

sd::MaskedContent parse_masked_content(const std::string& s) {
  if (s == "fill") return sd::MaskedContent::Fill;
  if (s == "original") return sd::MaskedContent::Original;
  if (s == "latent-noise" || s == "latent noise") return sd::MaskedContent::LatentNoise;
  if (s == "latent-nothing" || s == "latent nothing") return sd::MaskedContent::LatentNothing;
  throw sd::InvalidArgument("--inpaint-fill " + s + ": use fill, original, latent-noise or latent-nothing");
}

// Prepares the init image and mask (A1111's resize modes, mask blur, masked content, only masked,
// outpaint) into a.req; without --width/--height the size is the image's (canvas's), rounded down
// to a multiple of 8.
std::optional<sd::PreparedImg2Img> prepare_image_inputs(GenerateArgs& a) {
  const bool image_flags = !a.mask.empty() || !a.outpaint.empty() || !a.inpaint_fill.empty() || a.only_masked;
  if (a.init_image.empty()) {
    if (image_flags)
      throw sd::InvalidArgument("--mask, --outpaint, --inpaint-fill and --only-masked need --init-image");
    return std::nullopt;
  }
  sd::Img2ImgOptions o;
  o.resize_mode = sd::parse_resize_mode(a.resize_mode);
  o.mask_blur_x = o.mask_blur_y = a.mask_blur;
  o.mask_invert = a.mask_invert;
  if (!a.inpaint_fill.empty()) o.masked_content = parse_masked_content(a.inpaint_fill);
  o.only_masked = a.only_masked;
  o.only_masked_padding = a.only_masked_padding;
  if (!a.outpaint.empty()) o.outpaint = sd::parse_outpaint(a.outpaint);
  const sd::DecodedImage image = read_image_file(a.init_image, "--init-image");
  std::optional<sd::DecodedImage> mask;
  if (!a.mask.empty()) mask = read_image_file(a.mask, "--mask");
  if (!a.size_given) {
    const int cw = image.width + o.outpaint.left + o.outpaint.right;
    const int ch = image.height + o.outpaint.top + o.outpaint.bottom;
    a.req.width = std::max(8, cw / 8 * 8);
    a.req.height = std::max(8, ch / 8 * 8);
  }
  sd::PreparedImg2Img prep = sd::prepare_img2img(image, mask ? &*mask : nullptr, a.req.width, a.req.height, o);
  a.req.init_image = prep.init;
  a.req.mask = prep.mask;
  a.req.masked_content = prep.masked_content;
  a.req.init_latent_resize = prep.latent_resize;
  return prep;
}

// --lora PATH[:WEIGHT]: the weight applies to the text encoder and the UNet alike; a suffix after
// the last ':' that is not a number is part of the path.
sd::LoraRequest parse_lora_arg(const std::string& arg) {
  sd::LoraRequest r;
  r.path = arg;
  const size_t colon = arg.rfind(':');
  if (colon != std::string::npos && colon > 0) {
    const std::string w = arg.substr(colon + 1);
    char* end = nullptr;
    const float v = std::strtof(w.c_str(), &end);
    if (!w.empty() && end == w.c_str() + w.size()) {
      if (!std::isfinite(v))
        throw sd::InvalidArgument("--lora " + arg + ": the weight must be a finite number (PATH[:WEIGHT])");
      r.path = arg.substr(0, colon);
      r.te_multiplier = r.unet_multiplier = v;
    }
  }
  if (!std::filesystem::is_regular_file(r.path))
    throw sd::NotFoundError("--lora " + arg + ": no file " + r.path + " (give PATH[:WEIGHT] of a .safetensors LoRA)");
  return r;
}

// --dtype: "auto" is f16 on a GPU (what every SD GPU runtime uses), f32 on the CPU (no fast f16
// there); otherwise f32, f16 or bf16 as named.
sd::DType compute_dtype(const std::string& name, const sd::Device& device) {
  if (name == "auto") return device.type == sd::DeviceType::CUDA ? sd::DType::F16 : sd::DType::F32;
  return sd::parse_compute_dtype(name);
}

int cmd_generate(GenerateArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  a.req.rng = sd::parse_rng(a.rng);
  a.load.device = sd::parse_device(a.device);
  a.load.dtype = compute_dtype(a.dtype, a.load.device);
  for (const std::string& l : a.loras) a.req.loras.push_back(parse_lora_arg(l));
  const std::optional<sd::PreparedImg2Img> prep = prepare_image_inputs(a);
  sd::validate_request(a.req);  // bad sizes, steps or sampler names fail before loading anything
  const std::string model_path = sd::cli::resolve_model_arg(a.model, /*json_log=*/false);  // demo, repo id, URL
  const auto model = sd::StableDiffusion::load(model_path, a.load);  // checks a.load before reading the model
  model->validate(a.req);
  const bool tty = isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  auto progress = [&](int step, int total) {
    if (!tty) return true;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = step / std::max(el, 1e-9);
    const int width = 30, done = total ? step * width / total : width;
    std::fprintf(stderr, "\r[%s%s] %d/%d  %.2f it/s  ETA %.0fs ", std::string(size_t(done), '#').c_str(),
                 std::string(size_t(width - done), '.').c_str(), step, total, rate,
                 (total - step) / std::max(rate, 1e-9));
    if (step == total) std::fputc('\n', stderr);
    return true;
  };
  const auto images = model->generate(a.req, progress);
  for (size_t i = 0; i < images.size(); ++i) {
    const auto im = prep ? sd::finish_img2img(*prep, images[i]) : images[i];
    sd::GenerationParams gp = model->infotext_params(a.req, images[i]);
    gp.version = std::string("sdserve ") + SDSERVE_VERSION;
    if (prep) sd::add_img2img_infotext(gp, *prep);
    const std::string path = output_name(a.output, int(i), int(images.size()));
    sd::write_png_file(path, im.rgb.data(), im.width, im.height, 3, {{"parameters", sd::to_infotext(gp)}});
    std::fprintf(stderr, "wrote %s (seed %lld)\n", path.c_str(), static_cast<long long>(im.seed));
  }
  std::fprintf(stderr, "done in %.1fs\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

struct UpscaleArgs {
  std::string upscaler, input, output, upscaler_dir, device = "cpu", dtype = "auto";
  int tile = 192, tile_overlap = 16;
  double scale = 0;  // 0: the network's own scale
};

CLI::App* add_upscale_command(CLI::App& app, UpscaleArgs& a) {
  auto* up = app.add_subcommand("upscale", "Upscale an image with an ESRGAN / Real-ESRGAN model (docs/UPSCALERS.md)");
  up->add_option("--upscaler", a.upscaler,
                 "Lanczos or Nearest (model-free, need --scale), a model file (.safetensors or .pth: RRDBNet "
                 "ESRGAN/Real-ESRGAN, SRVGGNetCompact) or a model's name in --upscaler-dir")
      ->required();
  up->add_option("--upscaler-dir", a.upscaler_dir, "folder of upscaler models, found by file stem");
  up->add_option("--device", a.device, "cpu (default) or cuda[:N]");
  up->add_option("--dtype", a.dtype, "auto (default: f16 on cuda, f32 on cpu), f32, f16 or bf16");
  up->add_option("--tile", a.tile, "tile size in input pixels (default 192; 0 = whole image at once)");
  up->add_option("--tile-overlap", a.tile_overlap, "pixels neighbouring tiles share, blended (default 16)");
  up->add_option("--scale", a.scale,
                 "output scale (default: the model's); the model runs until the image is that large, then Lanczos");
  up->add_option("IN", a.input, "input image (PNG, JPEG or WebP)")->required();
  up->add_option("OUT", a.output, "output PNG")->required();
  return up;
}

int cmd_upscale(const UpscaleArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  SD_CHECK_ARG(a.tile >= 0, "--tile must be 0 (no tiling) or a positive number of pixels");
  SD_CHECK_ARG(a.tile_overlap >= 0 && (a.tile == 0 || a.tile_overlap < a.tile),
               "--tile-overlap must be at least 0 and smaller than --tile");
  SD_CHECK_ARG(a.scale >= 0 && std::isfinite(a.scale), "--scale must be a positive number");
  std::string ext = std::filesystem::path(a.output).extension().string();
  for (char& ch : ext) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  SD_CHECK_ARG(ext == ".png", "upscale: OUT must be a .png file (got " + a.output + ")");
  if (!std::filesystem::is_regular_file(a.input)) throw sd::NotFoundError("upscale: no input image " + a.input);
  std::ifstream in(a.input, std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw sd::IoError("upscale: cannot read " + a.input);
  sd::DecodedImage img;
  try {
    img = sd::to_rgb(sd::decode_image(bytes.data(), bytes.size()));  // alpha dropped, as PIL's convert("RGB")
  } catch (const sd::InvalidArgument& e) {
    throw sd::InvalidArgument("upscale: " + a.input + ": " + e.what());
  }
  std::string lname = a.upscaler;
  for (char& ch : lname) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (lname == "lanczos" || lname == "nearest") {
    // A1111's model-free upscalers: Image.resize((int(w * scale), int(h * scale)), LANCZOS / NEAREST).
    SD_CHECK_ARG(a.scale > 0, "--upscaler " + a.upscaler + " needs --scale (for example --scale 2)");
    const double w = std::floor(img.width * a.scale), h = std::floor(img.height * a.scale);
    SD_CHECK_ARG(w >= 1 && h >= 1 && w <= 16384 && h <= 16384,
                 "--scale " + std::to_string(a.scale) + " makes the image " + std::to_string(int64_t(w)) + "x" +
                     std::to_string(int64_t(h)) + ": it must be 1 to 16384 pixels a side");
    const std::vector<uint8_t> px =
        sd::resize_image(img.pixels.data(), img.width, img.height, 3, int(w), int(h),
                         lname == "lanczos" ? sd::ResizeFilter::Lanczos : sd::ResizeFilter::Nearest);
    sd::write_png_file(a.output, px.data(), int(w), int(h), 3, {});
    std::fprintf(stderr, "wrote %s (%dx%d, %s) in %.1fs\n", a.output.c_str(), int(w), int(h), a.upscaler.c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }
  std::string path = a.upscaler;
  if (!a.upscaler_dir.empty() && !std::filesystem::is_regular_file(path)) {
    if (!std::filesystem::is_directory(a.upscaler_dir))
      throw sd::NotFoundError("--upscaler-dir " + a.upscaler_dir + " is not a folder");
    for (const char* e : {".safetensors", ".pth", ".pt"}) {
      const auto p = std::filesystem::path(a.upscaler_dir) / (a.upscaler + e);
      if (a.upscaler.find('/') == std::string::npos && std::filesystem::is_regular_file(p)) {
        path = p.string();
        break;
      }
    }
  }
  const sd::Device device = sd::parse_device(a.device);
  const sd::Upscaler up = sd::Upscaler::open(path, device, compute_dtype(a.dtype, device));
  const bool tty = isatty(STDERR_FILENO);
  sd::UpscaleOptions opt;
  opt.tile = a.tile;
  opt.tile_overlap = a.tile_overlap;
  opt.progress = [&](int done, int total) {
    if (tty && total > 1) std::fprintf(stderr, "\rtile %d/%d ", done, total);
    if (tty && total > 1 && done == total) std::fputc('\n', stderr);
    return true;
  };
  const sd::Rgb8Image out = a.scale > 0 ? up.upscale_by(img.pixels.data(), img.width, img.height, a.scale, opt)
                                        : up.upscale(img.pixels.data(), img.width, img.height, opt);
  sd::write_png_file(a.output, out.rgb.data(), out.width, out.height, 3, {});
  std::fprintf(stderr, "wrote %s (%dx%d, %s) in %.1fs\n", a.output.c_str(), out.width, out.height,
               up.config().describe().c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

struct ConvertArgs {
  std::string input, output;
};

CLI::App* add_convert_command(CLI::App& app, ConvertArgs& a) {
  auto* c = app.add_subcommand("convert",
                               "Convert a PyTorch checkpoint (.pth/.pt/.ckpt) to .safetensors without running its "
                               "pickle (docs/TORCH_CHECKPOINTS.md)");
  c->add_option("IN", a.input, "checkpoint written by torch.save")->required();
  c->add_option("OUT", a.output, "output .safetensors")->required();
  return c;
}

// The safe reader interprets only tensors and dicts (no pickle code runs); nested dicts become dotted
// names ("params_ema.conv_first.weight"), other values are dropped.
int cmd_convert(const ConvertArgs& a) {
  const sd::TorchTensors t = sd::load_torch_checkpoint_tensors(a.input);
  if (t.tensors.empty())
    throw sd::UnsupportedError("convert: " + a.input + " holds no tensors of a dtype sdserve can store");
  sd::write_safetensors(a.output, t.tensors);
  std::fprintf(stderr, "wrote %s: %zu tensors\n", a.output.c_str(), t.tensors.size());
  if (!t.skipped.empty())
    std::fprintf(stderr, "skipped %zu tensors of dtypes safetensors/sdserve lack (complex, quantized), e.g. %s\n",
                 t.skipped.size(), t.skipped[0].c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sdserve: Stable Diffusion inference engine and image service"};
  app.set_version_flag("--version", std::string("sdserve ") + SDSERVE_VERSION);
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for compute (default: all cores; env OMP_NUM_THREADS)")
      ->check(CLI::Range(1, 1024));

  std::string inspect_path;
  bool inspect_json = false;
  auto* inspect = app.add_subcommand("inspect", "Print the family, layout and tensor count of a model file or folder");
  inspect->add_option("PATH", inspect_path, "a .safetensors checkpoint or a diffusers model folder")->required();
  inspect->add_flag("--json", inspect_json, "print one JSON object");

  std::string tok_model;
  bool tok_stdin = false;
  std::vector<std::string> tok_text;
  auto* tokenize =
      app.add_subcommand("tokenize", "Print CLIP token ids (BOS ... EOS, no truncation or padding) as a JSON array");
  tokenize->add_option("--model", tok_model, "use this model's tokenizer (default: the bundled CLIP vocabulary)");
  tokenize->add_flag("--stdin", tok_stdin, "read one text per line from stdin; print one array per line");
  tokenize->add_option("TEXT", tok_text, "text to tokenize");

  std::string enc_model, enc_text, enc_out;
  int enc_skip = 1;
  auto* encode = app.add_subcommand("encode", "Run the text encoder on a prompt and write the embeddings");
  encode->add_option("--model", enc_model, "model file or folder")->required();
  encode->add_option("--prompt", enc_text, "prompt text")->required();
  encode->add_option("--clip-skip", enc_skip, "1 = last layer (default), 2 = penultimate, ...")
      ->check(CLI::Range(1, 48));
  encode->add_option("--output", enc_out, "output .safetensors (input_ids, hidden, pooled)")->required();

  GenerateArgs gen;
  auto* generate = app.add_subcommand("generate", "txt2img: write PNG(s) with A1111 'parameters' metadata");
  generate
      ->add_option("--model", gen.model,
                   "model file or folder, a Hugging Face repo id (org/name; pulled into the cache on first use), "
                   "an http(s) URL, or demo (built-in, random weights)")
      ->required();
  generate->add_option("--prompt", gen.req.prompt, "prompt")->required();
  generate->add_option("--negative-prompt", gen.req.negative_prompt, "negative prompt");
  generate->add_option("--steps", gen.req.steps, "sampling steps (default 20)");
  generate->add_option("--cfg-scale", gen.req.cfg_scale, "classifier-free guidance scale (default 7)");
  generate->add_option("--sampler", gen.req.sampler,
                       "A1111 sampler name (default Euler); 'DPM++ 2M Karras' style works");
  generate->add_option("--scheduler", gen.req.schedule, "schedule type: Automatic, Karras, Exponential, SGM Uniform");
  generate->add_option("--seed", gen.req.seed, "seed; -1 = random (default); image i of a batch uses seed+i");
  generate->add_option("--rng", gen.rng, "noise source: cpu (diffusers/torch CPU) or cuda (A1111 default)");
  generate->add_option("--width", gen.req.width, "multiple of 8 (default 512)");
  generate->add_option("--height", gen.req.height, "multiple of 8 (default 512)");
  generate->add_option("--batch-size", gen.req.batch_size, "images in one batch (default 1)");
  generate->add_option("--clip-skip", gen.req.clip_skip, "1 = last layer (default), 2 = penultimate");
  generate->add_option("--guidance-rescale", gen.req.guidance_rescale, "0..1 (default 0)");
  generate->add_option("--eta", gen.req.eta, "DDIM eta (default 0)");
  generate->add_option("--prediction-type", gen.load.prediction_type,
                       "epsilon or v_prediction (default: the model's scheduler config; single files: a "
                       "<checkpoint>.yaml with A1111's 'parameterization', else epsilon for SD1, "
                       "v_prediction for SD2)");
  generate->add_option("--scheduler-config", gen.load.scheduler_config_path,
                       "a diffusers scheduler_config.json to use instead of the model's own");
  generate->add_flag("--vae-tiling", gen.req.vae_tiling,
                     "decode in overlapping tiles (diffusers enable_tiling): bounded memory for large images");
  generate->add_option("--init-image", gen.init_image, "img2img: start from this PNG/JPEG/WebP (docs/IMG2IMG.md)");
  generate->add_option("--strength", gen.req.strength, "img2img denoising strength, (0, 1] (default 0.75)");
  generate->add_option("--mask", gen.mask, "inpaint where this image is white (or opaque, for a transparent PNG)");
  generate->add_option("--mask-blur", gen.mask_blur, "mask blur in pixels (default 4)");
  generate->add_flag("--mask-invert", gen.mask_invert, "inpaint the black area instead");
  generate->add_option("--inpaint-fill", gen.inpaint_fill,
                       "masked content: original (default), fill, latent-noise, latent-nothing");
  generate->add_flag("--only-masked", gen.only_masked, "inpaint only the masked area, at full resolution");
  generate->add_option("--only-masked-padding", gen.only_masked_padding, "pixels around the mask (default 32)");
  generate->add_option("--resize-mode", gen.resize_mode,
                       "init image to the size: just resize (default), crop and resize, resize and fill");
  generate->add_option("--outpaint", gen.outpaint, "extend the canvas by LEFT,RIGHT,TOP,BOTTOM pixels and paint it");
  generate->add_option("--hires-scale", gen.req.hires.scale, "hires fix: upscale the txt2img image by this (e.g. 2)");
  generate->add_option("--hires-width", gen.req.hires.width, "hires fix target width (instead of the scale)");
  generate->add_option("--hires-height", gen.req.hires.height, "hires fix target height (instead of the scale)");
  generate->add_option("--hires-upscaler", gen.req.hires.upscaler,
                       "Latent (default), Latent (nearest), Latent (nearest-exact), Lanczos, Nearest");
  generate->add_option("--upscaler-dir", gen.load.upscaler_dir,
                       "folder of ESRGAN-family upscalers; their file stems are --hires-upscaler names");
  generate->add_option("--hires-steps", gen.req.hires.steps, "second-pass steps (default: --steps)");
  generate->add_option("--hires-denoise", gen.req.hires.denoise, "second-pass denoising strength (default 0.7)");
  generate->add_option("--output", gen.output, "FILE.png; batches: '{n}' in the name or FILE-N.png")->required();
  generate->add_option("--device", gen.device, "cpu (default) or cuda[:N]");
  generate->add_option("--embeddings-dir", gen.load.embeddings_dir,
                       "textual-inversion embeddings (<name>.safetensors), used by writing <name> in the prompt");
  generate->add_option("--dtype", gen.dtype, "auto (default: f16 on cuda, f32 on cpu), f32, f16 or bf16");
  generate->add_option("--lora", gen.loras,
                       "PATH[:WEIGHT] of a LoRA/LoCon/LoHa/LoKr .safetensors to merge (weight 1 by default); "
                       "repeat for several");
  generate->add_option("--lora-dir", gen.load.lora_dir,
                       "folder of LoRAs that prompt tags <lora:NAME:WEIGHT> name (NAME.safetensors, searched "
                       "recursively)");

  UpscaleArgs up_args;
  auto* upscale = add_upscale_command(app, up_args);

  ConvertArgs convert_args;
  auto* convert = add_convert_command(app, convert_args);

  sd::cli::PullArgs pull_args;
  auto* pull = sd::cli::add_pull_command(app, pull_args);

  sd::server::ServeOptions so;
  std::string serve_device = "cpu", serve_dtype = "auto", api_key_file;
  auto* serve = app.add_subcommand("serve", "Run the HTTP service (docs/API.md)");
  serve
      ->add_option("--model", so.model,
                   "model file or folder, a Hugging Face repo id (pulled into the cache on first start), an "
                   "http(s) URL, or demo (built-in, random weights); default " +
                       std::string(sd::net::kDefaultModelRepo))
      ->envname("SDSERVE_MODEL");
  serve->add_option("--host", so.host, "address to listen on (default 0.0.0.0)")->envname("SDSERVE_HOST");
  serve->add_option("--port", so.port, "port (default 7860; 0 = any free port, printed in the log)")
      ->envname("SDSERVE_PORT");
  serve->add_option("--api-key", so.api_keys, "require this key (Bearer, X-Api-Key or Basic password); repeatable")
      ->envname("SDSERVE_API_KEY");
  serve->add_option("--api-key-file", api_key_file, "file with one API key per line")->envname("SDSERVE_API_KEY_FILE");
  serve->add_option("--cors-origin", so.cors_origins, "allow browser calls from this origin (default: none)")
      ->envname("SDSERVE_CORS_ORIGIN");
  serve->add_option("--lora-dir", so.load.lora_dir, "folder of LoRAs for <lora:NAME:W> tags and \"loras\"")
      ->envname("SDSERVE_LORA_DIR");
  serve
      ->add_option("--upscaler-dir,--upscalers-dir", so.load.upscaler_dir,
                   "folder of ESRGAN-family upscalers (hr_upscaler names)")
      ->envname("SDSERVE_UPSCALER_DIR");
  serve->add_option("--embeddings-dir", so.load.embeddings_dir, "textual-inversion embeddings folder")
      ->envname("SDSERVE_EMBEDDINGS_DIR");
  serve->add_option("--device", serve_device, "cpu (default) or cuda[:N]")->envname("SDSERVE_DEVICE");
  serve->add_option("--dtype", serve_dtype, "auto (f16 on cuda, f32 on cpu), f32, f16 or bf16")
      ->envname("SDSERVE_DTYPE");
  serve->add_option("--queue-size", so.queue_size, "queued jobs before 429 (default 16)")
      ->envname("SDSERVE_QUEUE_SIZE");
  serve->add_option("--max-body-bytes", so.max_body_bytes, "largest request body (default 32 MiB)")
      ->envname("SDSERVE_MAX_BODY_BYTES");
  serve->add_option("--max-width", so.limits.max_width, "largest width (default 2048)")->envname("SDSERVE_MAX_WIDTH");
  serve->add_option("--max-height", so.limits.max_height, "largest height (default 2048)")
      ->envname("SDSERVE_MAX_HEIGHT");
  serve->add_option("--max-steps", so.limits.max_steps, "most steps (default 150)")->envname("SDSERVE_MAX_STEPS");
  serve->add_option("--max-image-side", so.limits.max_image_side, "largest init image/mask side (default 8192)")
      ->envname("SDSERVE_MAX_IMAGE_SIDE");
  serve->add_option("--max-image-pixels", so.limits.max_image_pixels, "largest init image/mask (default 4096*4096)")
      ->envname("SDSERVE_MAX_IMAGE_PIXELS");
  serve->add_option("--max-batch", so.limits.max_batch, "largest batch (default 8)")->envname("SDSERVE_MAX_BATCH");
  serve
      ->add_option("--models-dir", so.models_dir,
                   "folder of models (diffusers folders, .safetensors files) to list and switch between at run time; "
                   "--model then names one of them (default: the first)")
      ->envname("SDSERVE_MODELS_DIR");
  serve
      ->add_option("--models-memory-mb", so.models_memory_mb,
                   "keep loaded models while their sizes fit in this many MiB, least recently used out first "
                   "(default 0: one model at a time)")
      ->envname("SDSERVE_MODELS_MEMORY_MB");
  serve
      ->add_option("--max-batch-jobs", so.max_batch_jobs,
                   "compatible queued jobs run as one UNet batch, at most this many (default 4; 1 = off)")
      ->envname("SDSERVE_MAX_BATCH_JOBS")
      ->check(CLI::Range(1, 64));
  serve
      ->add_option("--batch-wait-ms", so.batch_wait_ms,
                   "milliseconds a job waits for compatible jobs to batch with (default 0: only jobs already queued)")
      ->envname("SDSERVE_BATCH_WAIT_MS")
      ->check(CLI::Range(0, 10000));
  serve->add_option("--keep-jobs", so.keep_finished, "finished jobs kept for fetching (default 256)")
      ->envname("SDSERVE_KEEP_JOBS");
  int64_t job_ttl = 3600, drain_timeout = 110, job_timeout = 0;
  serve->add_option("--job-ttl", job_ttl, "seconds a finished job's results are kept (default 3600)")
      ->envname("SDSERVE_JOB_TTL");
  serve->add_option("--drain-timeout", drain_timeout, "seconds to finish jobs after SIGTERM (default 110)")
      ->envname("SDSERVE_DRAIN_TIMEOUT");
  serve
      ->add_option("--job-timeout", job_timeout,
                   "seconds a job may run before it fails with 504, checked between steps (default 0: no limit)")
      ->envname("SDSERVE_JOB_TIMEOUT");
  serve
      ->add_option("--http-threads", so.http_threads,
                   "threads serving connections; each open keep-alive or event-stream connection holds one "
                   "(default 32)")
      ->envname("SDSERVE_HTTP_THREADS")
      ->check(CLI::Range(4, 4096));
  serve
      ->add_option("--keep-alive-timeout", so.keep_alive_timeout,
                   "seconds an idle keep-alive connection stays open (default 5); behind a load balancer, more "
                   "than its idle timeout")
      ->envname("SDSERVE_KEEP_ALIVE_TIMEOUT")
      ->check(CLI::Range(1, 4000));
  serve
      ->add_option("--web-dir", so.web_dir,
                   "serve the web page from this folder (read on every request; for development) instead of the "
                   "copy built in")
      ->envname("SDSERVE_WEB_DIR")
      ->check(CLI::ExistingDirectory);
  double url_fetch_timeout = 10;
  serve
      ->add_flag("--allow-url-fetch", so.allow_url_fetch,
                 "download init images given by URL (\"url\", \"init_image_url\", \"mask_url\"); public "
                 "http(s) addresses only")
      ->envname("SDSERVE_ALLOW_URL_FETCH");
  serve->add_option("--url-fetch-timeout", url_fetch_timeout, "seconds for one URL fetch, redirects included (10)")
      ->envname("SDSERVE_URL_FETCH_TIMEOUT");
  // Tests only (hidden): one host:port the address guard lets through, so a loopback test server
  // can stand for a public host.
  serve->add_option("--url-fetch-allow-test-host", so.url_fetch_allow_test_host)
      ->envname("SDSERVE_URL_FETCH_ALLOW_TEST_HOST")
      ->group("");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "sdserve: error: " << one_line(e.what()) << " (run 'sdserve --help')\n";
    return 2;
  }
  if (threads > 0) omp_set_num_threads(threads);

  try {
    if (*inspect) return cmd_inspect(inspect_path, inspect_json);
    if (*tokenize) return cmd_tokenize(tok_model, tok_stdin, tok_text);
    if (*encode) return cmd_encode(enc_model, enc_text, enc_skip, enc_out);
    if (*generate) {
      gen.size_given = generate->count("--width") + generate->count("--height") > 0;
      for (const char* f :
           {"--hires-scale", "--hires-width", "--hires-height", "--hires-upscaler", "--hires-steps", "--hires-denoise"})
        if (generate->count(f) > 0) gen.req.hires.enabled = true;
      return cmd_generate(gen);
    }
    if (*upscale) return cmd_upscale(up_args);
    if (*convert) return cmd_convert(convert_args);
    if (*pull) return sd::cli::cmd_pull(pull_args);
    if (*serve) {
      so.load.device = sd::parse_device(serve_device);
      so.load.dtype = compute_dtype(serve_dtype, so.load.device);
      if (!api_key_file.empty()) {
        std::ifstream in(api_key_file);
        if (!in) throw sd::NotFoundError("--api-key-file: cannot read " + api_key_file);
        for (std::string line; std::getline(in, line);) {
          while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
          if (!line.empty() && line[0] != '#') so.api_keys.push_back(line);
        }
      }
      for (const std::string& k : so.api_keys) SD_CHECK_ARG(k.size() >= 8, "API keys must be at least 8 characters");
      SD_CHECK_ARG(so.queue_size >= 1, "--queue-size must be at least 1");
      SD_CHECK_ARG(job_ttl >= 1 && drain_timeout >= 0, "--job-ttl and --drain-timeout must be positive");
      so.job_ttl = std::chrono::seconds(job_ttl);
      so.drain_timeout = std::chrono::seconds(drain_timeout);
      SD_CHECK_ARG(job_timeout >= 0, "--job-timeout must be 0 (no limit) or a number of seconds");
      so.job_timeout = std::chrono::seconds(job_timeout);
      SD_CHECK_ARG(url_fetch_timeout > 0 && url_fetch_timeout <= 600,
                   "--url-fetch-timeout must be in (0, 600] seconds");
      so.url_fetch_timeout = std::chrono::milliseconds(int64_t(url_fetch_timeout * 1000));
      if (!so.url_fetch_allow_test_host.empty()) {
        for (char& c : so.url_fetch_allow_test_host) c = char(std::tolower(static_cast<unsigned char>(c)));
        const size_t colon = so.url_fetch_allow_test_host.rfind(':');
        SD_CHECK_ARG(colon != std::string::npos && colon > 0 && colon + 1 < so.url_fetch_allow_test_host.size(),
                     "--url-fetch-allow-test-host must be HOST:PORT");
        std::fprintf(stderr,
                     "sdserve: warning: --url-fetch-allow-test-host lets URL fetches reach %s; for tests only\n",
                     so.url_fetch_allow_test_host.c_str());
      }
      so.version = std::string("sdserve ") + SDSERVE_VERSION;
      // No --model: $SDSERVE_MODEL (CLI11 reads it), else SD1.5 from the hub, pulled on the first start.
      // With --models-dir, --model is a name in that folder (or a local path), resolved by serve().
      if (so.models_dir.empty()) {
        if (so.model.empty()) so.model = sd::net::kDefaultModelRepo;
        so.model = sd::cli::resolve_model_arg(so.model, /*json_log=*/true);
      }
      return sd::server::serve(so);
    }
  } catch (const sd::Error& e) {
    std::cerr << "sdserve: error: " << one_line(e.what()) << "\n";
    return exit_code_for(e.kind());
  } catch (const std::bad_alloc&) {
    std::cerr << "sdserve: error: out of memory\n";
    return 71;
  } catch (const std::exception& e) {
    std::cerr << "sdserve: internal error: " << one_line(e.what()) << "\n";
    return 70;
  }
  return 0;
}
