#!/usr/bin/env python3
"""txt2img benchmark: sdserve vs diffusers/PyTorch, side by side in one run.

  python3 bench/run_bench.py [--size 512|256] [--threads N] [--repeat N] [--bin PATH] [--cache DIR]

1. Builds a full-size SD1.5-architecture UNet2DConditionModel and AutoencoderKL (the real SD1.5
   configs, written below; nothing is downloaded), fills every parameter with hash-init values
   (tools/hashinit.py) and saves them as a diffusers folder in the cache dir (default
   ~/.cache/sdserve/bench/sd15-hashinit; reused while its marker file has the current version).
2. Writes seeded inputs: x [2,4,s/8,s/8], t [1], ctx [2,77,768], z [1,4,s/8,s/8].
3. Runs the reference (bench/ref_diffusers.py, float32, torch.set_num_threads(N)) and ours
   (build/release/sdserve_bench, OMP_NUM_THREADS=N), one after the other, each in its own process.
4. Compares the outputs (relative L2 error; UNet acceptance <= 1e-4), prints a table and, as the
   last line, one JSON object.

Python: the tools venv. SDSERVE_BENCH_PYTHON names an existing interpreter (one with torch and
diffusers); otherwise <repo>/.venv-tools is used, created with tools/setup_venv.sh when absent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_VERSION = "1"  # bump when the configs, the weight rule or the file layout change
MARKER = "sdserve-bench.json"
UNET_ACCEPT = 1e-4

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
    env = dict(os.environ, _SDSERVE_BENCH_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


# ---------------------------------------------------------------- model and inputs

def prepare_model(out_dir: str) -> None:
    """Writes the hash-init SD1.5-architecture unet/ and vae/ to out_dir (run in a child process)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    sys.path.insert(0, os.path.join(REPO, "tools"))
    from hashinit import hash_init_state_dict

    torch.manual_seed(0)  # irrelevant: every parameter is overwritten, but keep construction deterministic
    for sub, cls, cfg in (("unet", UNet2DConditionModel, SD15_UNET), ("vae", AutoencoderKL, SD15_VAE)):
        t0 = time.perf_counter()
        model = cls(**cfg).float()
        n = sum(p.numel() for p in model.parameters())
        hash_init_state_dict(model)
        model.save_pretrained(os.path.join(out_dir, sub), safe_serialization=True)
        del model
        log(f"run_bench: {sub}: {n / 1e6:.1f} M parameters, hash-init + save {time.perf_counter() - t0:.0f} s")


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
        # A child process, so the models' memory is gone before anything is timed.
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


def write_inputs(path: str, size: int) -> None:
    import torch
    from safetensors.torch import save_file

    lat = size // 8
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 4, lat, lat, generator=g)
    x = torch.cat([x[:1], x[:1]])  # CFG: the same latent twice, cond and uncond contexts differ
    ctx = torch.randn(2, 77, 768, generator=g)
    z = torch.randn(1, 4, lat, lat, generator=g) / SD15_VAE["scaling_factor"]
    t = torch.tensor([500.0])
    save_file({"x": x.contiguous(), "t": t, "ctx": ctx, "z": z}, path)


# ---------------------------------------------------------------- running and comparing

def run_json(cmd: list[str], env: dict, what: str) -> dict:
    log(f"run_bench: {what}: {' '.join(cmd)}")
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"run_bench: {what} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}")
    lines = [l for l in p.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        sys.exit(f"run_bench: {what} printed no JSON line; stderr: {p.stderr.strip()[-500:]}")
    if p.stderr.strip():
        log(p.stderr.rstrip())
    return json.loads(lines[-1])


def rel_l2(ours, ref) -> float:
    import torch

    ours, ref = ours.double(), ref.double()
    if ours.shape != ref.shape:
        raise SystemExit(f"run_bench: shape mismatch ours {tuple(ours.shape)} vs ref {tuple(ref.shape)}")
    return float(torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref))


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size/8); 256 for a quick run")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: nproc)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each part (min is reported)")
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "release", "sdserve_bench"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sdserve/bench/sd15-hashinit"))
    ap.add_argument("--workdir", default=None, help="where inputs/outputs go (default: a temp dir, removed)")
    ap.add_argument("--_prepare", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a._prepare:
        prepare_model(a._prepare)
        return 0
    if a.size % 8 or a.size < 64:
        sys.exit("run_bench: --size must be a multiple of 8, at least 64")
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
        common = ["--model", a.cache, "--inputs", inputs, "--repeat", str(a.repeat), "--threads", str(a.threads)]
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


if __name__ == "__main__":
    ensure_venv()
    sys.exit(main())
