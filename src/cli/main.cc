// sdserve command line. Every failure is one line on stderr and a non-zero exit;
// typed engine errors map to exit codes here and nowhere else.
#include <omp.h>

#include <unistd.h>
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "cpu/gemm.h"
#include "io/infotext.h"
#include "io/model_files.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "pipeline/stable_diffusion.h"
#include "pipeline/tokenizer.h"
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
};

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
  sd::validate_request(a.req);  // bad sizes, steps or sampler names fail before loading anything
  const auto model = sd::StableDiffusion::load(a.model, a.load);  // checks a.load before reading the model
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
  const auto images = model->txt2img(a.req, progress);
  for (size_t i = 0; i < images.size(); ++i) {
    const auto& im = images[i];
    sd::GenerationParams gp = model->infotext_params(a.req, im);
    gp.version = std::string("sdserve ") + SDSERVE_VERSION;
    const std::string path = output_name(a.output, int(i), int(images.size()));
    sd::write_png_file(path, im.rgb.data(), im.width, im.height, 3, {{"parameters", sd::to_infotext(gp)}});
    std::fprintf(stderr, "wrote %s (seed %lld)\n", path.c_str(), static_cast<long long>(im.seed));
  }
  std::fprintf(stderr, "done in %.1fs\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
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
  generate->add_option("--model", gen.model, "model file or folder")->required();
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

  sd::server::ServeOptions so;
  std::string serve_device = "cpu", serve_dtype = "auto", api_key_file;
  auto* serve = app.add_subcommand("serve", "Run the HTTP service (docs/API.md)");
  serve->add_option("--model", so.model, "model file or folder")->envname("SDSERVE_MODEL")->required();
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
  serve->add_option("--max-batch", so.limits.max_batch, "largest batch (default 8)")->envname("SDSERVE_MAX_BATCH");
  serve->add_option("--keep-jobs", so.keep_finished, "finished jobs kept for fetching (default 256)")
      ->envname("SDSERVE_KEEP_JOBS");
  int64_t job_ttl = 3600, drain_timeout = 110;
  serve->add_option("--job-ttl", job_ttl, "seconds a finished job's results are kept (default 3600)")
      ->envname("SDSERVE_JOB_TTL");
  serve->add_option("--drain-timeout", drain_timeout, "seconds to finish jobs after SIGTERM (default 110)")
      ->envname("SDSERVE_DRAIN_TIMEOUT");

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
    if (*generate) return cmd_generate(gen);
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
      so.version = std::string("sdserve ") + SDSERVE_VERSION;
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
