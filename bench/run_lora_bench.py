#!/usr/bin/env python3
"""LoRA switching benchmark: sdserve vs diffusers + PEFT, side by side in one run.

  python3 bench/run_lora_bench.py [--ranks 32,128] [--locon] [--threads N] [--repeat N]
                                  [--fuse-repeat N] [--step-repeat N] [--bin PATH] [--cache DIR]
                                  [--workdir DIR] [--device cpu|cuda[:N]] [--dtype f32|f16]
                                  [--json-out FILE]

1. The full-size SD1.5-architecture hash-init model of bench/run_bench.py (its cache dir,
   default ~/.cache/sdserve/bench/sd15-hashinit; built there when absent, run_bench.ensure_model).
2. For each rank R: build/release/sdserve_lora_bench writes two seeded random kohya LoRAs
   (float16 factors, rank R, alpha R/2, every transformer-block linear + proj_in/proj_out, and
   with --locon every resnet conv1/conv2) and times open, apply, the switches, the no-op, the
   restore and one UNet CFG step with {A} merged (bench/lora_bench.cc says what each number is); then
   bench/ref_lora_diffusers.py times diffusers on the same two files and the same UNet: parse,
   the unfused switches (set_adapters), the fused ones (fuse_lora / unfuse_lora) and one step
   unfused and fused. Each side runs in its own process with the same thread count
   (OMP_NUM_THREADS, torch.set_num_threads), ours first. Switches: medians; UNet steps: the
   minimum (the run least slowed by other jobs on a shared machine); both lists are in the JSON.
3. Checks: sdserve's restore is exact (digest of every patchable weight after load = after all
   the switches and a restore; the bench fails otherwise), and sdserve's merged weights agree
   with diffusers' fused ones on a few modules: in f32 the error relative to the size of the
   update, ||ours - ref|| / ||ref - base|| <= 1e-4; in f16/bf16, where rounding the base weight
   alone moves it by more than that (about 5e-3 of a rank-32 update in f16), the error relative
   to the weight, ||ours - ref|| / ||ref|| <= 2 eps (eps = 2^-10 for f16, 2^-7 for bf16: two
   roundings to the storage type, each at most half an ulp).
4. Prints a table per rank and, as the last line, one JSON object.

Python: the tools venv, chosen as bench/run_bench.py does (SDSERVE_BENCH_PYTHON, else
<repo>/.venv-tools).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run_bench  # noqa: E402  (model cache, interpreter choice, CPU description)

MERGE_ACCEPT = 1e-4  # f32: ||ours - ref|| / ||ref - base||
# f16/bf16: ||ours - ref|| / ||ref||, two roundings to the storage type
MERGE_ACCEPT_HALF = {"f16": 2 * 2.0**-10, "bf16": 2 * 2.0**-7}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_venv() -> None:
    """Re-executes this script under the tools interpreter unless it already runs there."""
    if os.environ.get("_SDSERVE_BENCH_IN_VENV") == "1":
        return
    py = run_bench.tools_python()
    py = shutil.which(py) or py
    env = dict(os.environ, _SDSERVE_BENCH_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


def run_side(cmd: list[str], env: dict, what: str) -> dict:
    """Runs one side; its JSON line (kept even when it exits non-zero, e.g. an inexact restore)."""
    log(f"run_lora_bench: {what}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.stderr.strip():
        log(p.stderr.rstrip()[-4000:])
    j = run_bench.last_json(p.stdout)
    if j is None:
        tail = [l for l in p.stderr.strip().splitlines() if l.strip()][-1:] or [""]
        sys.exit(f"run_lora_bench: {what} failed (exit {p.returncode}): {tail[0][:500]}")
    j["exit"] = p.returncode
    j["wall_s"] = time.perf_counter() - t0
    return j


def compare_merged(ours_path: str, ref_path: str, dtype: str = "f32") -> dict:
    """Per module and set: ||ours - ref|| / ||ref - base|| (the error relative to the update) in
    f32, ||ours - ref|| / ||ref|| (relative to the weight) in f16/bf16."""
    import torch
    from safetensors.torch import load_file

    o, r = load_file(ours_path), load_file(ref_path)
    out = {}
    for k in sorted(o):
        if k not in r:
            continue
        mod = k.split("/", 1)[1]
        base = r[f"base/{mod}"].double()
        ref, ours = r[k].double(), o[k].double()
        if ours.shape != ref.shape:
            out[k] = float("inf")
            continue
        scale = ref - base if dtype == "f32" else ref
        out[k] = float(torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(scale))
    return out


def fmt(v, f=".3f") -> str:
    return f"{v:{f}}" if isinstance(v, (int, float)) and v is not None else "-"


def run_rank(a, rank: int, work: str, env: dict) -> dict:
    d = os.path.join(work, f"rank{rank}{'-locon' if a.locon else ''}")
    os.makedirs(d, exist_ok=True)
    ours_merged, ref_merged = os.path.join(d, "ours_merged.safetensors"), os.path.join(d, "ref_merged.safetensors")
    common = ["--model", a.cache, "--threads", str(a.threads), "--repeat", str(a.repeat),
              "--step-repeat", str(a.step_repeat), "--device", a.device]
    cmd = [a.bin, *common, "--workdir", d, "--rank", str(rank), "--dtype", a.dtype, "--merged-out", ours_merged]
    if a.locon:
        cmd.append("--locon")
    ours = run_side(cmd, env, f"rank {rank}: sdserve")
    ref_dtype = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}[a.dtype]
    ref = run_side([sys.executable, os.path.join(HERE, "ref_lora_diffusers.py"), *common, "--dtype", ref_dtype,
                    "--lora-a", ours["lora_a"], "--lora-b", ours["lora_b"], "--merged-out", ref_merged,
                    "--fuse-repeat", str(a.fuse_repeat if a.fuse_repeat else a.repeat)],
                   env, f"rank {rank}: diffusers")
    merged = compare_merged(ours_merged, ref_merged, a.dtype)
    return {"rank": rank, "ours": ours, "ref": ref, "merged_rel_err": merged}


def print_rank(r: dict) -> dict:
    o, f = r["ours"], r["ref"]
    # Steps: the minimum (as bench/run_bench.py's CPU table): on a shared machine it is the run
    # least slowed by other jobs. Switches: the median.
    step_o, step_f, step_u = o.get("step_min_s"), f.get("step_fused_min_s"), f.get("step_unfused_min_s")
    step_um = f.get("step_unfused_mix_min_s")
    mods = o.get("lora_modules")
    print(f"\nLoRA rank {r['rank']} (alpha {o.get('alpha'):g}), {mods} modules"
          f"{' (' + str(o.get('lora_conv3x3_modules')) + ' 3x3 convs)' if o.get('locon') else ''}, "
          f"{o['lora_file_bytes'] / 2**20:.1f} MiB file, {o['patched_count']} weights patched "
          f"({o['backup_bytes'] / 2**20:.0f} MiB backed up, {o.get('factor_cache_bytes', 0) / 2**20:.0f} MiB of "
          f"factors kept on the device); medians of {o['repeat']} "
          f"(diffusers fused: of {f['fuse_repeat']}), steps: min of {o.get('step_repeat')}, seconds")
    print(f"{'':36}{'sdserve':>10}{'diffusers fused':>17}{'diffusers unfused':>19}")
    rows = [
        ("open / parse one file", o["open_median_s"], f["parse_median_s"], f["parse_median_s"]),
        ("first apply {A} (backups, COW)", o["first_apply_s"], None, f["inject_a_s"]),
        ("apply {A} from base", o["apply_median_s"], f["fused_apply_median_s"], None),
        ("switch {A} -> {B}", o["switch_ab_median_s"], f["fused_ab_median_s"], f["unfused_ab_median_s"]),
        ("switch {A} -> {A@0.5 + B@0.7}", o["switch_mix_median_s"], f["fused_mix_median_s"],
         f["unfused_mix_median_s"]),
        ("back to base", o["restore_median_s"], f["fused_restore_median_s"], f["unfused_off_median_s"]),
        ("same set again (no-op)", o["noop_median_s"], None, None),
        ("switch {A} -> {B}, min", o["switch_ab_min_s"], f["fused_ab_min_s"], f["unfused_ab_min_s"]),
        ("UNet CFG step (min), {A} active", step_o, step_f, step_u),
        ("UNet CFG step (min), {A@.5 + B@.7}", step_o, step_f, step_um),
    ]
    for name, x, y, z in rows:
        fx = "%.6f" % x if name.startswith("same set") and x is not None else fmt(x)
        print(f"{name:36}{fx:>10}{fmt(y):>17}{fmt(z):>19}")
    ratio_o = o["switch_ab_median_s"] / step_o if step_o else None
    ratio_f = f["fused_ab_median_s"] / step_f if step_f else None
    ratio_u = f["unfused_ab_median_s"] / step_u if step_u else None
    over_u = (step_u - step_f) / step_f if step_u and step_f else None
    over_um = (step_um - step_f) / step_f if step_um and step_f else None
    print(f"{'switch {A}->{B} (median) / step':36}{fmt(ratio_o):>10}{fmt(ratio_f):>17}{fmt(ratio_u):>19}")
    print(f"{'per-step overhead vs merged':36}{'0':>10}{'0':>17}"
          f"{(fmt(100 * over_u, '.1f') + '% / ' + fmt(100 * over_um, '.1f') + '%') if over_u is not None else '-':>19}"
          "   (unfused: {A} / mix)")
    err = max(r["merged_rel_err"].values()) if r["merged_rel_err"] else None
    dtype = o.get("dtype", "f32")
    limit = MERGE_ACCEPT_HALF.get(dtype, MERGE_ACCEPT)
    rule = "||ours - ref|| / ||ref - base||" if dtype not in MERGE_ACCEPT_HALF else "||ours - ref|| / ||ref||"
    ok_merge = err is not None and err <= limit
    print(f"restore exact: sdserve {str(o['restore_exact']).lower()} (SHA-256 of all {o['target_count']} weights); "
          f"diffusers unfuse_lora {str(f['restore_exact']).lower()} ({f['restore_changed_elements']} of "
          f"{f['touched_elements']} elements differ, max |diff| {f['restore_max_abs_diff']:.2e})")
    print(f"merged weights vs diffusers fused, {rule}: max {fmt(err, '.2e')} over "
          f"{len(r['merged_rel_err'])} module/set pairs ({'ok' if ok_merge else 'FAIL'}, limit {limit:g})")
    print(f"sdserve: digest {o['digest_s']:.1f} s, peak RSS {o['peak_rss_mb']:.0f} MiB; diffusers: inject "
          f"A {f['inject_a_s']:.2f} s / B {f['inject_b_s']:.2f} s, peak RSS {f['peak_rss_mb']:.0f} MiB")
    return {
        "rank": r["rank"], "alpha": o.get("alpha"), "locon": o.get("locon"), "modules": mods,
        "patched": o["patched_count"], "backup_bytes": o["backup_bytes"], "lora_file_bytes": o["lora_file_bytes"],
        "factor_cache_bytes": o.get("factor_cache_bytes"),
        "ours": {k: o.get(k) for k in ("open_median_s", "first_apply_s", "apply_median_s", "switch_ab_median_s",
                                       "switch_mix_median_s", "restore_median_s", "noop_median_s", "step_min_s",
                                       "switch_ab_min_s", "switch_ab_s", "switch_mix_s", "apply_s", "step_s",
                                       "digest_s", "peak_rss_mb", "restore_exact", "profile")},
        "ref": {k: f.get(k) for k in ("parse_median_s", "inject_a_s", "fused_apply_median_s", "fused_ab_median_s",
                                      "fused_mix_median_s", "fused_restore_median_s", "unfused_ab_median_s",
                                      "unfused_mix_median_s", "unfused_off_median_s", "fused_ab_s", "fused_mix_s",
                                      "step_fused_s", "step_unfused_s", "step_unfused_mix_s", "step_fused_min_s",
                                      "step_unfused_min_s", "step_unfused_mix_min_s", "restore_exact",
                                      "restore_max_abs_diff", "restore_changed_elements", "peak_rss_mb")},
        "switch_over_step": ratio_o, "ref_fused_switch_over_step": ratio_f,
        "ref_unfused_step_overhead": over_u, "ref_unfused_mix_step_overhead": over_um,
        "merged_rel_err": r["merged_rel_err"], "merged_rel_err_max": err,
        "ok": bool(o["restore_exact"]) and o["exit"] == 0 and ok_merge,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="32", help="LoRA ranks, comma-separated (alpha = rank / 2)")
    ap.add_argument("--locon", action="store_true", help="also the resnets' 3x3 convs (LoCon)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: nproc)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each switch (median)")
    ap.add_argument("--fuse-repeat", type=int, default=0, help="runs of diffusers' fused cycle (0: --repeat)")
    ap.add_argument("--step-repeat", type=int, default=1, help="UNet CFG steps per side and variant")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for both sides")
    ap.add_argument("--dtype", default="f32", choices=("f32", "f16", "bf16"), help="weights' dtype, both sides")
    ap.add_argument("--bin", default=None, help="sdserve_lora_bench (default: build/release, build/cuda on a GPU)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sdserve/bench/sd15-hashinit"))
    ap.add_argument("--workdir", default=None, help="LoRA files and merged weights (default: a temp dir, removed)")
    ap.add_argument("--json-out", default=None, help="also write the summary JSON here")
    a = ap.parse_args()
    ranks = [int(x) for x in a.ranks.split(",") if x.strip()]
    if not ranks or min(ranks) < 1:
        sys.exit("run_lora_bench: --ranks must list positive integers")
    if a.bin is None:
        a.bin = os.path.join(REPO, "build", "release" if a.device == "cpu" else "cuda", "sdserve_lora_bench")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"run_lora_bench: {a.bin} not found; build it: cmake --build build/release --target "
                 "sdserve_lora_bench (or pass --bin)")

    start = time.perf_counter()
    run_bench.ensure_model(a.cache)
    work = a.workdir or tempfile.mkdtemp(prefix="sdserve-lora-bench-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    load_before = os.getloadavg()
    try:
        results = [run_rank(a, r, work, env) for r in ranks]
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    ref = results[0]["ref"]
    print(f"LoRA switching: sdserve vs diffusers {ref.get('diffusers')} + peft {ref.get('peft')} "
          f"(torch {ref.get('torch')}), SD1.5-architecture UNet, {a.dtype}, {a.device}, {a.threads} threads")
    print(f"cpu: {run_bench.cpu_model()} [{run_bench.cpu_flags()}], nproc {os.cpu_count()}, "
          f"load avg before {load_before[0]:.2f} after {load_after[0]:.2f}")
    rows = [print_rank(r) for r in results]
    summary = {
        "results": rows, "ok": all(r["ok"] for r in rows), "device": a.device, "dtype": a.dtype,
        "threads": a.threads, "repeat": a.repeat, "step_repeat": a.step_repeat, "locon": a.locon,
        "cpu": run_bench.cpu_model(), "cpu_flags": run_bench.cpu_flags(), "nproc": os.cpu_count(),
        "loadavg": [load_before[0], load_after[0]], "torch": ref.get("torch"), "diffusers": ref.get("diffusers"),
        "peft": ref.get("peft"), "wall_s": time.perf_counter() - start,
    }
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    if "-h" not in sys.argv[1:] and "--help" not in sys.argv[1:]:
        ensure_venv()
    sys.exit(main())
