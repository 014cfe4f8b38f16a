#!/usr/bin/env python3
"""Golden noise for tests/unit/test_rng.cc (see docs/RNG.md).

Writes tests/fixtures/golden/rng/{cpu_avx2,cpu_scalar,cuda_a1111}.json:
  * cpu_avx2 / cpu_scalar: torch.Generator("cpu").manual_seed(seed) + torch.randn(shape,
    generator=g), with torch's CPU kernels pinned by ATEN_CPU_CAPABILITY=avx2 / =default
    (each in its own subprocess: torch reads the variable once at start-up).
  * cuda_a1111: AUTOMATIC1111's modules/rng_philox.py (torch CUDA randn imitated on the CPU in
    numpy). It is not vendored: fetch it yourself and pass its path, e.g.
      curl -o /tmp/rng_philox.py https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui/master/modules/rng_philox.py
      python tools/make_rng_goldens.py --a1111 /tmp/rng_philox.py

Format (shared with tools/record_cuda_rng.py): {"generator", "reference", ..., "cases": [{"seed",
"calls": [{"shape", "numel", then either "bits" (float32 bit patterns as 8 hex digits, for
numel <= FULL_LIMIT) or "fnv1a64"/"sha256" of the little-endian float32 bytes plus
"head_bits"/"tail_bits" (first/last 8 values)}]}]}. A case's calls run in order on one generator.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

FULL_LIMIT = 128
U64 = 2**64

SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 5, 2**63 + 12345, 2**64 - 1]
SMALL_SHAPES = [[1], [7], [15], [16], [17], [100], [2 * 4 * 8 * 8 + 3]]
BIG_SHAPES = [[1, 4, 64, 64], [1, 4, 96, 80], [1, 4, 128, 128]]
BIG_SEEDS = [0, 2**32 + 5]
SEQUENCES = [
    (1234, [[1, 4, 8, 8], [1, 4, 8, 8], [3]]),
    # Below 16 elements torch's CPU path caches the second value of each Box-Muller pair in the
    # generator; the cache survives calls of >= 16 elements.
    (1234, [[3], [3], [5], [20], [1], [2], [1, 4, 8, 8], [7]]),
    (2**32 + 5, [[3], [16], [1], [17], [1]]),
    (987654321, [[2, 4, 8, 8], [15], [33], [1, 4, 64, 64], [5]]),
]


def cases():
    out = []
    for s in SEEDS:
        for shape in SMALL_SHAPES:
            out.append((s, [shape]))
    for s in BIG_SEEDS:
        for shape in BIG_SHAPES:
            out.append((s, [shape]))
    out.extend(SEQUENCES)
    return out


def fnv1a64(b: bytes) -> str:
    # Vectorised FNV-1a is awkward; a plain loop over a few hundred KiB is fast enough.
    h = 0xCBF29CE484222325
    for byte in b:
        h = ((h ^ byte) * 0x100000001B3) % U64
    return f"{h:016x}"


def hexbits(a: np.ndarray):
    return [f"{int(v):08x}" for v in np.ascontiguousarray(a, dtype="<f4").view("<u4")]


def encode_call(shape, values: np.ndarray, full_limit=FULL_LIMIT):
    v = np.ascontiguousarray(values.reshape(-1), dtype="<f4")
    assert list(values.shape) == list(shape), (values.shape, shape)
    rec = {"shape": list(shape), "numel": int(v.size)}
    if v.size <= full_limit:
        rec["bits"] = hexbits(v)
    else:
        raw = v.tobytes()
        rec["fnv1a64"] = fnv1a64(raw)
        rec["sha256"] = hashlib.sha256(raw).hexdigest()
        rec["head_bits"] = hexbits(v[:8])
        rec["tail_bits"] = hexbits(v[-8:])
    return rec


def run_cases(make_gen, randn, full_limit=FULL_LIMIT):
    out = []
    for seed, shapes in cases():
        g = make_gen(seed)
        calls = [encode_call(shape, randn(g, shape), full_limit) for shape in shapes]
        out.append({"seed": seed, "calls": calls})
    return out


def write(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ----------------------------------------------------------------------------- torch CPU
def cpu_child(capability: str, path: str):
    import torch

    got = torch.backends.cpu.get_cpu_capability()
    want = {"avx2": "AVX2", "default": "DEFAULT"}[capability]
    if got != want:
        sys.exit(f"ATEN_CPU_CAPABILITY={capability} gave {got}; this host cannot produce that golden")

    def make_gen(seed):
        return torch.Generator("cpu").manual_seed(seed)

    def randn(g, shape):
        return torch.randn(shape, generator=g, dtype=torch.float32).numpy()

    kernel = {"avx2": "Avx2", "default": "Scalar"}[capability]
    write(
        path,
        {
            "generator": "cpu",
            "cpu_kernel": kernel,
            "reference": f"torch {torch.__version__} CPU generator, ATEN_CPU_CAPABILITY={capability} ({got})",
            "cases": run_cases(make_gen, randn),
        },
    )


# ------------------------------------------------------------------------ A1111 rng_philox
def load_a1111(path):
    spec = importlib.util.spec_from_file_location("a1111_rng_philox", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The output its own docstring promises for Generator(seed=0).randn((3, 4)). The digits are not
# what the numpy code prints (they differ by up to 2.7e-7) and look like a real GPU's output
# (curand uses __sincosf on the device); test_rng.cc checks them with a tolerance.
A1111_DOCSTRING_SEED0_3x4 = [
    -0.92466259, -0.42534415, -2.6438457, 0.14518388,
    -0.12086647, -0.57972564, -0.62285122, -0.32838709,
    -1.07454231, -0.36314407, -1.67105067, 2.26550497,
]  # fmt: skip


def cuda_golden(a1111_path, path):
    mod = load_a1111(a1111_path)
    first = mod.Generator(0).randn((3, 4)).astype(np.float64).reshape(-1)
    err = np.abs(first - np.array(A1111_DOCSTRING_SEED0_3x4)).max()
    if err > 5e-7:
        sys.exit(f"{a1111_path} does not reproduce its own docstring (max err {err})")
    with open(a1111_path, "rb") as f:
        src_sha = hashlib.sha256(f.read()).hexdigest()

    def randn(g, shape):
        return np.asarray(g.randn(tuple(shape)), dtype=np.float32).reshape(shape)

    write(
        path,
        {
            "generator": "cuda",
            "max_resident_threads": 0,
            "reference": "AUTOMATIC1111 stable-diffusion-webui modules/rng_philox.py (numpy "
            + np.__version__ + ", sha256 of the file used: " + src_sha + ")",
            "cases": run_cases(mod.Generator, randn),
        },
    )


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "tests", "fixtures", "golden", "rng")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--a1111", help="path to A1111's modules/rng_philox.py (skip cuda golden if absent)")
    ap.add_argument("--cpu-child", choices=["avx2", "default"], help=argparse.SUPPRESS)
    ap.add_argument("--child-path", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.cpu_child:
        cpu_child(args.cpu_child, args.child_path)
        return
    os.makedirs(args.out, exist_ok=True)
    for cap, name in [("avx2", "cpu_avx2.json"), ("default", "cpu_scalar.json")]:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        subprocess.run(
            [sys.executable, __file__, "--cpu-child", cap, "--child-path", os.path.join(args.out, name)],
            env=env,
            check=True,
        )
    if args.a1111:
        cuda_golden(args.a1111, os.path.join(args.out, "cuda_a1111.json"))
    else:
        print("no --a1111 given: cuda_a1111.json left as it is")


if __name__ == "__main__":
    main()
