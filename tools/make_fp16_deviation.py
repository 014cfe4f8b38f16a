#!/usr/bin/env python3
"""How far diffusers' own float16 pipeline lands from its float32 images on the tiny models.

Writes tests/fixtures/golden/txt2img/fp16_deviation.json: for every golden txt2img case (the
same cases, prompt, seed and schedulers as tools/make_txt2img_goldens.py), the largest per-channel
difference, out of 255, between StableDiffusionPipeline in torch.float16 and in torch.float32
(both on the CPU). The tiny random-weight models amplify half-precision rounding on some
sampler/schedule pairs (5-step DDIM with SGM Uniform, ancestral and SDE samplers on the
v-prediction model), so diffusers itself is tens of levels away there. test_cuda.cc allows our
f16 GPU image max(4, this + 4) levels from our CPU f32 image: within 4/255 wherever the
reference's own fp16 is, and no worse than the reference (plus 4) where it is not.

Usage: python tools/make_fp16_deviation.py [--models sd1-tiny sd2-tiny odd-tiny]   (~3 min per model)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sampler_goldens as msg  # noqa: E402
import make_txt2img_goldens as g  # noqa: E402

from diffusers import StableDiffusionPipeline  # noqa: E402

OUT = g.OUT_DIR / "fp16_deviation.json"


def images(name: str, dtype: torch.dtype) -> dict[str, np.ndarray]:
    pipe = StableDiffusionPipeline.from_pretrained(str(g.MODELS_DIR / name), safety_checker=None,
                                                   requires_safety_checker=False, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    width, height = g.SIZES.get(name, (g.SIZE, g.SIZE))
    out = {}
    for sampler, schedule, steps in g.cases():
        pipe.scheduler, _ = msg.make_scheduler(sampler, schedule, base)
        if sampler == "DPM++ SDE":
            pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, "noise_sampler_seed": g.SEED})
        im = pipe(g.PROMPT, negative_prompt=g.NEGATIVE, num_inference_steps=steps, guidance_scale=g.CFG,
                  height=height, width=width, generator=torch.Generator("cpu").manual_seed(g.SEED),
                  output_type="np").images[0]
        out[f"{sampler}|{schedule}"] = (im.astype(np.float32) * 255).round().astype(np.int32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sd1-tiny", "sd2-tiny", "odd-tiny"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in args.models:
        f32, f16 = images(name, torch.float32), images(name, torch.float16)
        doc[name] = {k: int(np.abs(f32[k] - f16[k]).max()) for k in f32}
        over = sorted(((v, k) for k, v in doc[name].items() if v > 4), reverse=True)
        print(f"{name}: {len(over)} of {len(f32)} cases over 4/255: {over}", flush=True)
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
