#!/usr/bin/env python3
"""Reference side of the LoRA switching benchmark: diffusers + PEFT on the CPU (or a CUDA GPU).

  ref_lora_diffusers.py --model DIR --lora-a A.safetensors --lora-b B.safetensors
                        [--device cpu|cuda[:N]] [--dtype fp32|fp16|bf16] [--repeat N]
                        [--fuse-repeat N] [--step-repeat N] [--threads N] [--merged-out OUT]

The same kohya LoRA files and the same UNet folder (DIR/unet) as bench/lora_bench.cc. The UNet
is diffusers' UNet2DConditionModel; each file is read and converted with
StableDiffusionPipeline.lora_state_dict (diffusers' kohya converter) and injected as a PEFT
adapter with StableDiffusionPipeline.load_lora_into_unet (the UNet part of load_lora_weights),
as adapters "a" and "b". Timed (median and min of the runs are reported):

  parse_s              lora_state_dict(file A): read + kohya -> diffusers key conversion
                       (--repeat runs); compare with sdserve's open_s
  inject_a_s/_b_s      load_lora_into_unet: PEFT layers created and the factors copied in (once
                       per adapter: a second load of the same name is an error in diffusers)
  Unfused (diffusers' default: the adapters stay beside the base weights and every forward
  adds x @ A^T @ B^T * scale per layer; switching only changes which adapters are active):
    unfused_ab_s       set_adapters("a") -> set_adapters("b")
    unfused_mix_s      set_adapters(["a", "b"], [0.5, 0.7])
    unfused_off_s      disable_adapters() (back to the base model)
  Fused (the path comparable to sdserve's merged weights: no per-step cost):
    fused_apply_s      set_adapters("a") + fuse_lora(adapter_names=["a"]) from the base
    fused_ab_s         unfuse_lora() + set_adapters("b") + fuse_lora(["b"])
    fused_mix_s        unfuse_lora() + set_adapters(["a","b"], [0.5, 0.7]) + fuse_lora(["a","b"])
    fused_restore_s    unfuse_lora() (back to the base model; --fuse-repeat runs of the cycle)
  step_unfused_s       one UNet CFG step (batch 2, 64x64 latents, 77-token context, seeded
                       random inputs) with adapter "a" active, unfused
  step_fused_s         the same step with "a" fused (= the base model's cost)
  step_unfused_mix_s   the same step with "a"@0.5 + "b"@0.7 active, unfused
  (the three step variants run interleaved, --step-repeat rounds)

restore_exact compares every base weight the adapters touch, after the fused cycles, with a copy
taken before any fusing: PEFT's unmerge subtracts the delta again, so the weights come back only
up to rounding (restore_max_abs_diff, restore_changed_elements say how far).
--merged-out writes the fused weights of the modules sdserve_lora_bench --merged-out writes
("a/<module>" with "a" fused, "mix/<module>" with the mix fused) plus "base/<module>", f32.

Prints one JSON line; any error: one line on stderr, exit status 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

DTYPES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16", "bf16": "bfloat16"}

# The modules sdserve_lora_bench --merged-out writes (bench/lora_bench.cc, kCompared).
COMPARED = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.1.attentions.0.proj_in",
    "down_blocks.0.resnets.0.conv1",
)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def one_line(e: BaseException, limit: int = 1000) -> str:
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def stats(res: dict, name: str, runs: list[float]) -> None:
    res[f"{name}_s"] = runs
    res[f"{name}_median_s"] = statistics.median(runs) if runs else None
    res[f"{name}_min_s"] = min(runs) if runs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora-a", required=True)
    ap.add_argument("--lora-b", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--repeat", type=int, default=3, help="runs of the parse and of the unfused switches")
    ap.add_argument("--fuse-repeat", type=int, default=None, help="runs of the fused cycle (default: --repeat)")
    ap.add_argument("--step-repeat", type=int, default=1, help="UNet CFG steps per variant (0: none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--merged-out", default=None)
    a = ap.parse_args()
    fuse_repeat = a.repeat if a.fuse_repeat is None else a.fuse_repeat
    if a.repeat < 1 or fuse_repeat < 1 or a.step_repeat < 0:
        ap.error("--repeat and --fuse-repeat must be >= 1, --step-repeat >= 0")

    import torch
    import diffusers
    import peft
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file

    # diffusers warns, loading "b", that the keys of the already loaded "a" are "missing" from
    # b's state dict (checked: both adapters' factors are loaded exactly); keep stderr readable.
    diffusers.utils.logging.set_verbosity_error()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    dev = torch.device(a.device)
    on_cuda = dev.type == "cuda"
    if on_cuda and dev.index is None:
        dev = torch.device("cuda", 0)
    if on_cuda:
        torch.cuda.set_device(dev)
    dtype = getattr(torch, DTYPES[a.dtype])
    torch.set_num_threads(a.threads)

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(dev)

    def timed(fn) -> float:
        sync()
        s = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - s

    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=dtype).to(dev).eval()
    sync()
    res: dict = {"load_s": time.perf_counter() - t0}

    parse_s = []
    for _ in range(a.repeat):
        s = time.perf_counter()
        StableDiffusionPipeline.lora_state_dict(a.lora_a)
        parse_s.append(time.perf_counter() - s)
    stats(res, "parse", parse_s)

    def inject(path: str, name: str) -> float:
        sd, alphas = StableDiffusionPipeline.lora_state_dict(path)
        return timed(lambda: StableDiffusionPipeline.load_lora_into_unet(sd, alphas, unet, adapter_name=name))

    res["inject_a_s"] = inject(a.lora_a, "a")
    res["inject_b_s"] = inject(a.lora_b, "b")

    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {n: m for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)}
    res["adapter_layers"] = len(layers)
    base = {n: m.base_layer.weight.detach().clone() for n, m in layers.items()}
    res["touched_bytes"] = sum(t.numel() * t.element_size() for t in base.values())

    with torch.no_grad():
        # Unfused switching: which adapters are active, and their weights.
        ab, mix, off = [], [], []
        for _ in range(a.repeat):
            unet.enable_adapters()
            unet.set_adapters("a")
            ab.append(timed(lambda: unet.set_adapters("b")))
            mix.append(timed(lambda: unet.set_adapters(["a", "b"], [0.5, 0.7])))
            off.append(timed(unet.disable_adapters))
        unet.enable_adapters()
        stats(res, "unfused_ab", ab)
        stats(res, "unfused_mix", mix)
        stats(res, "unfused_off", off)

        # Fused switching: the merged-weights path.
        def fuse(names, weights=None):
            unet.set_adapters(names, weights)
            unet.fuse_lora(adapter_names=names)

        def switch(names, weights=None):
            unet.unfuse_lora()
            fuse(names, weights)

        fa, fab, fmix, frest = [], [], [], []
        for _ in range(fuse_repeat):
            fa.append(timed(lambda: fuse(["a"])))
            fab.append(timed(lambda: switch(["b"])))
            switch(["a"])
            fmix.append(timed(lambda: switch(["a", "b"], [0.5, 0.7])))
            frest.append(timed(unet.unfuse_lora))
        stats(res, "fused_apply", fa)
        stats(res, "fused_ab", fab)
        stats(res, "fused_mix", fmix)
        stats(res, "fused_restore", frest)

        max_diff, changed = 0.0, 0
        for n, m in layers.items():
            d = (m.base_layer.weight.detach().float() - base[n].float()).abs()
            max_diff = max(max_diff, float(d.max()))
            changed += int((d != 0).sum())
        res["restore_exact"] = changed == 0
        res["restore_max_abs_diff"] = max_diff
        res["restore_changed_elements"] = changed
        res["touched_elements"] = sum(t.numel() for t in base.values())

        if a.merged_out:
            out = {}
            for tag, names, weights in (("a", ["a"], None), ("mix", ["a", "b"], [0.5, 0.7])):
                fuse(names, weights)
                for mname in COMPARED:
                    if mname in layers:
                        out[f"{tag}/{mname}"] = layers[mname].base_layer.weight.detach().float().cpu().clone()
                unet.unfuse_lora()
            for mname in COMPARED:
                if mname in base:
                    out[f"base/{mname}"] = base[mname].float().cpu().clone()
            save_file(out, a.merged_out)
            res["merged_out"] = a.merged_out
        for n, m in layers.items():  # back to the exact base weights for the steps below
            m.base_layer.weight.data.copy_(base[n])
        del base

    if a.step_repeat > 0:
        g = torch.Generator().manual_seed(1234)
        lat = torch.randn(1, 4, 64, 64, generator=g)
        x = torch.cat([lat, lat]).to(dev, dtype)
        ctx = torch.randn(2, 77, 768, generator=g).to(dev, dtype)
        t = torch.tensor(500.0, device=dev)

        def step():
            unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0].float().cpu()

        # Interleaved (unfused {A}, unfused mix, fused {A}) per round, so that a busy machine
        # slows all three alike; the minimum is the figure to read on a shared CPU.
        runs: dict = {"step_unfused": [], "step_unfused_mix": [], "step_fused": []}
        for _ in range(a.step_repeat):
            unet.set_adapters("a")
            with torch.inference_mode():
                runs["step_unfused"].append(timed(step))
            unet.set_adapters(["a", "b"], [0.5, 0.7])
            with torch.inference_mode():
                runs["step_unfused_mix"].append(timed(step))
            with torch.no_grad():
                unet.set_adapters("a")
                unet.fuse_lora(adapter_names=["a"])
            with torch.inference_mode():
                runs["step_fused"].append(timed(step))
            with torch.no_grad():
                unet.unfuse_lora()
        for k, v in runs.items():
            stats(res, k, v)

    res.update({
        "device": str(dev), "dtype": a.dtype, "threads": torch.get_num_threads(), "repeat": a.repeat,
        "fuse_repeat": fuse_repeat, "step_repeat": a.step_repeat, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "peft": peft.__version__, "peak_rss_mb": peak_rss_mb(),
    })
    if on_cuda:
        res["gpu"] = torch.cuda.get_device_name(dev)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line, non-zero exit
        print(f"ref_lora_diffusers: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
