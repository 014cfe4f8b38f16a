#!/usr/bin/env python3
"""Reference side of the txt2img benchmark: diffusers/PyTorch, float32, CPU.

  ref_diffusers.py --model DIR --inputs IN.safetensors --output OUT.safetensors [--repeat N] [--threads N]

Same contract as sdserve_bench (bench/sd_bench.cc): loads unet/ and vae/ from the diffusers
folder DIR, runs one UNet CFG step (batch 2) and one VAE decode `repeat` times each on the
inputs x, t, ctx, z, writes {"unet", "vae"} to OUT and prints one JSON line
{"unet_s": [...], "vae_s": [...], "load_s": x, "peak_rss_mb": VmHWM, ...}.
Run by bench/run_bench.py in its own process, so the thread count and the peak RSS are its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(a.threads)
    inp = load_file(a.inputs)
    x, t, ctx, z = (inp[k].float() for k in ("x", "t", "ctx", "z"))

    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0

    unet_s, vae_s = [], []
    with torch.inference_mode():
        for _ in range(a.repeat):
            s = time.perf_counter()
            eps = unet(x, t, encoder_hidden_states=ctx).sample
            unet_s.append(time.perf_counter() - s)
        for _ in range(a.repeat):
            s = time.perf_counter()
            img = vae.decode(z).sample
            vae_s.append(time.perf_counter() - s)
    save_file({"unet": eps.contiguous(), "vae": img.contiguous()}, a.output)
    print(json.dumps({
        "unet_s": unet_s, "vae_s": vae_s, "unet_min_s": min(unet_s), "vae_min_s": min(vae_s),
        "load_s": load_s, "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "attention": "diffusers default (SDPA)",
    }), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line, non-zero exit
        print(f"ref_diffusers: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        sys.exit(1)
