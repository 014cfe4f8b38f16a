// Finds the pieces of a Stable Diffusion model on disk and says what it is.
// Two layouts are understood:
//   * a diffusers directory: model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/
//   * a single-file checkpoint (A1111/LDM layout): cond_stage_model.* / conditioner.*,
//     model.diffusion_model.*, first_stage_model.* in one .safetensors
// The family (SD1.x, SD2.x, SDXL, SDXL refiner) and the inpainting variant are
// detected from tensor names and shapes (single file) or from configs (directory).
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "io/weights.h"

namespace sdserve {

enum class ModelFamily { SD1, SD2, SDXL, SDXLRefiner, Unknown };
enum class ModelLayout { Diffusers, SingleFile };
enum class TextEncoderLayout { HF, OpenCLIP, None };

const char* family_name(ModelFamily f);
const char* layout_name(ModelLayout l);

struct ModelInfo {
  std::string path;
  ModelLayout layout = ModelLayout::SingleFile;
  ModelFamily family = ModelFamily::Unknown;
  bool inpaint = false;                 // UNet takes 9 input channels (latents + mask + masked image)
  int64_t unet_in_channels = 0;         // 0 when there is no UNet
  int64_t context_dim = 0;              // UNet cross-attention width
  size_t tensor_count = 0;              // over every weight file of the model
  uint64_t weight_bytes = 0;            // bytes of tensor data
  std::vector<std::string> components;  // which of text_encoder, unet, vae, ... are present
  TextEncoderLayout text_encoder_layout = TextEncoderLayout::None;
};

class ModelFiles {
 public:
  // Opens a diffusers directory or a single .safetensors file and validates what it finds.
  static ModelFiles open(const std::string& path);

  const ModelInfo& info() const { return info_; }
  // Weights of a component ("text_encoder", "unet", "vae") with names as that component's
  // own layout expects them. Throws NotFoundError if the model has no such component.
  WeightSource component(const std::string& name) const;
  // The component's config.json (diffusers directories only; empty object otherwise).
  nlohmann::json component_config(const std::string& name) const;
  // The tokenizer/ folder of a diffusers model, if present.
  std::optional<std::filesystem::path> tokenizer_dir() const;

 private:
  static ModelFiles open_impl(const std::string& path);
  ModelInfo info_;
  std::filesystem::path root_;
  std::shared_ptr<const SafeTensorsFile> single_;
  std::map<std::string, std::vector<std::shared_ptr<const SafeTensorsFile>>> parts_;
};

nlohmann::json read_json_file(const std::filesystem::path& p);

}  // namespace sdserve
