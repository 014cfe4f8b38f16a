#!/usr/bin/env python3
"""Golden UNet and VAE outputs of the tiny models, from diffusers on the CPU (float32).

Writes tests/fixtures/golden/unet_vae/<model>.safetensors with, for each case, the
inputs and diffusers' output, so the C++ tests compare our UNet/VAE with no PyTorch:
  unet_a_{x,t,ctx,out}   batch 2, a different timestep per sample, 8x8 latents
  unet_b_{x,t,ctx,out}   batch 1, odd 6x10 latents (upsampling to the skip's size)
  dec_a_{z,out}          VAE decode of 8x8 latents
  dec_b_{z,out}          VAE decode of odd 5x7 latents
  enc_a_{x,out}          VAE encoder moments (mean, logvar) incl. quant_conv
  tdec_a_{z,out}         tiled VAE decode (enable_tiling) of 13x19 latents
  tenc_a_{x,out}         tiled VAE encode of a 44x30 image

Run: .venv-tools/bin/python tools/make_model_goldens.py [MODEL ...]   (default: sd1-tiny sd2-tiny odd-tiny)
"""
from __future__ import annotations

import pathlib
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from st_io import save_file_sorted  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "fixtures" / "models"
OUT = ROOT / "tests" / "fixtures" / "golden" / "unet_vae"


@torch.no_grad()
def goldens(name: str) -> dict:
    g = torch.Generator("cpu").manual_seed(1234)
    unet = UNet2DConditionModel.from_pretrained(MODELS / name / "unet").eval()
    vae = AutoencoderKL.from_pretrained(MODELS / name / "vae").eval()
    ctx_dim = unet.config.cross_attention_dim
    out = {}
    for case, (n, h, w, t) in {"unet_a": (2, 8, 8, [981.0, 1.0]), "unet_b": (1, 6, 10, [500.0])}.items():
        x = torch.randn(n, unet.config.in_channels, h, w, generator=g)
        ctx = torch.randn(n, 77, ctx_dim, generator=g)
        tt = torch.tensor(t, dtype=torch.float32)
        out[f"{case}_x"], out[f"{case}_t"], out[f"{case}_ctx"] = x, tt, ctx
        out[f"{case}_out"] = unet(x, tt, encoder_hidden_states=ctx).sample
    for case, (h, w) in {"dec_a": (8, 8), "dec_b": (5, 7)}.items():
        z = torch.randn(1, vae.config.latent_channels, h, w, generator=g)
        out[f"{case}_z"] = z
        out[f"{case}_out"] = vae.decode(z).sample
    x = (torch.rand(1, 3, 16, 16, generator=g) * 2 - 1)
    out["enc_a_x"] = x
    out["enc_a_out"] = vae.encode(x).latent_dist.parameters
    # Tiled VAE (enable_tiling): inputs several tiles wide and tall, with partial edge tiles.
    vae.enable_tiling()
    z = torch.randn(1, vae.config.latent_channels, 13, 19, generator=g)
    out["tdec_a_z"], out["tdec_a_out"] = z, vae.decode(z).sample
    x = torch.rand(1, 3, 44, 30, generator=g) * 2 - 1
    out["tenc_a_x"], out["tenc_a_out"] = x, vae.encode(x).latent_dist.parameters
    vae.disable_tiling()
    return {k: v.contiguous().float() for k, v in out.items()}


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or ("sd1-tiny", "sd2-tiny", "odd-tiny"):  # default: all tiny models
        path = OUT / f"{name}.safetensors"
        save_file_sorted(goldens(name), path, {"torch": torch.__version__, "source": f"diffusers, {name}"})
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
