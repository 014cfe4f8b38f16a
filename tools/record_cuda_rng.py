#!/usr/bin/env python3
"""Record torch's real CUDA randn on a GPU machine, in the golden format of make_rng_goldens.py.

    python tools/record_cuda_rng.py            # writes tests/fixtures/golden/rng/cuda_torch_<gpu>.json

Runs the same cases as make_rng_goldens.py with torch.Generator("cuda").manual_seed(seed) and
torch.randn(shape, generator=g, device="cuda"). Every call is stored in full up to 128 values;
bigger ones as hashes plus the first/last 8 values (test_rng.cc compares those with a tolerance:
curand's Box-Muller uses __sincosf on the device, which A1111's CPU emulation cannot match
bit for bit). The file also records the launch limit torch used (SM count, threads per SM), so
the test replays big tensors with make_cuda_generator(seed, max_resident_threads).

It also prints how far the GPU is from the committed A1111-based golden (cuda_a1111.json),
value by value where values are stored: please put that number into docs/RNG.md.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_rng_goldens as mg  # noqa: E402


def main():
    import torch

    here = os.path.dirname(os.path.abspath(__file__))
    gold = os.path.join(here, "..", "tests", "fixtures", "golden", "rng")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")

    props = torch.cuda.get_device_properties(0)
    block = 256  # ATen's block_size_bound for distribution kernels
    max_threads = props.multi_processor_count * (props.max_threads_per_multi_processor // block) * block
    gpu = re.sub(r"[^a-z0-9]+", "_", props.name.lower()).strip("_")
    out = args.out or os.path.join(gold, f"cuda_torch_{gpu}.json")

    def make_gen(seed):
        return torch.Generator("cuda").manual_seed(seed)

    def randn(g, shape):
        return torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).cpu().numpy()

    doc = {
        "generator": "cuda",
        "reference": f"torch {torch.__version__} CUDA {torch.version.cuda} on {props.name}",
        "gpu": props.name,
        "multi_processor_count": props.multi_processor_count,
        "max_threads_per_multi_processor": props.max_threads_per_multi_processor,
        "max_resident_threads": max_threads,
        "cases": mg.run_cases(make_gen, randn),
    }
    mg.write(out, doc)

    a1111_path = os.path.join(gold, "cuda_a1111.json")
    if os.path.exists(a1111_path):
        with open(a1111_path) as f:
            ref = json.load(f)
        worst, n = 0.0, 0
        for ca, cb in zip(doc["cases"], ref["cases"]):
            for ra, rb in zip(ca["calls"], cb["calls"]):
                for key in ("bits", "head_bits", "tail_bits"):
                    if key in ra and key in rb:
                        a = np.array([int(h, 16) for h in ra[key]], np.uint32).view(np.float32)
                        b = np.array([int(h, 16) for h in rb[key]], np.uint32).view(np.float32)
                        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
                        n += a.size
        print(f"GPU vs A1111 emulation: max |diff| {worst:.3g} over {n} stored values")
        print(f"(the emulation assumes an unbounded grid; this GPU's limit is {max_threads} threads)")


if __name__ == "__main__":
    main()
