// UNet and VAE parity with diffusers on the tiny models (goldens from
// tools/make_model_goldens.py). Tolerance: max |ours - diffusers| <= 1e-4 (f32),
// relative to outputs of magnitude ~1.
#include <filesystem>

#include "io/model_files.h"
#include "models/unet.h"
#include "models/vae.h"
#include "ops/conv2d.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kFixtures = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";

class TinyModel : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafeTensorsFile>(
        SafeTensorsFile::open((kFixtures / "golden" / "unet_vae" / (GetParam() + ".safetensors")).string()));
    model_ = std::make_unique<ModelFiles>(ModelFiles::open((kFixtures / "models" / GetParam()).string()));
  }
  Tensor g(const std::string& name) const { return golden_->get_as(name, DType::F32); }
  std::unique_ptr<SafeTensorsFile> golden_;
  std::unique_ptr<ModelFiles> model_;
};

TEST_P(TinyModel, UNetMatchesDiffusers) {
  const UNet unet = UNet::load(UNetConfig::from_json(model_->component_config("unet")), model_->component("unet"));
  for (const std::string c : {"unet_a", "unet_b"}) {
    const std::vector<float> t = g(c + "_t").to_vector();
    const Tensor out = unet.forward(g(c + "_x"), t, g(c + "_ctx"));
    EXPECT_LE(max_abs_diff(out, g(c + "_out")), 1e-4) << c;
  }
}

TEST_P(TinyModel, VaeDecodeAndEncodeMatchDiffusers) {
  const VAE vae = VAE::load(VAEConfig::from_json(model_->component_config("vae")), model_->component("vae"));
  for (const std::string c : {"dec_a", "dec_b"})
    EXPECT_LE(max_abs_diff(vae.decode(g(c + "_z")), g(c + "_out")), 1e-4) << c;
  EXPECT_LE(max_abs_diff(vae.encode_moments(g("enc_a_x")), g("enc_a_out")), 1e-4);
}

TEST_P(TinyModel, TiledVaeMatchesDiffusersEnableTiling) {
  const VAE vae = VAE::load(VAEConfig::from_json(model_->component_config("vae")), model_->component("vae"));
  const Tensor z = g("tdec_a_z"), x = g("tenc_a_x");
  ASSERT_LT(vae.tile_latent_size(), z.size(3)) << "the golden latents must span several tiles";
  const Tensor dec = vae.decode_tiled(z);
  EXPECT_EQ(dec.shape(), g("tdec_a_out").shape());
  EXPECT_LE(max_abs_diff(dec, g("tdec_a_out")), 1e-4);
  EXPECT_GT(max_abs_diff(dec, vae.decode(z)), 1e-3) << "tiling should change the result slightly";
  const Tensor enc = vae.encode_moments_tiled(x);
  EXPECT_EQ(enc.shape(), g("tenc_a_out").shape());
  EXPECT_LE(max_abs_diff(enc, g("tenc_a_out")), 1e-4);
  // Inputs within one tile take the untiled path.
  EXPECT_EQ(max_abs_diff(vae.decode_tiled(g("dec_a_z")), vae.decode(g("dec_a_z"))), 0.0);
}

// The GPU runs these models with channels-last activations between convolutions (docs/CUDA.md);
// here the CPU convolutions hand on channels-last results too, so every op and every reshape in
// the models meets that layout, and the outputs must not change by a bit.
class CpuChannelsLast {
 public:
  CpuChannelsLast() { ops::set_cpu_channels_last_for_testing(true); }
  ~CpuChannelsLast() { ops::set_cpu_channels_last_for_testing(false); }
  CpuChannelsLast(const CpuChannelsLast&) = delete;
  CpuChannelsLast& operator=(const CpuChannelsLast&) = delete;
};

TEST_P(TinyModel, ChannelsLastActivationsGiveTheSameOutputs) {
  const UNet unet = UNet::load(UNetConfig::from_json(model_->component_config("unet")), model_->component("unet"));
  const VAE vae = VAE::load(VAEConfig::from_json(model_->component_config("vae")), model_->component("vae"));
  const std::vector<float> t = g("unet_a_t").to_vector();
  const Tensor unet_ref = unet.forward(g("unet_a_x"), t, g("unet_a_ctx"));
  const Tensor dec_ref = vae.decode(g("dec_a_z")), enc_ref = vae.encode_moments(g("enc_a_x"));
  const Tensor tdec_ref = vae.decode_tiled(g("tdec_a_z"));
  CpuChannelsLast cl;
  ASSERT_TRUE(ops::conv2d_keeps_channels_last(g("dec_a_z")));
  const Tensor unet_cl = unet.forward(g("unet_a_x"), t, g("unet_a_ctx"));
  const Tensor dec_cl = vae.decode(g("dec_a_z")), enc_cl = vae.encode_moments(g("enc_a_x"));
  EXPECT_TRUE(unet_cl.is_channels_last() && !unet_cl.is_contiguous()) << "the layout under test was not used";
  EXPECT_EQ(max_abs_diff(unet_cl, unet_ref), 0.0);
  EXPECT_EQ(max_abs_diff(dec_cl, dec_ref), 0.0);
  EXPECT_EQ(max_abs_diff(enc_cl, enc_ref), 0.0);
  EXPECT_EQ(max_abs_diff(vae.decode_tiled(g("tdec_a_z")), tdec_ref), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Models, TinyModel, testing::Values("sd1-tiny", "sd2-tiny", "odd-tiny"),
                         [](const auto& i) { return i.param.substr(0, 3); });

}  // namespace
}  // namespace sdserve::test
