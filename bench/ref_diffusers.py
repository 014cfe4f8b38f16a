#!/usr/bin/env python3
"""Reference side of the txt2img benchmark: diffusers/PyTorch on the CPU or a CUDA GPU.

  ref_diffusers.py --model DIR --inputs IN.safetensors --output OUT.safetensors
                   [--device cpu|cuda[:N]] [--dtype fp32|fp16|bf16] [--mode step|e2e|both]
                   [--batch N] [--steps N] [--cfg X] [--repeat N] [--e2e-repeat N] [--warmup N]
                   [--threads N] [--compile [MODE]] [--f32-ref]

Same contract, inputs, modes and JSON fields as sdserve_bench (bench/sd_bench.cc, whose header
describes them): loads unet/ and vae/ from the diffusers folder DIR in --dtype on --device,
attention through PyTorch SDPA (diffusers' AttnProcessor2_0, its default), all under
torch.inference_mode. step: --repeat UNet CFG steps (batch 2N) and VAE decodes; e2e: --steps
Euler steps with CFG (diffusers' EulerDiscreteScheduler with SD1.5's schedule, so the sigma list
is the one sdserve's "Euler" uses) + a VAE decode, --e2e-repeat times; both: one then the other.
Each timed part lies between two torch.cuda.synchronize() calls; the median is reported.
Inputs start on the host and outputs are copied back (f32), as on the sdserve side; in e2e the
latents stay on the device between steps, as in diffusers' pipeline.

On CUDA the JSON line also has gpu_peak_mb (torch.cuda.max_memory_reserved over the timed
parts: the stats are reset after the warm-up), gpu_peak_allocated_mb (max_memory_allocated),
gpu_used_mb (whole device, cudaMemGetInfo, after the timed parts), driver_allocs_after_warmup
and driver_allocs_after_timed (the caching allocator's num_device_alloc), gpu, torch, diffusers.

--compile [MODE] wraps the UNet in torch.compile(mode=MODE; "default" = no mode) before the
warm-up (which then runs at least 2 UNet calls; compile_s is the first call's time). A failure
is reported as "compile": "failed: <reason>" with null timings and exit status 0.
--f32-ref (step mode): after the timed parts, also runs the step and the decode with float32
copies of the models (TF32 off) and writes them as "unet_f32"/"vae_f32", the yardstick for
both sides' half-precision error.
Run by bench/run_bench.py in its own process, so the thread count, the peak RSS and the GPU
memory figures are its own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

DTYPES = {"fp32": "float32", "f32": "float32", "float32": "float32",
          "fp16": "float16", "f16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
MIB = 1024.0 * 1024.0

# diffusers' EulerDiscreteScheduler.from_config(runwayml/stable-diffusion-v1-5 scheduler_config):
# the keys SD1.5's json sets, plus the class defaults it relies on, spelled out.
EULER_SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="epsilon", steps_offset=1, timestep_spacing="linspace",
                  interpolation_type="linear", use_karras_sigmas=False)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def one_line(e: BaseException, limit: int = 400) -> str:
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--mode", default="step", choices=("step", "e2e", "both"))
    ap.add_argument("--batch", type=int, default=0, help="images (UNet batch 2N); 0: from the inputs")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--repeat", type=int, default=2, help="timed UNet steps and VAE decodes (step mode)")
    ap.add_argument("--e2e-repeat", type=int, default=3, help="timed txt2img runs (e2e mode)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed UNet calls + VAE decodes first")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="torch.compile the UNet (MODE: default | max-autotune-no-cudagraphs | ...)")
    ap.add_argument("--f32-ref", action="store_true", help="also write float32 outputs unet_f32/vae_f32 (step mode)")
    a = ap.parse_args()
    if a.repeat < 1 or a.e2e_repeat < 1 or a.warmup < 0 or a.steps < 1 or a.batch < 0:
        ap.error("--repeat, --e2e-repeat and --steps must be >= 1, --warmup and --batch >= 0")

    import torch
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    dev = torch.device(a.device)
    on_cuda = dev.type == "cuda"
    if on_cuda and dev.index is None:
        dev = torch.device("cuda", 0)
    dtype = getattr(torch, DTYPES[a.dtype])
    do_step, do_e2e = a.mode != "e2e", a.mode != "step"
    if on_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        torch.cuda.set_device(dev)
    torch.set_num_threads(a.threads)

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(dev)

    inp = load_file(a.inputs)
    x, t, ctx, z = (inp[k].float() for k in ("x", "t", "ctx", "z"))
    if x.shape[0] % 2:
        raise ValueError(f"x must hold 2N samples (CFG), has {tuple(x.shape)}")
    n = x.shape[0] // 2
    if a.batch and a.batch != n:
        raise ValueError(f"--batch {a.batch} but the inputs hold batch {n} (x {tuple(x.shape)})")
    if do_e2e and "noise" not in inp:
        raise ValueError(f"{a.inputs}: no tensor 'noise' (needed by e2e)")
    noise = inp["noise"].float() if do_e2e else None
    t_step = float(t.reshape(-1)[0])

    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=dtype).to(dev).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=dtype).to(dev).eval()
    ctx_d = ctx.to(dev, dtype)  # uploaded once, like the pipeline's prompt embeddings
    sync()
    load_s = time.perf_counter() - t0
    attention = sorted({type(p).__name__ for p in list(unet.attn_processors.values()) + list(vae.attn_processors.values())})
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    info = {
        "device": str(dev), "dtype": SHORT[DTYPES[a.dtype]], "batch": n, "unet_batch": 2 * n,
        "size": int(x.shape[2]) * 8, "steps": a.steps, "mode": a.mode, "cfg": a.cfg, "load_s": load_s,
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "attention": ", ".join(attention) + " (torch SDPA)", "threads": torch.get_num_threads(),
        "compile": "off" if a.compile is None else None,
    }
    if on_cuda:
        info["gpu"] = torch.cuda.get_device_name(dev)

    model = unet
    if a.compile is not None:
        try:
            model = torch.compile(unet, mode=None if a.compile == "default" else a.compile)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            info["compile"] = "failed: " + one_line(e)

    def unet_call(xh, tt):
        """One UNet call as the pipeline makes it: host f32 in, host f32 out."""
        return model(xh.to(dev, dtype), tt, encoder_hidden_states=ctx_d, return_dict=False)[0].float().cpu()

    def vae_call(zh):
        return vae.decode(zh.to(dev, dtype), return_dict=False)[0].float().cpu()

    def alloc_count():
        return torch.cuda.memory_stats(dev).get("num_device_alloc") if on_cuda else None

    out = {}
    res = {}
    with torch.inference_mode():
        # A 0-dim float32 timestep on the device: the form the scheduler's timesteps take in e2e,
        # so a compiled UNet sees one input signature.
        t_d = torch.tensor(t_step, dtype=torch.float32, device=dev)
        warmup = max(a.warmup, 2) if a.compile is not None else a.warmup
        if info["compile"] is None:
            try:
                sync()
                s = time.perf_counter()
                unet_call(x, t_d)
                sync()
                info["compile_s"] = time.perf_counter() - s
                info["compile"] = f"ok ({a.compile})"
                warmup -= 1
            except Exception as e:  # noqa: BLE001 - reported, not raised
                info["compile"] = "failed: " + one_line(e)
        if str(info["compile"]).startswith("failed"):
            print(json.dumps({**info, "it_s": None, "e2e_s_per_image": None, "gpu_peak_mb": None}), flush=True)
            return 0
        for _ in range(warmup):
            unet_call(x, t_d)
            vae_call(z)
        sync()
        allocs_warm = alloc_count()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(dev)

        if do_step:
            unet_s, vae_s = [], []
            for _ in range(a.repeat):
                sync()
                s = time.perf_counter()
                eps = unet_call(x, t_d)
                sync()
                unet_s.append(time.perf_counter() - s)
            for _ in range(a.repeat):
                sync()
                s = time.perf_counter()
                img = vae_call(z)
                sync()
                vae_s.append(time.perf_counter() - s)
            out["unet"], out["vae"] = eps.contiguous(), img.contiguous()
            res.update(unet_s=unet_s, vae_s=vae_s, unet_min_s=min(unet_s), vae_min_s=min(vae_s),
                       unet_median_s=statistics.median(unet_s), vae_median_s=statistics.median(vae_s))

        if do_e2e:
            sched = EulerDiscreteScheduler(**EULER_SD15)
            e2e_s, loop_s, dec_s = [], [], []
            for _ in range(a.e2e_repeat):
                sched.set_timesteps(a.steps, device=dev)
                sync()
                s0 = time.perf_counter()
                latents = noise.to(dev) * sched.init_noise_sigma
                for tt in sched.timesteps:
                    lin = sched.scale_model_input(torch.cat([latents] * 2), tt)
                    pred = model(lin.to(dtype), tt, encoder_hidden_states=ctx_d, return_dict=False)[0]
                    u, c = pred.float().chunk(2)
                    latents = sched.step(u + a.cfg * (c - u), tt, latents, return_dict=False)[0]
                sync()
                s1 = time.perf_counter()
                images = vae_call(latents / scaling + shift)
                sync()
                s2 = time.perf_counter()
                e2e_s.append(s2 - s0)
                loop_s.append(s1 - s0)
                dec_s.append(s2 - s1)
            out["e2e"] = images.contiguous()
            res.update(e2e_s=e2e_s, e2e_unet_s=loop_s, e2e_vae_s=dec_s,
                       e2e_s_per_image=statistics.median(e2e_s) / n, it_s=a.steps / statistics.median(loop_s),
                       sigmas=[float(v) for v in sched.sigmas], timesteps=[float(v) for v in sched.timesteps],
                       init_noise_sigma=float(sched.init_noise_sigma))
        else:
            res.update(e2e_s_per_image=None, it_s=None)

        sync()
        if on_cuda:
            free_b, total_b = torch.cuda.mem_get_info(dev)
            res.update(gpu_peak_mb=torch.cuda.max_memory_reserved(dev) / MIB,
                       gpu_peak_allocated_mb=torch.cuda.max_memory_allocated(dev) / MIB,
                       gpu_used_mb=(total_b - free_b) / MIB,
                       driver_allocs_after_warmup=allocs_warm, driver_allocs_after_timed=alloc_count())
        else:
            res["gpu_peak_mb"] = None

        if a.f32_ref and do_step:
            del model, unet, vae
            if on_cuda:
                torch.cuda.empty_cache()
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            u32 = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=torch.float32)
            u32 = u32.to(dev).eval()
            out["unet_f32"] = u32(x.to(dev), t_d, encoder_hidden_states=ctx.to(dev),
                                  return_dict=False)[0].float().cpu().contiguous()
            del u32
            v32 = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32).to(dev).eval()
            out["vae_f32"] = v32.decode(z.to(dev), return_dict=False)[0].float().cpu().contiguous()
            del v32
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    save_file(out, a.output)
    print(json.dumps({
        **info, **res, "warmup": a.warmup, "repeat": a.repeat if do_step else 0,
        "e2e_repeat": a.e2e_repeat if do_e2e else 0, "peak_rss_mb": peak_rss_mb(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line, non-zero exit
        print(f"ref_diffusers: {one_line(e, 1000)}", file=sys.stderr)
        sys.exit(1)
