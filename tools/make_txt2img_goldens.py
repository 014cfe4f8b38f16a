#!/usr/bin/env python3
"""Golden txt2img images from diffusers' StableDiffusionPipeline, one per sampler x schedule type.

Writes tests/fixtures/golden/txt2img/<model>.safetensors for the tiny fixture models (diffusers
folders tests/fixtures/models/sd1-tiny, sd2-tiny, odd-tiny; sd2-tiny is v-prediction, odd-tiny
has odd channel/head counts). Read by tests/unit/test_txt2img.cc and tests/e2e/test_generate.py.

Every case is

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)            # float32, CPU
    pipe.scheduler = <make_sampler_goldens.make_scheduler(sampler, schedule, pipe.scheduler.config)>
    images = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS (LCM: 4),
                  guidance_scale=CFG, height=H, width=W,     # 32x32; odd-tiny 24 wide, 16 high
                  generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    rgb = (images[0] * 255).round().astype("uint8")                       # = numpy_to_pil

The sampler -> scheduler mapping (class, options, schedule-type options, the Euler a +
Karras/Exponential construction and the pairs sdserve refuses) is imported from
tools/make_sampler_goldens.py, so both fixtures follow docs/SAMPLERS.md in one place.

DPM++ SDE: diffusers draws its noise from a torchsde Brownian tree seeded with the scheduler's
noise_sampler_seed (random when unset). sdserve, like A1111, seeds it with the image seed, so the
golden sets noise_sampler_seed=SEED (docs/SAMPLERS.md, "DPM++ SDE and its Brownian noise").

Tensors: "<sampler>|<schedule>" -> uint8 [H, W, 3].
Metadata: prompt, negative_prompt, steps, lcm_steps, seed, cfg, width, height, model,
          diffusers (version), cases (JSON list of {key, sampler, schedule, steps}).

Usage: python tools/make_txt2img_goldens.py [--models sd1-tiny sd2-tiny odd-tiny]   (~2 min per model, one thread)
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
import st_io  # noqa: E402

import diffusers  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "tests" / "fixtures" / "models"
OUT_DIR = REPO / "tests" / "fixtures" / "golden" / "txt2img"

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
STEPS = 5
LCM_STEPS = 4
CFG = 7.0
SEED = 1234
SIZE = 32
# (width, height) where not SIZE x SIZE: odd-tiny is non-square and smaller (fixture size budget).
SIZES = {"odd-tiny": (24, 16)}
# Samplers left out of the goldens (none at present; kept in the metadata as "excluded").
EXCLUDED: set[str] = set()


def cases():
    for sampler in msg.SAMPLERS:
        if sampler in EXCLUDED:
            continue
        for schedule in msg.SCHEDULES:
            if schedule not in msg.ONLY.get(sampler, tuple(msg.SCHEDULES)):
                continue
            yield sampler, schedule, (LCM_STEPS if sampler == "LCM" else STEPS)


def run_model(name: str) -> None:
    torch.set_num_threads(1)  # deterministic reductions (as the other golden scripts); also fastest here
    pipe = StableDiffusionPipeline.from_pretrained(str(MODELS_DIR / name), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    width, height = SIZES.get(name, (SIZE, SIZE))
    tensors, meta_cases = {}, []
    for sampler, schedule, steps in cases():
        pipe.scheduler, _ = msg.make_scheduler(sampler, schedule, base)
        if sampler == "DPM++ SDE":
            # The Brownian tree's seed is the image seed, as in A1111 (and sdserve).
            pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, "noise_sampler_seed": SEED})
        out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG,
                   height=height, width=width, generator=torch.Generator("cpu").manual_seed(SEED),
                   output_type="np").images
        rgb = (out[0] * 255).round().astype("uint8")  # diffusers' numpy_to_pil
        assert rgb.shape == (height, width, 3), rgb.shape
        key = f"{sampler}|{schedule}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(rgb))
        meta_cases.append({"key": key, "sampler": sampler, "schedule": schedule, "steps": steps})
        print(f"{name}: {key:28s} mean {rgb.mean():7.3f}", flush=True)
    meta = {
        "model": name,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": str(STEPS),
        "lcm_steps": str(LCM_STEPS),
        "seed": str(SEED),
        "cfg": str(CFG),
        "width": str(width),
        "height": str(height),
        "diffusers": diffusers.__version__,
        "excluded": json.dumps(sorted(EXCLUDED)),
        "cases": json.dumps(meta_cases),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.safetensors"
    st_io.save_file_sorted(tensors, path, metadata=meta)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(tensors)} cases)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sd1-tiny", "sd2-tiny", "odd-tiny"])
    args = ap.parse_args()
    for name in args.models:
        run_model(name)


if __name__ == "__main__":
    main()
