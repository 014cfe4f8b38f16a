#include "io/model_files.h"

#include <fstream>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace sdserve {

const char* family_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::SD1:
      return "SD1.x";
    case ModelFamily::SD2:
      return "SD2.x";
    case ModelFamily::SDXL:
      return "SDXL";
    case ModelFamily::SDXLRefiner:
      return "SDXL refiner";
    case ModelFamily::Unknown:
      return "unknown";
  }
  return "unknown";
}

const char* layout_name(ModelLayout l) {
  return l == ModelLayout::Diffusers ? "diffusers directory" : "single file (LDM/A1111)";
}

nlohmann::json read_json_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw NotFoundError(p.string() + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (text.size() > (16u << 20)) throw ModelFormatError(p.string() + ": JSON file larger than 16 MiB");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ModelFormatError(p.string() + ": not valid JSON");
  return j;
}

namespace {

bool starts_with(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }

// The weight files of one diffusers component, preferring safetensors and refusing pickles.
std::vector<fs::path> component_weight_files(const fs::path& dir) {
  static const char* stems[] = {"model", "diffusion_pytorch_model"};
  for (const char* stem : stems) {
    for (const char* variant : {"", ".fp16"}) {
      const fs::path single = dir / (std::string(stem) + variant + ".safetensors");
      if (fs::is_regular_file(single)) return {single};
      const fs::path index = dir / (std::string(stem) + variant + ".safetensors.index.json");
      if (fs::is_regular_file(index)) {
        const nlohmann::json j = read_json_file(index);
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
          throw ModelFormatError(index.string() + ": no weight_map object");
        std::set<std::string> shards;
        for (const auto& [k, v] : j["weight_map"].items()) {
          if (!v.is_string())
            throw ModelFormatError(index.string() + ": weight_map value for '" + k + "' is not a string");
          const std::string f = v.get<std::string>();
          // Shard names must stay inside the component folder.
          if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." ||
              f == "..")
            throw ModelFormatError(index.string() + ": bad shard file name '" + f + "'");
          shards.insert(f);
        }
        std::vector<fs::path> out;
        for (const auto& s : shards) out.push_back(dir / s);
        return out;
      }
    }
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string ext = e.path().extension().string();
    if (ext == ".bin" || ext == ".ckpt" || ext == ".pt" || ext == ".pth")
      throw UnsupportedError(e.path().string() +
                             " is a PyTorch pickle file; sdserve only loads .safetensors (never executes pickles). "
                             "Re-save the model with save_pretrained(..., safe_serialization=True)");
  }
  throw NotFoundError(dir.string() + ": no model.safetensors or diffusion_pytorch_model.safetensors");
}

ModelFamily family_from_single(const SafeTensorsFile& f, TextEncoderLayout& te) {
  bool sd1_te = false, sd2_te = false, xl0 = false, xl1 = false;
  for (const TensorInfo& t : f.tensors()) {
    const std::string& n = t.name;
    if (starts_with(n, "cond_stage_model.transformer."))
      sd1_te = true;
    else if (starts_with(n, "cond_stage_model.model.transformer.resblocks."))
      sd2_te = true;
    else if (starts_with(n, "conditioner.embedders.0."))
      xl0 = true;
    else if (starts_with(n, "conditioner.embedders.1."))
      xl1 = true;
  }
  if (xl1) return te = TextEncoderLayout::HF, ModelFamily::SDXL;
  if (xl0) {
    // The refiner has only the OpenCLIP bigG tower, as embedder 0.
    const bool openclip = f.contains("conditioner.embedders.0.model.ln_final.weight");
    te = openclip ? TextEncoderLayout::OpenCLIP : TextEncoderLayout::HF;
    return openclip ? ModelFamily::SDXLRefiner : ModelFamily::SDXL;
  }
  if (sd2_te) return te = TextEncoderLayout::OpenCLIP, ModelFamily::SD2;
  if (sd1_te) return te = TextEncoderLayout::HF, ModelFamily::SD1;
  // No text encoder: fall back on the UNet's cross-attention width.
  if (const TensorInfo* k = f.find("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")) {
    if (k->shape.size() == 2 && k->shape[1] == 768) return ModelFamily::SD1;
    if (k->shape.size() == 2 && k->shape[1] == 1024) return ModelFamily::SD2;
  }
  return ModelFamily::Unknown;
}

}  // namespace

ModelFiles ModelFiles::open(const std::string& path) {
  try {
    return open_impl(path);
  } catch (const nlohmann::json::exception& e) {
    // A config value of the wrong JSON type.
    throw ModelFormatError(path + ": bad config value (" + e.what() + ")");
  }
}

