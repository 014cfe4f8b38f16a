#include "models/loader.h"

namespace sdserve {

ClipTextModel load_text_encoder(const ModelFiles& model, const TextEncoderOptions& opt) {
  const ModelInfo& info = model.info();
  const WeightSource src = model.component("text_encoder").with_device(opt.device);
  if (info.layout == ModelLayout::Diffusers)
    return ClipTextModel::load(ClipTextConfig::from_json(model.component_config("text_encoder")), src,
                               ClipWeightLayout::HF, opt.dtype);
  switch (info.family) {
    case ModelFamily::SD1:
    case ModelFamily::SDXL: {
      const auto cfg = ClipTextModel::infer_config(src, ClipWeightLayout::HF, ops::Activation::QuickGELU, opt.head_dim);
      return ClipTextModel::load(cfg, src, ClipWeightLayout::HF, opt.dtype);
    }
    case ModelFamily::SD2: {
      // SD2 conditions on the penultimate block; diffusers drops the last one on conversion.
      const auto cfg =
          ClipTextModel::infer_config(src, ClipWeightLayout::OpenCLIP, ops::Activation::GELU, opt.head_dim, 1);
      return ClipTextModel::load(cfg, src, ClipWeightLayout::OpenCLIP, opt.dtype);
    }
    default:
      throw UnsupportedError(info.path + ": no supported text encoder for family " + family_name(info.family));
  }
}

}  // namespace sdserve
