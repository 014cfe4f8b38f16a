// sdserve command line. Every failure is one line on stderr and a non-zero exit;
// typed engine errors map to exit codes here and nowhere else.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "cpu/gemm.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "pipeline/tokenizer.h"

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
  const sd::ModelFiles m = sd::ModelFiles::open(model_path);
  if (auto dir = m.tokenizer_dir()) return sd::ClipTokenizer::from_dir(dir->string());
  return sd::ClipTokenizer::bundled();
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
  const sd::ClipTokenizer tok =
      m.tokenizer_dir() ? sd::ClipTokenizer::from_dir(m.tokenizer_dir()->string()) : sd::ClipTokenizer::bundled();
  std::vector<int32_t> ids = tok.encode(text);
  const size_t ctx = size_t(te.config().max_positions);
  if (ids.size() > ctx) {
    ids.resize(ctx);
    ids.back() = tok.eos_id();
  }
  ids.resize(ctx, tok.pad_id());
  const sd::Tensor idt = sd::Tensor::from_ids(ids, {1, int64_t(ctx)});
  const auto out = te.forward(idt, clip_skip, /*want_pooled=*/true);
  sd::write_safetensors(output, {{"input_ids", idt}, {"hidden", out.hidden}, {"pooled", out.pooled}});
  std::cerr << "wrote " << output << ": hidden " << sd::shape_str(out.hidden.shape()) << "\n";
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

  auto* serve = app.add_subcommand("serve", "Run the HTTP service (not implemented yet)");
  serve->allow_extras();

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
    if (*serve) {
      std::cerr << "sdserve: serve: the HTTP service is not implemented yet (tracked in the service issue); "
                   "available now: inspect, tokenize, encode\n";
      return 69;  // EX_UNAVAILABLE
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