ModelFiles ModelFiles::open_impl(const std::string& path) {
  ModelFiles m;
  m.info_.path = path;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw NotFoundError(path + ": no such file or directory");
  if (fs::is_directory(st)) {
    m.root_ = path;
    m.info_.layout = ModelLayout::Diffusers;
    const fs::path index = m.root_ / "model_index.json";
    if (!fs::is_regular_file(index)) {
      if (fs::is_regular_file(m.root_ / "config.json"))
        throw NotFoundError(path +
                            ": no model_index.json; this looks like a single component folder, "
                            "pass the pipeline folder that contains it");
      throw NotFoundError(path + ": not a diffusers model folder (no model_index.json)");
    }
    const nlohmann::json mi = read_json_file(index);
    if (!mi.is_object()) throw ModelFormatError(index.string() + ": not a JSON object");
    for (const char* comp : {"text_encoder", "text_encoder_2", "unet", "vae"}) {
      const fs::path dir = m.root_ / comp;
      if (!fs::is_directory(dir)) continue;
      std::vector<std::shared_ptr<const SafeTensorsFile>> files;
      for (const fs::path& f : component_weight_files(dir))
        files.push_back(std::make_shared<const SafeTensorsFile>(SafeTensorsFile::open(f.string())));
      for (const auto& f : files) {
        m.info_.tensor_count += f->tensors().size();
        for (const TensorInfo& t : f->tensors()) m.info_.weight_bytes += t.end - t.begin;
      }
      m.parts_[comp] = std::move(files);
      m.info_.components.push_back(comp);
    }
    for (const char* comp : {"tokenizer", "tokenizer_2", "scheduler"})
      if (fs::is_directory(m.root_ / comp)) m.info_.components.push_back(comp);

    const bool has_te = m.parts_.count("text_encoder") > 0;
    const bool has_te2 = m.parts_.count("text_encoder_2") > 0;
    if (m.parts_.count("unet")) {
      const nlohmann::json uc = m.component_config("unet");
      m.info_.unet_in_channels = uc.value("in_channels", int64_t(4));
      if (uc.contains("cross_attention_dim") && uc["cross_attention_dim"].is_number_integer())
        m.info_.context_dim = uc["cross_attention_dim"].get<int64_t>();
    }
    if (has_te2) {
      m.info_.family = has_te ? ModelFamily::SDXL : ModelFamily::SDXLRefiner;
      m.info_.text_encoder_layout = TextEncoderLayout::HF;
    } else if (has_te) {
      // SD2 uses the OpenCLIP tower (GELU); SD1 OpenAI's (quick-GELU).
      const nlohmann::json tc = m.component_config("text_encoder");
      const std::string act = tc.value("hidden_act", std::string("quick_gelu"));
      m.info_.family = act == "gelu" ? ModelFamily::SD2 : ModelFamily::SD1;
      m.info_.text_encoder_layout = TextEncoderLayout::HF;
    }
  } else {
    m.single_ = std::make_shared<const SafeTensorsFile>(SafeTensorsFile::open(path));
    m.info_.layout = ModelLayout::SingleFile;
    m.info_.tensor_count = m.single_->tensors().size();
    for (const TensorInfo& t : m.single_->tensors()) m.info_.weight_bytes += t.end - t.begin;
    m.info_.family = family_from_single(*m.single_, m.info_.text_encoder_layout);
    if (m.info_.text_encoder_layout != TextEncoderLayout::None) m.info_.components.push_back("text_encoder");
    if (const TensorInfo* in = m.single_->find("model.diffusion_model.input_blocks.0.0.weight")) {
      m.info_.components.push_back("unet");
      if (in->shape.size() == 4) m.info_.unet_in_channels = in->shape[1];
    }
    if (const TensorInfo* k =
            m.single_->find("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"))
      if (k->shape.size() == 2) m.info_.context_dim = k->shape[1];
    if (m.single_->contains("first_stage_model.decoder.conv_in.weight")) m.info_.components.push_back("vae");
  }
  m.info_.inpaint = m.info_.unet_in_channels == 9;
  return m;
}

WeightSource ModelFiles::component(const std::string& name) const {
  if (info_.layout == ModelLayout::Diffusers) {
    auto it = parts_.find(name);
    if (it == parts_.end()) throw NotFoundError(info_.path + ": model has no " + name);
    return WeightSource(it->second);
  }
  std::string prefix;
  if (name == "text_encoder") {
    switch (info_.family) {
      case ModelFamily::SD1:
        prefix = "cond_stage_model.transformer.";
        break;
      case ModelFamily::SD2:
        prefix = "cond_stage_model.model.";
        break;
      case ModelFamily::SDXL:
        prefix = "conditioner.embedders.0.transformer.";
        break;
      case ModelFamily::SDXLRefiner:
        prefix = "conditioner.embedders.0.model.";
        break;
      default:
        break;
    }
  } else if (name == "text_encoder_2" && info_.family == ModelFamily::SDXL) {
    prefix = "conditioner.embedders.1.model.";
  } else if (name == "unet") {
    prefix = "model.diffusion_model.";
  } else if (name == "vae") {
    prefix = "first_stage_model.";
  }
  const bool present = std::find(info_.components.begin(), info_.components.end(), name) != info_.components.end() ||
                       (name == "text_encoder_2" && info_.family == ModelFamily::SDXL);
  if (prefix.empty() || !present) throw NotFoundError(info_.path + ": model has no " + name);
  return WeightSource({single_}, prefix);
}

nlohmann::json ModelFiles::component_config(const std::string& name) const {
  if (info_.layout != ModelLayout::Diffusers) return nlohmann::json::object();
  const fs::path p = root_ / name / "config.json";
  if (!fs::is_regular_file(p)) throw NotFoundError(p.string() + ": missing");
  nlohmann::json j = read_json_file(p);
  if (!j.is_object()) throw ModelFormatError(p.string() + ": not a JSON object");
  return j;
}

std::optional<fs::path> ModelFiles::tokenizer_dir() const {
  if (info_.layout == ModelLayout::Diffusers && fs::is_directory(root_ / "tokenizer")) return root_ / "tokenizer";
  return std::nullopt;
}

}  // namespace sdserve
