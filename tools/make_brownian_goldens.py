#!/usr/bin/env python3
"""Golden Brownian-tree noise for tests/unit/test_brownian.cc (src/pipeline/brownian.{h,cc}).

Writes tests/fixtures/golden/brownian/brownian.safetensors:

  * "seed_sequences" (metadata, JSON list): numpy.random.SeedSequence(entropy,
    spawn_key=spawn_key, pool_size=pool_size) -> {"state": generate_state(n) (uint32)}.
  * "tree_cases" (metadata, JSON list): torchsde.BrownianInterval(t0, t1, size=shape,
    entropy, tol=1e-6, pool_size=24, halfway_tree=True) - the tree diffusers'
    BatchedBrownianTree builds - queried with tree(ta, tb) in order; the results, float32, are
    concatenated in "tree_out" (a case's queries start at "offset").
  * "sampler_cases" (metadata, JSON list): diffusers' BrownianTreeNoiseSampler(x, sigma_min,
    sigma_max, seed) as DPMSolverSDEScheduler creates it, with the (sigma, sigma_next) calls the
    scheduler makes in a run ("calls": float32 values as floats) and the returned noise in
    "sampler_out". Recorded by running DPMSolverSDEScheduler (SD1.5 config) for a few steps with
    a fake model and wrapping its noise sampler.

All on the CPU (torch CPU capability AVX2, as the other goldens).
Usage: python tools/make_brownian_goldens.py
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchsde

sys.path.insert(0, str(Path(__file__).resolve().parent))
import st_io  # noqa: E402

from diffusers import DPMSolverSDEScheduler  # noqa: E402
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "golden" / "brownian" / "brownian.safetensors"

SD15 = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}


def seed_sequences():
    out = []
    entropies = [0, 1, 1234, 2**32 - 1, 2**32 + 5, 2**63 - 1, 987654321987]
    keys = [(), (0, 0), (1, 1), (5, 3), (123456, 20), (2**33 + 1, 40)]
    for e in entropies:
        for k in keys:
            for pool in (4, 24) if k else (4, 8, 24):
                n = 4 if k else 3
                ss = np.random.SeedSequence(entropy=e, spawn_key=k, pool_size=pool)
                out.append({"entropy": e, "spawn_key": list(k), "pool_size": pool, "n": n,
                            "state": [int(v) for v in ss.generate_state(n)]})
    ss = np.random.SeedSequence(entropy=42, spawn_key=(7, 2), pool_size=24)
    out.append({"entropy": 42, "spawn_key": [7, 2], "pool_size": 24, "n": 60,
                "state": [int(v) for v in ss.generate_state(60)]})
    return out


def tree_cases():
    rs = np.random.RandomState(0)
    cases = []
    specs = [
        # (t0, t1, shape, entropy, queries)
        (0.0, 1.0, [5], 0, [(0.0, 0.5), (0.25, 0.75), (0.1, 0.9), (0.3, 0.30001), (0.0, 1.0)]),
        (0.029167, 14.614642, [4, 8, 8], 1234, None),
        (0.1, 80.0, [3, 5, 7], 2**32 + 5, None),
        (float(np.float32(0.0291675)), float(np.float32(14.614647)), [17], 42, None),
        (0.5, 3.0, [2, 3], 7, [(0.4, 2.0), (2.9, 3.5), (0.5, 3.0), (1.0, 1.0)]),  # clamped, empty
    ]
    for t0, t1, shape, entropy, queries in specs:
        if queries is None:
            queries = []
            for _ in range(8):
                a, b = sorted(rs.uniform(t0, t1, size=2))
                queries.append((float(np.float32(a)), float(np.float32(b))))
        cases.append((t0, t1, shape, entropy, queries))
    records, outs = [], []
    off = 0
    for t0, t1, shape, entropy, queries in cases:
        tree = torchsde.BrownianInterval(t0=t0, t1=t1, size=tuple(shape), dtype=torch.float32, device="cpu",
                                         entropy=entropy, tol=1e-6, pool_size=24, halfway_tree=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = [tree(ta, tb).reshape(-1) for ta, tb in queries]
        records.append({"t0": t0, "t1": t1, "shape": shape, "entropy": entropy, "queries": queries, "offset": off})
        off += sum(r.numel() for r in res)
        outs += res
    return records, torch.cat(outs)


class Wrap:
    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self.outs = []

    def __call__(self, sigma, sigma_next):
        out = self.inner(sigma, sigma_next)
        self.calls.append([float(sigma), float(sigma_next)])
        self.outs.append(out.reshape(-1).clone())
        return out


def sampler_cases():
    records, outs = [], []
    off = 0
    for karras, steps, seed, shape, pred in [
        (False, 5, 1234, [1, 4, 8, 8], "epsilon"),
        (True, 5, 1234, [1, 4, 8, 8], "epsilon"),
        (True, 4, 2**32 + 17, [1, 3, 5, 3], "v_prediction"),
    ]:
        sched = DPMSolverSDEScheduler.from_config({**SD15, "use_karras_sigmas": karras, "prediction_type": pred,
                                                   "noise_sampler_seed": seed})
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g) * sched.init_noise_sigma
        smin, smax = sched.sigmas[sched.sigmas > 0].min(), sched.sigmas.max()
        wrap = Wrap(BrownianTreeNoiseSampler(x, smin.item(), smax.item(), seed))
        sched.noise_sampler = wrap
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in sched.timesteps:
                xs = sched.scale_model_input(x, t)
                out = torch.tanh(0.5 * xs) * 0.8
                x = sched.step(out, t, x).prev_sample
        records.append({"karras": karras, "steps": steps, "seed": seed, "shape": shape,
                        "sigma_min": smin.item(), "sigma_max": smax.item(), "calls": wrap.calls, "offset": off})
        off += sum(o.numel() for o in wrap.outs)
        outs += wrap.outs
    return records, torch.cat(outs)


def main():
    torch.set_num_threads(1)
    assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
    tree_meta, tree_out = tree_cases()
    sampler_meta, sampler_out = sampler_cases()
    meta = {
        "seed_sequences": json.dumps(seed_sequences(), separators=(",", ":")),
        "tree_cases": json.dumps(tree_meta, separators=(",", ":")),
        "sampler_cases": json.dumps(sampler_meta, separators=(",", ":")),
        "versions": json.dumps({"torch": torch.__version__, "numpy": np.__version__,
                                "torchsde": torchsde.__version__}),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    st_io.save_file_sorted({"tree_out": tree_out, "sampler_out": sampler_out}, OUT, metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(tree_meta)} tree cases, "
          f"{len(sampler_meta)} sampler cases")


if __name__ == "__main__":
    main()
