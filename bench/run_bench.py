#!/usr/bin/env python3
"""txt2img benchmark: sdserve vs diffusers/PyTorch, side by side in one run.

CPU (default):
  python3 bench/run_bench.py [--size 512|256] [--threads N] [--repeat N] [--bin PATH] [--cache DIR]
GPU:
  python3 bench/run_bench.py --device cuda [--batches 1,4] [--steps 25] [--compile-mode MODE|none]
                             [--cache DIR] [--bin PATH] [--deadline S] [--json-out FILE]

1. Builds a full-size SD1.5-architecture UNet2DConditionModel and AutoencoderKL (the real SD1.5
   configs, written below; nothing is downloaded), fills every parameter with hash-init values
   (tools/hashinit.py's rule, computed here with vectorised torch integer ops, on the GPU when
   there is one: seconds instead of minutes; bit-identical, and checked against tools/hashinit.py
   on a few tensors each time) and saves them as a float32 diffusers folder in the cache dir
   (default ~/.cache/sdserve/bench/sd15-hashinit; reused while its marker file has the current
   version).
2. Writes seeded inputs per batch N: x [2N,4,s/8,s/8] (N latents twice, for CFG), t [1],
   ctx [2N,77,768] (uncond then cond), z [N,4,s/8,s/8], noise [N,4,s/8,s/8].
3. CPU: runs the reference (bench/ref_diffusers.py, float32, torch.set_num_threads(N)) and ours
   (build/release/sdserve_bench, OMP_NUM_THREADS=N), one after the other, each in its own
   process: one UNet CFG step and one VAE decode, --repeat times, no warm-up, min reported.
   GPU (--device cuda[:N]): for each batch, in this order and each in its own process on the
   same GPU: diffusers eager (--ref-dtype, fp16, SDPA), sdserve (--dtype, f16; build/cuda/
   sdserve_bench), then diffusers + torch.compile(unet) for every batch (last, since compiling
   is slow; skipped with --compile-mode none; a failure is reported, not fatal). Each process
   runs mode "both": warm-up, --repeat UNet CFG steps + VAE decodes (median), then --e2e-repeat
   txt2img runs of --steps Euler steps with CFG 7.5 + VAE decode (median; it/s = steps / UNet
   loop time). The eager process also computes float32 outputs (TF32 off) as the yardstick.
4. Compares the outputs (relative L2 error; CPU UNet acceptance <= 1e-4, GPU half precision
   <= --accept, 1e-2), prints a table and, as the last line, one JSON object.

Python: the tools venv. SDSERVE_BENCH_PYTHON names an existing interpreter (one with torch and
diffusers, e.g. python3 with diffusers on PYTHONPATH from carried wheels: bench/gpu/README.md);
otherwise <repo>/.venv-tools is used, created with tools/setup_venv.sh when absent.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_VERSION = "1"  # bump when the configs, the weight rule or the file layout change
MARKER = "sdserve-bench.json"
UNET_ACCEPT = 1e-4
UNET_ACCEPT_HALF = 1e-2
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' SAFETENSORS_WEIGHTS_NAME

# Real SD1.5 configs (runwayml/stable-diffusion-v1-5, unet/ and vae/config.json).
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- interpreter selection

def tools_python() -> str:
    py = os.environ.get("SDSERVE_BENCH_PYTHON")
    if py:
        return py
    py = os.path.join(REPO, ".venv-tools", "bin", "python")
    if not os.path.exists(py):
        log("run_bench: .venv-tools is absent; creating it with tools/setup_venv.sh (large download)")
        subprocess.run([os.path.join(REPO, "tools", "setup_venv.sh")], check=True)
    return py


def ensure_venv() -> None:
    """Re-executes this script under the tools interpreter unless it already runs there."""
    if os.environ.get("_SDSERVE_BENCH_IN_VENV") == "1":
        return
    py = tools_python()
    py = shutil.which(py) or py  # execve does not search PATH (SDSERVE_BENCH_PYTHON=python3)
    env = dict(os.environ, _SDSERVE_BENCH_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


# ---------------------------------------------------------------- hash-init weights, vectorised

def _hashinit():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import hashinit

    return hashinit


def _s64(u: int) -> int:
    """The int64 with the bits of uint64 u (torch has int64 arithmetic, which wraps the same)."""
    u &= (1 << 64) - 1
    return u - (1 << 64) if u >> 63 else u


def hash_init_torch(name: str, shape, device):
    """tools/hashinit.py's hash_init_tensor(name, shape) as a float32 torch tensor on `device`.

    Same values bit for bit: the splitmix64 steps run on int64 (add and multiply wrap like uint64;
    the logical right shifts are arithmetic shifts masked to the shifted width), the 24-bit value
    converts to float32 exactly, and each scaling is one float32 multiply (or multiply, then add),
    each its own kernel, so there is no fused multiply-add."""
    import torch

    hi = _hashinit()
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape) if shape else 1
    seed = _s64(hi.fnv1a64(name) + 0x9E3779B97F4A7C15)
    v = torch.empty(count, dtype=torch.float32, device=device)
    # Chunks keep the int64 temporaries cache-sized on the CPU; on a GPU one chunk is the tensor.
    step = count if torch.device(device).type == "cuda" else 1 << 18
    for lo in range(0, count, step):
        z = torch.arange(lo, min(lo + step, count), dtype=torch.int64, device=device)
        z += seed
        z ^= (z >> 30) & ((1 << 34) - 1)
        z *= _s64(0xBF58476D1CE4E5B9)
        z ^= (z >> 27) & ((1 << 37) - 1)
        z *= _s64(0x94D049BB133111EB)
        z ^= (z >> 31) & ((1 << 33) - 1)
        z >>= 40
        z &= 0xFFFFFF
        z -= 8388608
        v[lo : lo + z.numel()] = z  # int64 in [-2^23, 2^23) -> float32: exact
        del z
    # Python floats holding float32 values: the products (and 1 + x) are exact in double, so
    # whatever precision a kernel uses for the scalar, the float32 result is the correctly rounded one.
    v *= float(hi._F32_2M23)
    if name.endswith(".weight") and "norm" in name:
        v *= float(hi._F32_NORM_SCALE)
        v += float(hi._F32_ONE)
    elif name.endswith(".bias") or "embedding" in name:
        v *= float(hi._F32_SMALL_SCALE)
    else:
        v *= float(hi._linear_scale(name, shape))
    return v.reshape(shape)


def prepare_model(out_dir: str) -> None:
    """Writes the hash-init SD1.5-architecture unet/ and vae/ to out_dir (run in a child process)."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    hi = _hashinit()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for sub, cls, cfg in (("unet", UNet2DConditionModel, SD15_UNET), ("vae", AutoencoderKL, SD15_VAE)):
        t0 = time.perf_counter()
        with torch.device("meta"):  # names, shapes and config only: nothing is allocated or initialised
            model = cls(**cfg)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        params = {k for k, _ in model.named_parameters()}
        if set(shapes) != params:
            raise RuntimeError(f"{sub}: state_dict entries that are not parameters: {sorted(set(shapes) - params)}")

        def generate(dev: str) -> dict | None:
            sd = {k: hash_init_torch(k, s, dev).cpu() for k, s in shapes.items()}
            # Cross-check with the reference rule: the smallest tensor of each rule branch, and conv_in.
            picks = {}
            for k, s in shapes.items():
                kind = ("norm" if k.endswith(".weight") and "norm" in k else "bias" if k.endswith(".bias")
                        else "embedding" if "embedding" in k else "linear")
                if kind not in picks or math.prod(s) < math.prod(shapes[picks[kind]]):
                    picks[kind] = k
            for k in list(picks.values()) + [k for k in ("conv_in.weight", "decoder.conv_in.weight") if k in shapes]:
                if not np.array_equal(sd[k].numpy().view(np.uint32), hi.hash_init_tensor(k, shapes[k]).view(np.uint32)):
                    log(f"run_bench: {sub}: vectorised hash-init on {dev} differs from tools/hashinit.py for {k}")
                    return None
            return sd

        used = device
        sd = generate(device)
        if sd is None and device != "cpu":
            used = "cpu"
            sd = generate("cpu")
        if sd is None:
            raise RuntimeError(f"{sub}: vectorised hash-init differs from tools/hashinit.py")
        t1 = time.perf_counter()
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        model.save_config(os.path.join(out_dir, sub))
        save_file(sd, os.path.join(out_dir, sub, WEIGHTS_NAME), metadata={"format": "pt"})
        n = sum(math.prod(s) for s in shapes.values())
        log(f"run_bench: {sub}: {n / 1e6:.1f} M parameters, hash-init on {used} {t1 - t0:.1f} s, "
            f"save {time.perf_counter() - t1:.1f} s")
        del sd, model


