#!/usr/bin/env python3
"""Golden img2img and inpaint images from diffusers' pipelines, for the tiny fixture models.

Writes tests/fixtures/golden/img2img/<model>.safetensors, read by tests/unit/test_img2img.cc:

  sd1-tiny, sd2-tiny, odd-tiny   StableDiffusionImg2ImgPipeline and (sd1/sd2) the 4-channel
                                 StableDiffusionInpaintPipeline (latent blending)
  sd1-tiny-inpaint               StableDiffusionInpaintPipeline with a 9-channel UNet, built by
                                 tools/make_tiny_models.py --inpaint (single file; the diffusers
                                 folder the pipeline loads is rebuilt here in a temporary folder)

Every case is

    pipe.scheduler = <make_sampler_goldens.make_scheduler(sampler, schedule, base config)>
    gens = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(batch)]
    img2img: pipe(PROMPT, image=INIT, strength=S, num_inference_steps=STEPS, guidance_scale=CFG,
                  negative_prompt=NEGATIVE, num_images_per_prompt=batch, generator=gens, output_type="np")
    inpaint: pipe(..., image=INIT, mask_image=MASK, height=H, width=W, strength=S, ...)
    rgb = (images * 255).round().astype("uint8")

INIT and MASK already have the request's size, so no resizing happens in diffusers. DPM++ SDE
gets noise_sampler_seed=SEED (the image seed, as sdserve and A1111 seed the Brownian tree).
Inpaint cases are batch 1: with a list of generators diffusers' inpaint pipeline encodes the one
init image with generator 0 only, so its batch images depend on the batch (sdserve gives image i
what seed + i gives alone; docs/IMG2IMG.md).

Tensors: "init" uint8 [H, W, 3], "mask" uint8 [H, W] (white = repaint), and one uint8
[batch, H, W, 3] per case key "<mode>|<sampler>|<schedule>|<strength>|<batch>".
Metadata: prompt, negative_prompt, steps, seed, cfg, width, height, model, diffusers, cases (JSON
list of {key, mode, sampler, schedule, steps, strength, batch}).

Usage: python tools/make_img2img_goldens.py [--models sd1-tiny sd2-tiny odd-tiny sd1-tiny-inpaint]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sampler_goldens as msg  # noqa: E402
import make_tiny_models as mtm  # noqa: E402
import st_io  # noqa: E402

import diffusers  # noqa: E402
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "tests" / "fixtures" / "models"
OUT_DIR = REPO / "tests" / "fixtures" / "golden" / "img2img"

PROMPT = "a watercolor painting of a lighthouse"
NEGATIVE = "blurry"
STEPS = 5
LCM_STEPS = 4
CFG = 7.0
SEED = 4321
SIZES = {"odd-tiny": (24, 16)}  # (width, height); others 32 x 32

# Samplers of the inpaint cases (every sampler runs in the img2img cases).
INPAINT_SAMPLERS = ["Euler", "Euler a", "Heun", "DPM2 a", "LMS", "DPM++ 2M", "DPM++ SDE", "DDIM", "PLMS", "UniPC"]


def init_image(width: int, height: int) -> np.ndarray:
    """A smooth colour field with a bright disc: structure the VAE encoder can see."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127 + 100 * np.sin(x / width * 3.1 + 0.3)
    g = 127 + 100 * np.cos(y / height * 2.7)
    b = 60 + 150 * ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.3) ** 2)
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


