#!/usr/bin/env python3
"""Golden sampler trajectories from diffusers' schedulers (float32, CPU).

Writes tests/fixtures/golden/samplers/samplers.safetensors, read by tests/unit/test_samplers.cc.

Every case drives one diffusers scheduler the way StableDiffusionPipeline does:

    scheduler = Cls.from_config({**base_config, **sampler_kwargs, **schedule_kwargs})
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn([1, 4, 8, 8], generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        xs = scheduler.scale_model_input(x, t)
        out = fake_model(xs, t)
        x = scheduler.step(out, t, x, generator=g [, eta=...]).prev_sample

with a deterministic fake UNet that C++ can evaluate exactly enough:

    fake_model(xs, t) = tanh(0.5 * xs) * 0.8 + 0.1 * cos(float32(t) / 100)     (all float32)

Every draw from `g` has shape [1, 4, 8, 8] and comes from the same seed, so all cases read
prefixes of ONE recorded stream ("noise_stream": draw 0 is the initial latent, the scheduler's
draws follow).  DPM++ SDE ("DPMSolverSDEScheduler") draws its noise from a torchsde Brownian tree
instead (no draws from `g`), seeded with noise_sampler_seed=SEED; sdserve rebuilds the same tree
(src/pipeline/brownian.h) from Sampler::set_noise_seeds.

Tensors (f32):  noise_stream [K,1,4,8,8]; finals [C,1,4,8,8] (case order); timesteps (all cases'
                float32(scheduler.timesteps), concatenated); alphas_cumprod [1000] (SD1.5 betas:
                checks the C++ beta/cumprod code).
Metadata:       "configs": {name: scheduler_config.json dict}, parsed by ScheduleConfig::from_json;
                "cases": JSON list of {sampler, schedule, steps, eta, config (a name in configs),
                prediction_type, draws (generator draws after the initial latent), init_noise_sigma,
                num_model_calls, ts_offset}.

Euler a + Karras/Exponential: diffusers' EulerAncestralDiscreteScheduler has no such option; A1111
runs k-diffusion's sample_euler_ancestral on the Karras/exponential sigmas.  The golden does the
same: EulerAncestralDiscreteScheduler with sigmas/timesteps taken from EulerDiscreteScheduler built
with use_karras_sigmas / use_exponential_sigmas.

Usage: python tools/make_sampler_goldens.py   (~20 s; needs torchsde for DPM++ SDE)
"""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import st_io  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "golden" / "samplers" / "samplers.safetensors"
SEED = 1234
SHAPE = (1, 4, 8, 8)

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (no timestep_spacing key: each
# scheduler then uses its own default, as diffusers' from_config does).
SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# SDXL-style config: explicit "leading" spacing (exercises the other init_noise_sigma formula).
SDXL = {**SD15, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading", "interpolation_type": "linear"}

CONFIGS = {"sd15": SD15, "sdxl": SDXL}

SAMPLERS = {
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "DPM2": (KDPM2DiscreteScheduler, {}),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ SDE": (DPMSolverSDEScheduler, {"noise_sampler_seed": SEED}),
    "LMS": (LMSDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "PLMS": (PNDMScheduler, {"skip_prk_steps": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),
}
SCHEDULES = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
# What sdserve accepts (the rest is refused with InvalidArgument; see docs/SAMPLERS.md).
ONLY = {"DDIM": ("Automatic", "SGM Uniform"), "PLMS": ("Automatic", "SGM Uniform"), "LCM": ("Automatic",)}


def fake_model(xs: torch.Tensor, t) -> torch.Tensor:
    tf = torch.as_tensor(t).to(torch.float32)
    return torch.tanh(0.5 * xs) * 0.8 + 0.1 * torch.cos(tf / 100)


class Recorder:
    """Counts torch.randn draws made through the scheduler modules' randn_tensor."""

    def __init__(self):
        self.draws = 0

    def patch(self):
        import diffusers.utils.torch_utils as tu

        orig = tu.randn_tensor

        def rec(shape, *a, **kw):
            assert tuple(shape) == SHAPE, shape
            self.draws += 1
            return orig(shape, *a, **kw)

        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("diffusers.schedulers.") and hasattr(mod, "randn_tensor"):
                mod.randn_tensor = rec


def make_scheduler(sampler: str, schedule: str, config: dict):
    cls, kw = SAMPLERS[sampler]
    cfg = {**config, **kw, **SCHEDULES[schedule]}
    if sampler == "Euler a" and schedule in ("Karras", "Exponential"):
        ref = EulerDiscreteScheduler.from_config(cfg)
        sched = EulerAncestralDiscreteScheduler.from_config(cfg)

        def set_timesteps(n, device=None, _orig=sched.set_timesteps):
            _orig(n)
            ref.set_timesteps(n)
            sched.sigmas = ref.sigmas.clone()
            sched.timesteps = ref.timesteps.clone()

        sched.set_timesteps = set_timesteps
        return sched, cfg
    return cls.from_config(cfg), cfg


def run_case(sampler, schedule, prediction, steps, eta, base_name):
    config = {**CONFIGS[base_name], "prediction_type": prediction}
    sched, _ = make_scheduler(sampler, schedule, config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(SEED)
    rec = Recorder()
    rec.patch()
    x = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    init_sigma = sched.init_noise_sigma
    x = x * init_sigma
    step_params = inspect.signature(sched.step).parameters
    for t in sched.timesteps:
        xs = sched.scale_model_input(x, t)
        out = fake_model(xs, t)
        kw = {}
        if "generator" in step_params:
            kw["generator"] = g
        if sampler == "DDIM":
            kw["eta"] = eta
        x = sched.step(out, t, x, **kw).prev_sample
    case = {
        "sampler": sampler,
        "schedule": schedule,
        "steps": steps,
        "eta": eta,
        "config": base_name,
        "prediction_type": prediction,
        "draws": rec.draws,
        "init_noise_sigma": float(init_sigma),
        "num_model_calls": len(sched.timesteps),
    }
    tensors = {"final": x.clone(), "timesteps": sched.timesteps.to(torch.float32).clone()}
    return case, tensors


def main():
    torch.set_num_threads(1)
    runs = []
    for prediction in ("epsilon", "v_prediction"):
        for sampler in SAMPLERS:
            for schedule in SCHEDULES:
                if schedule not in ONLY.get(sampler, SCHEDULES):
                    continue
                for steps in (4, 7):
                    # (DPM++ SDE used to store its noise per case; the case list is kept.)
                    if sampler == "DPM++ SDE" and steps == 7 and prediction != "epsilon":
                        continue
                    runs.append((sampler, schedule, prediction, steps, 0.0, "sd15"))
    for sampler in SAMPLERS:  # explicit "leading" spacing
        runs.append((sampler, "Automatic", "epsilon", 7, 0.0, "sdxl"))
    runs += [
        ("DDIM", "Automatic", "epsilon", 7, 0.7, "sd15"),
        ("DDIM", "SGM Uniform", "v_prediction", 4, 1.0, "sd15"),
    ]
    for sampler, schedule in [
        ("Euler", "Automatic"),
        ("Euler a", "Karras"),
        ("Heun", "Karras"),
        ("DPM2 a", "Karras"),
        ("DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE", "Exponential"),
        ("LMS", "Automatic"),
        ("DDIM", "Automatic"),
        ("PLMS", "Automatic"),
        ("UniPC", "Automatic"),
        ("LCM", "Automatic"),
    ]:
        runs.append((sampler, schedule, "epsilon", 20, 0.0, "sd15"))

    cases, finals, timesteps = [], [], []
    max_draws = 0
    n_ts = 0
    for i, (sampler, schedule, prediction, steps, eta, base) in enumerate(runs):
        case, ts = run_case(sampler, schedule, prediction, steps, eta, base)
        case["ts_offset"] = n_ts
        n_ts += len(ts["timesteps"])
        timesteps.append(ts["timesteps"])
        finals.append(ts["final"])
        cases.append(case)
        max_draws = max(max_draws, case["draws"])

    g = torch.Generator().manual_seed(SEED)
    tensors = {
        "noise_stream": torch.stack([torch.randn(SHAPE, generator=g) for _ in range(max_draws + 1)]),
        "finals": torch.stack(finals),
        "timesteps": torch.cat(timesteps),
        "alphas_cumprod": EulerDiscreteScheduler.from_config(SD15).alphas_cumprod.clone(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cases": json.dumps(cases, sort_keys=True),
        "configs": json.dumps(CONFIGS, sort_keys=True),
        "seed": str(SEED),
        "versions": json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__}),
    }
    st_io.save_file_sorted(tensors, OUT, metadata=meta)
    print(f"{len(cases)} cases, noise stream {max_draws + 1} draws, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main()