def ensure_model(cache: str) -> None:
    marker = os.path.join(cache, MARKER)
    if os.path.exists(marker):
        try:
            with open(marker) as f:
                if json.load(f).get("version") == CACHE_VERSION:
                    return
        except (OSError, ValueError):
            pass
    log(f"run_bench: building the hash-init SD1.5-architecture model in {cache} (once; ~3.7 GB)")
    parent = os.path.dirname(cache.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".sd15-hashinit-", dir=parent)
    try:
        # A child process, so the models' memory (and its CUDA context) is gone before anything is timed.
        env = dict(os.environ, _SDSERVE_BENCH_IN_VENV="1")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--_prepare", tmp], check=True, env=env)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"version": CACHE_VERSION, "what": "SD1.5-architecture UNet + VAE, tools/hashinit.py weights",
                       "unet": SD15_UNET, "vae": SD15_VAE}, f, indent=1, sort_keys=True)
        if os.path.exists(cache):
            shutil.rmtree(cache)
        os.rename(tmp, cache)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def write_inputs(path: str, size: int, batch: int = 1) -> None:
    """Seeded inputs for `batch` images (for batch 1, x, ctx and z are those of earlier versions)."""
    import torch
    from safetensors.torch import save_file

    lat = size // 8
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2 * batch, 4, lat, lat, generator=g)
    x = torch.cat([x[:batch], x[:batch]])  # CFG: the same latents twice, cond and uncond contexts differ
    ctx = torch.randn(2 * batch, 77, 768, generator=g)
    z = torch.randn(batch, 4, lat, lat, generator=g) / SD15_VAE["scaling_factor"]
    noise = torch.randn(batch, 4, lat, lat, generator=g)
    t = torch.tensor([500.0])
    save_file({"x": x.contiguous(), "t": t, "ctx": ctx, "z": z, "noise": noise}, path)