def mask_image(width: int, height: int) -> np.ndarray:
    """White (repaint) rectangle plus a soft-edged band: values on both sides of 128 test binarizing."""
    m = np.zeros((height, width), np.uint8)
    m[height // 4: height * 3 // 4, width // 8: width // 2] = 255
    m[:, width * 3 // 4:] = np.linspace(0, 255, height).round().astype(np.uint8)[:, None]
    return m


def cases(name: str):
    inpaint9 = name.endswith("-inpaint")
    if not inpaint9:
        for sampler in msg.SAMPLERS:
            steps = LCM_STEPS if sampler == "LCM" else STEPS
            yield "img2img", sampler, "Automatic", steps, 0.6, 1
        for sampler, schedule in [("DPM++ 2M", "Karras"), ("Euler a", "Karras"), ("Euler", "Exponential")]:
            yield "img2img", sampler, schedule, STEPS, 0.6, 1
        yield "img2img", "Euler", "Automatic", STEPS, 1.0, 1
        yield "img2img", "Euler a", "Automatic", STEPS, 0.25, 1  # one step
        yield "img2img", "DDIM", "Automatic", STEPS, 0.9, 1
        yield "img2img", "Euler a", "Automatic", STEPS, 0.75, 2  # a batch: one generator per image
    if name == "odd-tiny":
        return
    for sampler in INPAINT_SAMPLERS:
        for strength in (1.0, 0.7):
            yield "inpaint", sampler, "Automatic", STEPS, strength, 1


def build_pipes(name: str, tmp: Path):
    kw = dict(safety_checker=None, requires_safety_checker=False)
    if name.endswith("-inpaint"):
        spec = mtm.MODELS[mtm.INPAINT["base"]]
        comps = mtm.build_components(spec, unet_in_channels=mtm.INPAINT["unet_in_channels"],
                                     seed_offset=mtm.INPAINT["seed_offset"])
        d = tmp / name
        mtm.write_diffusers_dir(spec, comps, d)
        return None, StableDiffusionInpaintPipeline.from_pretrained(str(d), **kw)
    d = str(MODELS_DIR / name)
    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(d, **kw)
    inp = StableDiffusionInpaintPipeline(**i2i.components)
    return i2i, inp


def run_model(name: str) -> None:
    torch.set_num_threads(1)
    width, height = SIZES.get(name, (32, 32))
    init = init_image(width, height)
    mask = mask_image(width, height)
    tensors = {"init": torch.from_numpy(init), "mask": torch.from_numpy(mask)}
    meta_cases = []
    with tempfile.TemporaryDirectory() as tmp:
        i2i, inp = build_pipes(name, Path(tmp))
        for p in (i2i, inp):
            if p is not None:
                p.set_progress_bar_config(disable=True)
        base = dict((i2i or inp).scheduler.config)
        for mode, sampler, schedule, steps, strength, batch in cases(name):
            pipe = i2i if mode == "img2img" else inp
            pipe.scheduler, _ = msg.make_scheduler(sampler, schedule, base)
            if sampler == "DPM++ SDE":
                pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, "noise_sampler_seed": SEED})
            gens = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(batch)]
            args = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=Image.fromarray(init), strength=strength,
                        num_inference_steps=steps, guidance_scale=CFG, num_images_per_prompt=batch,
                        generator=gens if batch > 1 else gens[0], output_type="np")
            if mode == "inpaint":
                args.update(mask_image=Image.fromarray(mask, "L"), height=height, width=width)
            out = pipe(**args).images
            rgb = (out * 255).round().astype("uint8")
            assert rgb.shape == (batch, height, width, 3), rgb.shape
            key = f"{mode}|{sampler}|{schedule}|{strength:g}|{batch}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(rgb))
            meta_cases.append({"key": key, "mode": mode, "sampler": sampler, "schedule": schedule, "steps": steps,
                               "strength": strength, "batch": batch})
            print(f"{name}: {key:40s} mean {rgb.mean():7.3f}", flush=True)
    meta = {"model": name, "prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": str(STEPS), "seed": str(SEED),
            "cfg": str(CFG), "width": str(width), "height": str(height), "diffusers": diffusers.__version__,
            "cases": json.dumps(meta_cases)}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.safetensors"
    st_io.save_file_sorted(tensors, path, metadata=meta)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(meta_cases)} cases)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sd1-tiny", "sd2-tiny", "odd-tiny", "sd1-tiny-inpaint"])
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for name in args.models:
        run_model(name)


if __name__ == "__main__":
    main()