# ---------------------------------------------------------------- running and comparing

def last_json(stdout: str) -> dict | None:
    lines = [l for l in stdout.splitlines() if l.strip().startswith("{")]
    return json.loads(lines[-1]) if lines else None


def run_json(cmd: list[str], env: dict, what: str) -> dict:
    log(f"run_bench: {what}: {' '.join(cmd)}")
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"run_bench: {what} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}")
    j = last_json(p.stdout)
    if j is None:
        sys.exit(f"run_bench: {what} printed no JSON line; stderr: {p.stderr.strip()[-500:]}")
    if p.stderr.strip():
        log(p.stderr.rstrip())
    return j


def run_soft(cmd: list[str], env: dict, what: str, timeout: float) -> tuple[dict | None, str | None]:
    """Runs one side; returns (its JSON, None) or (None, why it failed). Never exits."""
    log(f"run_bench: {what}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own group: a timeout also ends compile workers
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = p.communicate()
        log((err or "").rstrip()[-2000:])
        return None, f"timeout after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    if err.strip():
        log(err.rstrip()[-4000:])
    if p.returncode != 0:
        tail = [l for l in err.strip().splitlines() if l.strip()][-1:] or [""]
        return None, f"exit {p.returncode}: {tail[0][:400]}"
    j = last_json(out)
    if j is None:
        return None, f"no JSON line; stderr: {err.strip()[-300:]}"
    j["wall_s"] = wall
    return j, None


def rel_l2(ours, ref) -> float:
    import torch

    ours, ref = ours.double(), ref.double()
    if ours.shape != ref.shape:
        raise SystemExit(f"run_bench: shape mismatch ours {tuple(ours.shape)} vs ref {tuple(ref.shape)}")
    return float(torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref))


def safe_rel(ours, ref) -> float | None:
    """rel_l2 for the GPU summary: None (never an exit) when the shapes differ or it is not finite."""
    if tuple(ours.shape) != tuple(ref.shape):
        log(f"run_bench: shape mismatch {tuple(ours.shape)} vs {tuple(ref.shape)}")
        return None
    v = rel_l2(ours, ref)
    return v if math.isfinite(v) else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(l for l in f if l.startswith("flags")).split()
        keep = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if x in flags]
        return " ".join(keep)
    except (OSError, StopIteration):
        return ""


# ---------------------------------------------------------------- CPU mode

def main_cpu(a) -> int:
    if a.repeat is None:
        a.repeat = 2
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"run_bench: {a.bin} not found; build it: cmake --preset release && cmake --build build/release "
                 "--target sdserve_bench (or pass --bin)")

    ensure_model(a.cache)
    work = a.workdir or tempfile.mkdtemp(prefix="sdserve-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        inputs = os.path.join(work, f"inputs-{a.size}.safetensors")
        write_inputs(inputs, a.size)
        ref_out, our_out = os.path.join(work, "ref.safetensors"), os.path.join(work, "ours.safetensors")
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
        common = ["--model", a.cache, "--inputs", inputs, "--repeat", str(a.repeat), "--threads", str(a.threads),
                  "--warmup", "0"]
        load_before = os.getloadavg()
        ref = run_json([sys.executable, os.path.join(REPO, "bench", "ref_diffusers.py"), *common,
                        "--output", ref_out], env, "reference (diffusers)")
        ours = run_json([a.bin, *common, "--output", our_out], env, "sdserve")
        load_after = os.getloadavg()

        from safetensors.torch import load_file

        r, o = load_file(ref_out), load_file(our_out)
        unet_err, vae_err = rel_l2(o["unet"], r["unet"]), rel_l2(o["vae"], r["vae"])
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    ou, ov, ru, rv = ours["unet_min_s"], ours["vae_min_s"], ref["unet_min_s"], ref["vae_min_s"]
    ours_s, ref_s = ou + ov, ru + rv
    fmt = lambda xs: ", ".join(f"{v:.2f}" for v in xs)
    rows = [
        ("UNet CFG step (batch 2), s", ou, ru, fmt(ours["unet_s"]), fmt(ref["unet_s"])),
        ("VAE decode, s", ov, rv, fmt(ours["vae_s"]), fmt(ref["vae_s"])),
        ("step + decode, s", ours_s, ref_s, "", ""),
        ("load (unet + vae), s", ours["load_s"], ref["load_s"], "", ""),
        ("peak RSS (VmHWM), MiB", ours["peak_rss_mb"], ref["peak_rss_mb"], "", ""),
    ]
    print(f"sdserve vs diffusers {ref.get('torch', '')}, SD1.5 architecture, {a.size}x{a.size} "
          f"(latent {a.size // 8}), f32, {a.threads} threads, min of {a.repeat}")
    print(f"cpu: {cpu_model()} [{cpu_flags()}], nproc {os.cpu_count()}, "
          f"load avg before {load_before[0]:.2f} after {load_after[0]:.2f}")
    print(f"{'':30} {'sdserve':>10} {'diffusers':>10} {'ref/ours':>9}   all runs (ours | ref)")
    for name, x, y, xs, ys in rows:
        ratio = y / x if x > 0 else float("nan")
        extra = f"   {xs} | {ys}" if xs else ""
        print(f"{name:30} {x:10.2f} {y:10.2f} {ratio:8.2f}x{extra}")
    ok = unet_err <= UNET_ACCEPT
    print(f"rel L2 error: UNet {unet_err:.3e} ({'ok' if ok else 'FAIL'}, limit {UNET_ACCEPT:g}), VAE {vae_err:.3e}")
    print(json.dumps({
        "ours_s": ours_s, "ref_s": ref_s, "speedup": ref_s / ours_s if ours_s > 0 else None,
        "ours_rss_mb": ours["peak_rss_mb"], "ref_rss_mb": ref["peak_rss_mb"],
        "unet_ours_s": ou, "unet_ref_s": ru, "unet_speedup": ru / ou,
        "vae_ours_s": ov, "vae_ref_s": rv, "vae_speedup": rv / ov,
        "unet_ours_runs": ours["unet_s"], "unet_ref_runs": ref["unet_s"],
        "vae_ours_runs": ours["vae_s"], "vae_ref_runs": ref["vae_s"],
        "load_ours_s": ours["load_s"], "load_ref_s": ref["load_s"],
        "unet_rel_l2": unet_err, "vae_rel_l2": vae_err, "unet_ok": ok,
        "size": a.size, "threads": a.threads, "repeat": a.repeat,
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "loadavg": [load_before[0], load_after[0]],
        "torch": ref.get("torch"),
    }))
    return 0 if ok else 1


# ---------------------------------------------------------------- GPU mode

SIDES = {  # key -> table label
    "sdserve": "sdserve",
    "eager": "diffusers eager",
    "compile": "diffusers compile",
    "nograph": "sdserve no graphs",  # SDSERVE_CUDA_GRAPHS=0: what the CUDA graphs are worth
    # SDSERVE_CUDA_KEEP_CHANNELS_LAST=0: every convolution's output transposed back to NCHW (the
    # session-6 path), against which channels-last activations are measured
    "transposing": "sdserve NCHW between convs",
    # SDSERVE_CUDA_LEND_GRAPH_MEMORY=0: the VAE decode on memory of its own rather than the UNet
    # graphs' idle blocks (what lending saves at the peak)
    "nolend": "sdserve VAE not lent",
    "profile": "sdserve profile",    # SDSERVE_PROFILE=1, UNet step + VAE decode only: the per-op split
}
# Fields of each side's JSON kept in the summary (the lists too: they show the spread).
KEEP = ("it_s", "e2e_s_per_image", "unet_median_s", "vae_median_s", "unet_s", "vae_s", "e2e_s", "e2e_unet_s",
        "e2e_vae_s", "gpu_peak_mb", "gpu_peak_allocated_mb", "gpu_workspace_mb", "gpu_used_mb",
        "driver_allocs_after_warmup", "driver_allocs_after_timed", "load_s", "wall_s", "dtype", "compile",
        "compile_s", "attention", "init_noise_sigma", "e2e_finite", "profile")


def max_abs_diff(xs, ys) -> float | None:
    if not xs or not ys or len(xs) != len(ys):
        return None
    return max(abs(float(p) - float(q)) for p, q in zip(xs, ys))


def main_gpu(a) -> int:
    from safetensors.torch import load_file

    start = time.perf_counter()
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1:
        sys.exit("run_bench: --batches must list positive integers, e.g. 1,4")
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    for s in sides:
        if s not in SIDES:
            sys.exit(f"run_bench: unknown side {s!r} in --sides (choose from {', '.join(SIDES)})")
    if a.compile_mode == "none":
        sides = [s for s in sides if s != "compile"]
    repeat = a.repeat if a.repeat is not None else 10
    torch_dev = a.device if a.device != "cuda" else "cuda:0"
    if a._side_device:  # testing the GPU-mode flow on a machine without one (--_side-device cpu)
        torch_dev = a._side_device

    def remaining() -> float:
        return a.deadline - (time.perf_counter() - start) if a.deadline else float("inf")

    t0 = time.perf_counter()
    ensure_model(a.cache)
    prep_s = time.perf_counter() - t0
    work = a.workdir or tempfile.mkdtemp(prefix="sdserve-bench-gpu-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    ref_py = [sys.executable, os.path.join(REPO, "bench", "ref_diffusers.py")]
    results: dict[int, dict] = {b: {"batch": b, "unet_batch": 2 * b} for b in batches}
    summary: dict = {}

    def side_cmd(side: str, b: int, inputs: str, out: str) -> list[str]:
        common = ["--model", a.cache, "--inputs", inputs, "--output", out, "--mode", "both", "--batch", str(b),
                  "--steps", str(a.steps), "--cfg", str(a.cfg), "--repeat", str(repeat),
                  "--e2e-repeat", str(a.e2e_repeat), "--warmup", str(a.warmup), "--threads", str(a.threads)]
        if side in ("sdserve", "nograph", "transposing", "nolend"):
            return [a.bin, *common, "--device", torch_dev, "--dtype", a.dtype]
        if side == "profile":
            mode = common.index("--mode") + 1
            rep = common.index("--repeat") + 1
            cmd = list(common)
            cmd[mode], cmd[rep] = "step", "3"
            return [a.bin, *cmd, "--device", torch_dev, "--dtype", a.dtype]
        cmd = [*ref_py, *common, "--device", torch_dev, "--dtype", a.ref_dtype]
        if side == "eager":  # the float32 yardstick at the first batch only (it loads the f32 models)
            return cmd + ([] if a.no_f32_ref or b != batches[0] else ["--f32-ref"])
        return cmd + ["--compile", a.compile_mode]

    def write_summary() -> None:
        if a.json_out:
            with open(a.json_out + ".tmp", "w") as f:
                json.dump(summary, f, indent=1)
            os.replace(a.json_out + ".tmp", a.json_out)

    def run_side(side: str, b: int) -> None:
        inputs = os.path.join(work, f"inputs-{a.size}-b{b}.safetensors")
        out = os.path.join(work, f"{side}-b{b}.safetensors")
        what = f"batch {b}: {SIDES[side]}"
        left = remaining()
        side_env = dict(env)
        if side == "nograph":
            side_env["SDSERVE_CUDA_GRAPHS"] = "0"
        if side == "transposing":
            side_env["SDSERVE_CUDA_KEEP_CHANNELS_LAST"] = "0"
        if side == "nolend":
            side_env["SDSERVE_CUDA_LEND_GRAPH_MEMORY"] = "0"
        if side == "profile":
            side_env["SDSERVE_PROFILE"] = "1"
        if side in ("sdserve", "nograph", "transposing", "nolend", "profile") and not os.access(a.bin, os.X_OK):
            j, err = None, f"{a.bin} not found (build it with -DSDSERVE_WITH_CUDA=ON, or pass --bin)"
        elif left < 30:
            j, err = None, "skipped: --deadline reached"
        else:
            limit = a.compile_timeout if side == "compile" else a.timeout
            j, err = run_soft(side_cmd(side, b, inputs, out), side_env, what, min(limit, left))
        if j is not None and str(j.get("compile", "")).startswith("failed: "):
            err, j = "torch.compile " + j["compile"], None
        entry = {k: j.get(k) for k in KEEP if k in j} if j is not None else {}
        if err:
            entry["error"] = err
            log(f"run_bench: {what}: did not run: {err}")
        else:
            entry["_out"] = out
            its, spi, peak = j.get("it_s"), j.get("e2e_s_per_image"), j.get("gpu_peak_mb")
            if side != "profile":
                log(f"run_bench: {what}: {its or 0:.2f} it/s, {spi or 0:.3f} s/image, "
                    f"peak {peak or 0:.0f} MiB ({j['wall_s']:.0f} s)")
            for k in ("sigmas", "timesteps", "gpu", "torch", "diffusers"):
                if k in j:
                    results[b].setdefault(f"_{k}_{side}", j[k])
        results[b][side] = entry
        publish()

    def publish() -> None:
        summary.clear()
        summary.update(gpu_summary(a, batches, sides, results, repeat, prep_s, time.perf_counter() - start))
        write_summary()

    try:
        for b in batches:
            write_inputs(os.path.join(work, f"inputs-{a.size}-b{b}.safetensors"), a.size, b)
        order = [(s, b) for b in batches for s in sides if s != "compile"]
        order += [("compile", b) for b in batches if "compile" in sides]
        for side, b in order:
            run_side(side, b)
        # Numerics, once every side of a batch has run.
        for b in batches:
            r = results[b]
            outs = {s: load_file(r[s]["_out"]) for s in sides
                    if s in r and "_out" in r[s] and s in ("sdserve", "eager", "compile")}
            if "sdserve" in outs and "eager" in outs:
                o, e = outs["sdserve"], outs["eager"]
                r["unet_rel_l2"] = safe_rel(o["unet"], e["unet"])
                r["vae_rel_l2"] = safe_rel(o["vae"], e["vae"])
                r["e2e_rel_l2"] = safe_rel(o["e2e"], e["e2e"])
            if "eager" in outs and "unet_f32" in outs["eager"]:
                e = outs["eager"]
                r["eager_unet_rel_l2_vs_f32"] = safe_rel(e["unet"], e["unet_f32"])
                r["eager_vae_rel_l2_vs_f32"] = safe_rel(e["vae"], e["vae_f32"])
                if "sdserve" in outs:
                    r["sdserve_unet_rel_l2_vs_f32"] = safe_rel(outs["sdserve"]["unet"], e["unet_f32"])
                    r["sdserve_vae_rel_l2_vs_f32"] = safe_rel(outs["sdserve"]["vae"], e["vae_f32"])
            for side_name, o in outs.items():
                if "e2e" in o:
                    r[side_name]["e2e_finite"] = bool(o["e2e"].isfinite().all())
            if "compile" in outs and "eager" in outs:
                r["compile_unet_rel_l2_vs_eager"] = safe_rel(outs["compile"]["unet"], outs["eager"]["unet"])
            if "_sigmas_sdserve" in r and "_sigmas_eager" in r:
                r["sigmas_max_abs_diff"] = max_abs_diff(r["_sigmas_sdserve"], r["_sigmas_eager"])
                r["timesteps_max_abs_diff"] = max_abs_diff(r["_timesteps_sdserve"], r["_timesteps_eager"])
        publish()
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print_gpu_table(a, batches, sides, summary)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


def gpu_summary(a, batches, sides, results, repeat, prep_s, wall_s) -> dict:
    def first(key):
        for b in batches:
            for s in ("eager", "compile", "sdserve"):
                v = results[b].get(f"_{key}_{s}")
                if v:
                    return v
        return None

    rows = []
    ok = True
    for b in batches:
        r = results[b]
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        row = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
               for k, v in row.items()}
        o, e = r.get("sdserve", {}), r.get("eager", {})
        if o.get("it_s") and e.get("it_s"):
            row["it_s_ratio"] = o["it_s"] / e["it_s"]
        if o.get("e2e_s_per_image") and e.get("e2e_s_per_image"):
            row["e2e_speedup"] = e["e2e_s_per_image"] / o["e2e_s_per_image"]
        if o.get("gpu_peak_mb") and e.get("gpu_peak_mb"):
            row["gpu_peak_ratio"] = o["gpu_peak_mb"] / e["gpu_peak_mb"]
        err = r.get("unet_rel_l2")
        row["unet_ok"] = err is not None and err <= a.accept
        # The compile side is "if it runs there": its failure is reported, not a failed bench.
        ok = ok and row["unet_ok"] and all("error" not in r.get(s, {"error": 1}) for s in sides if s != "compile")
        rows.append(row)
    return {
        "device": a.device, "gpu": first("gpu"), "torch": first("torch"), "diffusers": first("diffusers"),
        "size": a.size, "steps": a.steps, "cfg": a.cfg, "dtype": a.dtype, "ref_dtype": a.ref_dtype,
        "compile_mode": a.compile_mode, "batches": batches, "sides": sides, "repeat": repeat,
        "e2e_repeat": a.e2e_repeat, "warmup": a.warmup, "accept": a.accept, "results": rows, "ok": ok,
        "prepare_s": prep_s, "wall_s": wall_s, "cpu": cpu_model(), "nproc": os.cpu_count(),
    }


def print_gpu_table(a, batches, sides, s) -> None:
    print(f"sdserve {a.dtype} vs diffusers {s.get('diffusers')} {a.ref_dtype} (torch {s.get('torch')}, SDPA), "
          f"SD1.5 architecture, {a.size}x{a.size}, {a.steps} Euler steps, CFG {a.cfg:g}, on {s.get('gpu') or a.device}")
    print(f"medians: UNet step / VAE decode of {s['repeat']}, e2e of {a.e2e_repeat}; "
          f"compile mode: {a.compile_mode}; wall {s['wall_s']:.0f} s (model prep {s['prepare_s']:.0f} s)")
    cols = [x for x in ("sdserve", "eager", "compile", "nograph", "transposing", "nolend") if x in sides]

    def cell(v, fmt):
        return f"{v:{fmt}}" if isinstance(v, (int, float)) and v is not None else "-"

    for row in s["results"]:
        b = row["batch"]
        print()
        head = f"batch {b} (UNet batch {2 * b})"
        print(f"{head:34}" + "".join(f"{SIDES[c]:>19}" for c in cols) + f"{'sdserve/eager':>15}")
        lines = [
            ("it/s (e2e UNet loop)", "it_s", ".2f", lambda o, e: o / e),
            ("e2e s/image (steps + VAE)", "e2e_s_per_image", ".3f", lambda o, e: e / o),
            ("UNet CFG step, ms", "unet_median_s", ".1f", lambda o, e: e / o),
            ("VAE decode, ms", "vae_median_s", ".1f", lambda o, e: e / o),
            ("peak GPU MiB (timed part)", "gpu_peak_mb", ".0f", lambda o, e: o / e),
            ("GPU in use MiB (whole device)", "gpu_used_mb", ".0f", lambda o, e: o / e),
        ]
        for label, key, fmt, ratio in lines:
            scale = 1000.0 if key.endswith("median_s") else 1.0
            vals = [row.get(c, {}).get(key) for c in cols]
            vals = [v * scale if isinstance(v, (int, float)) else None for v in vals]
            o, e = row.get("sdserve", {}).get(key), row.get("eager", {}).get(key)
            rt = f"{ratio(o, e):14.2f}x" if o and e else f"{'-':>15}"
            print(f"{label:34}" + "".join(f"{cell(v, fmt):>19}" for v in vals) + rt)
        allocs = [row.get(c, {}) for c in cols]
        print(f"{'device allocs warm-up -> end':34}" + "".join(
            f"{(str(x.get('driver_allocs_after_warmup')) + ' -> ' + str(x.get('driver_allocs_after_timed'))) if 'driver_allocs_after_timed' in x else '-':>19}"
            for x in allocs))
        if "compile" in row and row["compile"].get("compile_s"):
            print(f"{'compile (first UNet call), s':34}{'':>{19 * (len(cols) - 1)}}{row['compile']['compile_s']:19.1f}")
        for c in cols:
            if "error" in row.get(c, {}):
                print(f"  {SIDES[c]} did not run: {row[c]['error']}")

        def fe(k):
            v = row.get(k)
            return f"{v:.2e}" if isinstance(v, float) else "-"

        prof = row.get("profile", {}).get("profile") or {}
        for part, label in (("unet", "UNet CFG step"), ("vae", "VAE decode")):
            p = dict(prof.get(part) or {})
            if not p:
                continue
            total = (p.pop("(run)", None) or {}).get("s") or sum(v.get("s", 0) for v in p.values())
            print(f"profile, {label} (SDSERVE_PROFILE=1, synchronised per op: {total * 1000:.1f} ms per run):")
            for name, v in sorted(p.items(), key=lambda kv: -kv[1].get("s", 0))[:14]:
                print(f"    {name:28} {v.get('s', 0) * 1000:9.2f} ms {100 * v.get('s', 0) / total if total else 0:5.1f}%"
                      f"  {v.get('calls', 0):6} calls")
        print(f"rel L2 sdserve vs eager: UNet {fe('unet_rel_l2')} ({'ok' if row['unet_ok'] else 'FAIL'}, limit "
              f"{a.accept:g}), VAE {fe('vae_rel_l2')}, e2e image {fe('e2e_rel_l2')}")
        print(f"rel L2 vs float32: UNet sdserve {fe('sdserve_unet_rel_l2_vs_f32')}, eager "
              f"{fe('eager_unet_rel_l2_vs_f32')}; VAE sdserve {fe('sdserve_vae_rel_l2_vs_f32')}, eager "
              f"{fe('eager_vae_rel_l2_vs_f32')}; compile vs eager UNet {fe('compile_unet_rel_l2_vs_eager')}; "
              f"sigma lists max |diff| {fe('sigmas_max_abs_diff')}")
    print()
    print("sdserve/eager: speed rows = sdserve speed / eager speed (>1: sdserve faster); "
          "memory rows = sdserve MiB / eager MiB (<1: sdserve smaller)")


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N (the GPU comparison)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size/8); 256 for a quick run")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: nproc)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed UNet steps and VAE decodes per process (CPU: min of 2; GPU: median of 10)")
    ap.add_argument("--bin", default=None,
                    help="sdserve_bench (default: build/release/sdserve_bench on CPU, build/cuda/sdserve_bench on GPU)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sdserve/bench/sd15-hashinit"),
                    help="the hash-init model folder (made when absent; /tmp/... on a lent GPU machine)")
    ap.add_argument("--workdir", default=None, help="where inputs/outputs go (default: a temp dir, removed)")
    g = ap.add_argument_group("GPU mode (--device cuda)")
    g.add_argument("--batches", default="1,4", help="images per run, comma-separated (UNet batch = 2N with CFG)")
    g.add_argument("--steps", type=int, default=25, help="Euler steps of the e2e runs")
    g.add_argument("--cfg", type=float, default=7.5, help="CFG scale of the e2e runs")
    g.add_argument("--e2e-repeat", type=int, default=3, help="timed e2e runs per process (median)")
    g.add_argument("--warmup", type=int, default=1, help="untimed UNet calls + VAE decodes first")
    g.add_argument("--dtype", default="f16", choices=("f16", "bf16", "f32"), help="sdserve's dtype")
    g.add_argument("--ref-dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="diffusers' dtype")
    g.add_argument("--compile-mode", default="default",
                   help="torch.compile mode for the diffusers compile side: default, max-autotune-no-cudagraphs, "
                        "...; none skips that side")
    g.add_argument("--sides", default="eager,sdserve,compile", help="which sides run, of: eager, sdserve, compile, nograph (CUDA graphs off), transposing (NCHW between convolutions), nolend (VAE not on the graphs' idle memory), profile")
    g.add_argument("--timeout", type=float, default=300, help="seconds per eager / sdserve process")
    g.add_argument("--compile-timeout", type=float, default=360, help="seconds per compile process")
    g.add_argument("--deadline", type=float, default=0,
                   help="overall seconds; sides that would start later are skipped, timeouts are cut to fit (0: none)")
    g.add_argument("--accept", type=float, default=UNET_ACCEPT_HALF, help="UNet rel L2 limit, sdserve vs eager")
    g.add_argument("--no-f32-ref", action="store_true", help="skip the float32 yardstick in the eager process")
    g.add_argument("--json-out", default=None, help="also write the summary JSON here (rewritten after each side)")
    ap.add_argument("--_prepare", help=argparse.SUPPRESS)
    ap.add_argument("--_side-device", dest="_side_device", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a._prepare:
        prepare_model(a._prepare)
        return 0
    if a.size % 8 or a.size < 64:
        sys.exit("run_bench: --size must be a multiple of 8, at least 64")
    gpu = a.device != "cpu"
    if gpu and not (a.device == "cuda" or a.device.startswith("cuda:")):
        sys.exit("run_bench: --device must be cpu, cuda or cuda:N")
    if a.bin is None:
        a.bin = os.path.join(REPO, "build", "cuda" if gpu else "release", "sdserve_bench")
    return main_gpu(a) if gpu else main_cpu(a)


if __name__ == "__main__":
    if "-h" not in sys.argv[1:] and "--help" not in sys.argv[1:]:
        ensure_venv()
    sys.exit(main())
