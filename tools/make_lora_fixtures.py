#!/usr/bin/env python3
"""LoRA / LoCon / LoHa / LoKr fixtures and golden images for the tiny models.

Writes network files to <out>/<model>/ (default out: tests/fixtures/lora/) and golden images to
<goldens>/<model>.safetensors (default: tests/fixtures/golden/lora/).  sd1-tiny gets every file below;
sd2-tiny only a_kohya.safetensors and the golden cases "none" and "a" (fixture size budget: the SD2
text encoder and its Linear proj_in/proj_out are what it adds; see KEEP; --all-files writes all):

  a_peft.safetensors   adapter "a" as diffusers writes it (pipe.save_lora_weights: PEFT keys
                       "unet.<module>.lora_A.weight" [r, in(, kh, kw)] / ".lora_B.weight" [out, r(, 1, 1)],
                       float32); text-encoder keys under the canonical "text_encoder.text_model.encoder.*"
                       names (as in files made with transformers 4); the LoraConfig in the header:
                       __metadata__["lora_adapter_metadata"] = JSON {"unet.r": 4, "unet.lora_alpha": 3,
                       "unet.rank_pattern": {"conv1": 2, ...}, "unet.alpha_pattern": {...}, "text_encoder.r": ...}
  a_kohya.safetensors  the same adapter through diffusers' convert_state_dict_to_kohya: keys
                       "lora_unet_<module, . -> _>.lora_down.weight" / ".lora_up.weight" / ".alpha" and
                       "lora_te_text_model_encoder_layers_N_<...>", float16, alpha a float16 scalar
  b_peft.safetensors   adapter "b", no header metadata (so alpha = rank), text-encoder keys as
                       transformers >= 5.6 names them ("text_encoder.encoder.*", no "text_model.")
  b_kohya.safetensors  adapter "b" in kohya form, float16, alpha as the converter writes it (int64 = rank)
  loha.safetensors     LyCORIS LoHa, float16: "<kohya module>.hada_w1_a" [out, r], ".hada_w1_b"
                       [r, in*kh*kw], ".hada_w2_a", ".hada_w2_b", ".alpha"
  lokr.safetensors     LyCORIS LoKr, float16: "<kohya module>.lokr_w1" [a, b] or ".lokr_w1_a" [a, r] +
                       ".lokr_w1_b" [r, b]; ".lokr_w2" [c, d(, kh, kw)] or ".lokr_w2_a" [c, r] +
                       ".lokr_w2_b" [r, d*kh*kw]; ".alpha"  (out = a*c, in = b*d)
  <model>.safetensors  (in <goldens>) uint8 [H, W, 3] images, one per case; metadata: prompt, negative_prompt, steps,
                       seed, cfg, width, height, sampler, schedule, versions, "cases" (JSON: key,
                       networks [{name, weight, files}], how the golden was made, the checks below)
                       and "networks" (JSON per file: format, rank, alpha, patterns, targets, seed)

Networks (every factor non-zero, seeded per tensor from (seed, key) like make_tiny_models.py and
rounded through float16, so the float16 and float32 files hold the same values):

  a: rank 4, lora_alpha 3 (scale 0.75); resnet conv1/conv2 (3x3, "LoCon") rank 2, alpha 1 (scale
     0.5; PEFT rank_pattern/alpha_pattern = kohya's conv_dim/conv_alpha).  UNet: attention
     to_q/to_k/to_v/to_out.0, proj_in/proj_out (1x1 convs in sd1-tiny, Linear in sd2-tiny), conv1/conv2.
     Text encoder: q/k/v/out_proj, fc1, fc2.
  b: rank 2, lora_alpha 2 (scale 1).  UNet: attention, ff.net.0.proj, ff.net.2, conv_shortcut (1x1),
     time_emb_proj, downsamplers.0.conv, upsamplers.0.conv (3x3).  Text encoder: q/k/v/out_proj.
  loha: rank 2, alpha 1; a's module kinds, UNet only in mid_block and up_blocks.1.
  lokr: rank 2, alpha 1; as loha plus ff.  3x3 convs keep both Kronecker factors whole (lokr_w1,
     4-D lokr_w2: no rank, so scale 1), ff layers decompose both, the rest keep lokr_w1 whole and
     decompose lokr_w2.  Factor split: LyCORIS' default (largest divisor <= sqrt; 37 = 1 x 37).

Golden cases (prompt, negative prompt, seed, steps, CFG and size of make_txt2img_goldens.py,
sampler "Euler", schedule "Automatic"; diffusers StableDiffusionPipeline on the CPU, float32):

  none       no network (asserted equal to the txt2img golden "Euler|Automatic")
  a          a at 1.0:  pipe.load_lora_weights(file, adapter_name="a"); pipe.set_adapters(["a"], [1.0])
  a0.7+b0.4  two load_lora_weights calls; pipe.set_adapters(["a", "b"], adapter_weights=[0.7, 0.4])
  loha0.8    loha at 0.8 through the reference merge (diffusers loads neither LoHa nor LoKr for SD)
  lokr0.8    lokr at 0.8, likewise

A LoRA case's image is diffusers' unfused output with the *_peft files.  Checked on every run
(printed, and kept in the metadata): the *_kohya files give the same image through
load_lora_weights (<= 1/255; 0 here); pipe.fuse_lora() is within 1/255 of unfused; the reference
merge of either file is within 2/255 of diffusers (<= 1 here).

Reference merge (`merge_networks`; A1111 extensions-builtin/Lora semantics), per module and network
in order, in float32:  W += (multiplier * scale) * delta, with

  LoRA: delta = up.reshape(out, r) @ down.reshape(r, -1), reshaped to W's shape (a 3x3 LoCon down
        is [r, in, 3, 3], its up [out, r, 1, 1]); r = down.shape[0] (per module);
        scale = alpha / r; alpha = the module's ".alpha" (kohya), else the header's
        "<component>.lora_alpha" / "<component>.alpha_pattern" (PEFT), else alpha = r (scale 1)
  LoHa: delta = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) (elementwise), reshaped;
        scale = alpha / hada_w1_b.shape[0]
  LoKr: w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b; w2 = lokr_w2 or lokr_w2_a @ lokr_w2_b;
        delta = kron(w1, w2) (w1 as [a, b, 1, 1] when w2 is 4-D), reshaped to W's shape, i.e.
        delta[i*c + p, j*d + q, ...] = w1[i, j] * w2[p, q, ...]; scale = alpha / r with r =
        lokr_w2_b.shape[0], else lokr_w1_b.shape[0]; neither factor decomposed: scale = 1 whatever
        alpha says (A1111, ComfyUI and diffusers' own LoKr code agree)

Module names: kohya / LyCORIS "lora_unet_" + the diffusers UNet module path with "." -> "_";
"lora_te_" + "text_model.encoder.layers.N.<...>" with "." -> "_" (SD1 and SD2 alike).

Environment: peft (0.21.2 was used) and so accelerate.  transformers 5.24 asks for peft >= 0.22,
which PyPI does not have; setup_environment() lowers that check to the installed version (the
reference merge confirms what diffusers then computes).  With accelerate installed diffusers loads
models with low_cpu_mem_usage=True; the no-network image still equals the committed golden.

Usage:  python tools/make_lora_fixtures.py [--out DIR] [--goldens DIR] [--models sd1-tiny sd2-tiny] [--all-files]
        (~30 s, one thread; byte-identical reruns)
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sampler_goldens as msg  # noqa: E402
import make_txt2img_goldens as t2i  # noqa: E402
import st_io  # noqa: E402
from hashinit import fnv1a64  # noqa: E402

import diffusers  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "tests" / "fixtures" / "models"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "lora"
DEFAULT_GOLDENS = REPO / "tests" / "fixtures" / "golden" / "lora"
TXT2IMG_GOLDENS = REPO / "tests" / "fixtures" / "golden" / "txt2img"

SAMPLER, SCHEDULE = "Euler", "Automatic"
MODELS = ("sd1-tiny", "sd2-tiny")

UNET_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
UNET_FF = ("ff.net.0.proj", "ff.net.2")
UNET_PROJ = ("proj_in", "proj_out")
UNET_CONV = ("conv1", "conv2")
UNET_LOCON_EXTRA = ("conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
TE_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
TE_MLP = ("fc1", "fc2")

# gain: size of a network's change relative to the weight it adds to (before alpha/rank and the
# multiplier); chosen so the images change visibly but stay images.
# rank_pattern / alpha_pattern: per-module rank and alpha (PEFT's names; kohya's conv_dim / conv_alpha).
LORA_ADAPTERS = {
    "a": dict(seed=7101, rank=4, alpha=3, rank_pattern={"conv1": 2, "conv2": 2}, alpha_pattern={"conv1": 1, "conv2": 1},
              gain=0.1, unet=UNET_ATTN + UNET_PROJ + UNET_CONV, te=TE_ATTN + TE_MLP,
              peft_te_names="canonical", peft_metadata=True, kohya_alpha="float16"),
    "b": dict(seed=7202, rank=2, alpha=2, rank_pattern={}, alpha_pattern={},
              gain=0.1, unet=UNET_ATTN + UNET_FF + UNET_LOCON_EXTRA, te=TE_ATTN,
              peft_te_names="flattened", peft_metadata=False, kohya_alpha="converter"),
}
# LyCORIS networks cover fewer UNet blocks (file size); every module kind is still there.
LYCORIS = {
    "loha": dict(seed=7303, rank=2, alpha=1.0, gain=0.1, unet=UNET_ATTN + UNET_PROJ + UNET_CONV,
                 unet_blocks=("mid_block.", "up_blocks.1."), te=TE_ATTN + TE_MLP),
    "lokr": dict(seed=7404, rank=2, alpha=1.0, gain=0.1, unet=UNET_ATTN + UNET_FF + UNET_PROJ + UNET_CONV,
                 unet_blocks=("mid_block.", "up_blocks.1."), te=TE_ATTN + TE_MLP),
}
# (key, [(network, weight)], how the golden image is made)
CASES = [
    ("none", [], "diffusers"),
    ("a", [("a", 1.0)], "diffusers"),
    ("a0.7+b0.4", [("a", 0.7), ("b", 0.4)], "diffusers"),
    ("loha0.8", [("loha", 0.8)], "merge"),
    ("lokr0.8", [("lokr", 0.8)], "merge"),
]
# What is written per model (fixture size budget); every file and case is still made and checked.
# None: everything.  sd2-tiny adds the SD2 text encoder and Linear proj_in/proj_out, which a_kohya covers.
KEEP = {
    "sd1-tiny": None,
    "sd2-tiny": dict(files=("a_kohya",), cases=("none", "a")),
}
# metadata keys of the LoraConfig kept in a_peft's header (the rest is defaults, or paths)
PEFT_METADATA_KEYS = ("alpha_pattern", "init_lora_weights", "lora_alpha", "lora_bias", "peft_type", "r",
                      "rank_pattern", "target_modules", "use_dora", "use_rslora")

MAX_FUSED_DIFF = 1  # /255, fuse_lora vs unfused
MAX_FORMAT_DIFF = 1  # kohya file vs PEFT file through load_lora_weights
MAX_MERGE_DIFF = 2  # reference merge vs diffusers


# ----------------------------------------------------------------------------- environment

def setup_environment() -> None:
    import transformers
    import transformers.integrations.peft as tpeft
    from packaging import version

    have = importlib.metadata.version("peft")
    if version.parse(have) < version.parse(tpeft.MIN_PEFT_VERSION):
        tpeft.MIN_PEFT_VERSION = have  # see the module docstring
    transformers.logging.set_verbosity_error()  # quiets the "MISSING" load report of load_adapter
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")  # 2nd adapter
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# ----------------------------------------------------------------------------- names and values

def canonical_te(name: str) -> str:
    """Flattened transformers >= 5.6 CLIP module/param name -> canonical "text_model.*" name."""
    return name if name.startswith("text_model.") else "text_model." + name


def kohya_name(component: str, module: str) -> str:
    if component == "unet":
        return "lora_unet_" + module.replace(".", "_")
    return "lora_te_" + canonical_te(module).replace(".", "_")


def matches(module: str, targets) -> bool:
    """PEFT's target_modules rule for a list of names: equal, or a suffix after a dot."""
    return any(module == t or module.endswith("." + t) for t in targets)


def target_modules(pipe, spec: dict) -> list[tuple[str, str, torch.nn.Module]]:
    """(component, module path, module) for the Linear/Conv2d layers a network spec covers."""
    out = []
    for component, model, targets in (("unet", pipe.unet, spec["unet"]), ("text_encoder", pipe.text_encoder, spec["te"])):
        for name, mod in model.named_modules():
            if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or not matches(name, targets):
                continue
            if component == "unet" and spec.get("unet_blocks") and not name.startswith(spec["unet_blocks"]):
                continue
            out.append((component, name, mod))
    return out


def f16_exact(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def seeded(seed: int, name: str, shape, std: float) -> torch.Tensor:
    """N(0, std^2) from PCG64(SeedSequence([seed, fnv1a64(name)])), rounded through float16."""
    ss = np.random.SeedSequence([seed, fnv1a64(name)])
    n = np.random.Generator(np.random.PCG64(ss)).standard_normal(tuple(int(s) for s in shape))
    out = f16_exact(n * std)
    assert np.all(out != 0), name  # non-zero everywhere (no zero-initialised B / up matrix)
    return torch.from_numpy(out)


def fan_in(shape) -> int:
    return int(np.prod(shape[1:]))


# ----------------------------------------------------------------------------- pipelines and images

def load_pipe(model: str):
    pipe = StableDiffusionPipeline.from_pretrained(str(MODELS_DIR / model), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler, _ = msg.make_scheduler(SAMPLER, SCHEDULE, dict(pipe.scheduler.config))
    return pipe


_PIPE_CACHE: dict = {}


def load_pipe_cache(model: str):
    """An unmodified pipeline (for module lists only; never changed)."""
    if model not in _PIPE_CACHE:
        _PIPE_CACHE[model] = load_pipe(model)
    return _PIPE_CACHE[model]


def image_size(model: str) -> tuple[int, int]:
    return t2i.SIZES.get(model, (t2i.SIZE, t2i.SIZE))


def generate(pipe, model: str) -> np.ndarray:
    width, height = image_size(model)
    out = pipe(t2i.PROMPT, negative_prompt=t2i.NEGATIVE, num_inference_steps=t2i.STEPS, guidance_scale=t2i.CFG,
               height=height, width=width, generator=torch.Generator("cpu").manual_seed(t2i.SEED),
               output_type="np").images
    rgb = (out[0] * 255).round().astype("uint8")  # diffusers' numpy_to_pil
    assert rgb.shape == (height, width, 3), rgb.shape
    return rgb


def max_diff(x: np.ndarray, y: np.ndarray) -> int:
    return int(np.abs(x.astype(np.int32) - y.astype(np.int32)).max())


# ----------------------------------------------------------------------------- LoRA adapters (PEFT)

def build_lora_adapter(model: str, name: str, spec: dict) -> dict:
    """PEFT adapters on a fresh pipeline's UNet and text encoder, filled with seeded non-zero values.

    Returns {"unet": peft state dict, "text_encoder": peft state dict, "unet_config", "te_config"};
    the state dicts come from peft's get_peft_model_state_dict (keys without the adapter name;
    text-encoder keys as transformers names the modules: flattened "encoder.*")."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = load_pipe(model)
    out = {}
    for component, model_, targets in (("unet", pipe.unet, spec["unet"]), ("text_encoder", pipe.text_encoder, spec["te"])):
        cfg = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], target_modules=list(targets),
                         rank_pattern=pattern_for(spec["rank_pattern"], targets),
                         alpha_pattern=pattern_for(spec["alpha_pattern"], targets), init_lora_weights=False)
        inject_adapter_in_model(cfg, model_, adapter_name=name)
        with torch.no_grad():
            for pname, p in model_.named_parameters():
                if f".lora_A.{name}." not in pname and f".lora_B.{name}." not in pname:
                    continue
                key = pname.replace(f".{name}.", ".")  # the state-dict key peft writes
                seed_name = f"{component}.{canonical_te(key) if component == 'text_encoder' else key}"
                if ".lora_A." in pname:  # down: [r, in(, kh, kw)]
                    v = seeded(spec["seed"], seed_name, p.shape, 1.0 / np.sqrt(fan_in(p.shape)))
                else:  # up: [out, r(, 1, 1)]
                    v = seeded(spec["seed"], seed_name, p.shape, spec["gain"] / np.sqrt(p.shape[1]))
                p.copy_(v)
        sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model_, adapter_name=name).items()}
        mods = {k.rsplit(".lora_", 1)[0] for k in sd}
        expected = {m for c, m, _ in target_modules(load_pipe_cache(model), spec) if c == component}
        assert mods == expected, (component, sorted(mods ^ expected)[:5])
        out[component] = sd
        out["unet_config" if component == "unet" else "te_config"] = cfg
    return out


def pattern_for(pattern: dict, targets) -> dict:
    return {k: v for k, v in pattern.items() if k in targets}


def module_rank_alpha(spec: dict, module: str) -> tuple[int, float]:
    r, alpha = spec["rank"], spec["alpha"]
    for pat, v in spec["rank_pattern"].items():
        if matches(module, (pat,)):
            r = v
    for pat, v in spec["alpha_pattern"].items():
        if matches(module, (pat,)):
            alpha = v
    return r, alpha


def peft_metadata(cfg) -> dict:
    d = cfg.to_dict()
    md = {k: d[k] for k in PEFT_METADATA_KEYS}
    md["target_modules"] = sorted(md["target_modules"])
    md["peft_type"] = str(getattr(md["peft_type"], "value", md["peft_type"]))
    return md


def write_peft_file(adapter: dict, spec: dict, path: Path) -> dict:
    """Through StableDiffusionPipeline.save_lora_weights (into a temp dir), then rewritten
    byte-deterministically, optionally with canonical text-encoder names. Returns the tensors."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        kw = {}
        if spec["peft_metadata"]:
            kw = dict(unet_lora_adapter_metadata=peft_metadata(adapter["unet_config"]),
                      text_encoder_lora_adapter_metadata=peft_metadata(adapter["te_config"]))
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=adapter["unet"],
                                                  text_encoder_lora_layers=adapter["text_encoder"],
                                                  weight_name="lora.safetensors", **kw)
        with safe_open(str(Path(tmp) / "lora.safetensors"), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    want = {f"unet.{k}" for k in adapter["unet"]} | {f"text_encoder.{k}" for k in adapter["text_encoder"]}
    assert set(tensors) == want, sorted(set(tensors) ^ want)[:5]
    if spec["peft_te_names"] == "canonical":
        tensors = {("text_encoder." + canonical_te(k.removeprefix("text_encoder.")) if k.startswith("text_encoder.") else k): v
                   for k, v in tensors.items()}
    else:
        assert not any(k.startswith("text_encoder.text_model.") for k in tensors)
    assert all(v.dtype == torch.float32 for v in tensors.values())
    st_io.save_file_sorted(tensors, path, metadata)
    return tensors


def write_kohya_file(adapter: dict, spec: dict, path: Path) -> dict:
    """diffusers.utils.convert_state_dict_to_kohya on the PEFT state dict (canonical text-encoder
    names), then: "lora_te1_" -> "lora_te_" (the SD1/SD2 spelling; the converter writes SDXL's),
    float16 weights, and the alpha fix-up (the converter writes alpha = rank, dropping lora_alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya

    alphas = {kohya_name(c, m): module_rank_alpha(spec, m) for c in ("unet", "text_encoder")
              for m in {k.rsplit(".lora_", 1)[0] for k in adapter[c]}}
    peft_sd = {f"unet.{k}": v for k, v in adapter["unet"].items()}
    peft_sd.update({f"text_encoder.{canonical_te(k)}": v for k, v in adapter["text_encoder"].items()})
    kohya = convert_state_dict_to_kohya(peft_sd)
    out = {}
    for k, v in kohya.items():
        if k.startswith("lora_te1_"):
            k = "lora_te_" + k.removeprefix("lora_te1_")
        if k.endswith(".alpha"):
            r, alpha = alphas[k.removesuffix(".alpha")]
            assert v.dtype == torch.int64 and int(v) == r, (k, v)  # the converter's alpha: the rank
            if spec["kohya_alpha"] == "float16":
                v = torch.tensor(float(alpha), dtype=torch.float16)
            else:
                assert alpha == r, "the converter's alpha is the rank"
        else:
            assert torch.equal(v.half().float(), v), k
            v = v.half()
        out[k] = v
    st_io.save_file_sorted(out, path, {"format": "pt"})
    return out


# ----------------------------------------------------------------------------- LyCORIS (LoHa, LoKr)

def factorization(dim: int) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dim, m the largest divisor <= sqrt(dim) (LyCORIS' default split)."""
    m = max(d for d in range(1, int(dim ** 0.5) + 1) if dim % d == 0)
    return m, dim // m


def make_loha(pipe, spec: dict) -> dict:
    r, g, seed = spec["rank"], spec["gain"], spec["seed"]
    out = {}
    for component, module, mod in target_modules(pipe, spec):
        w = mod.weight
        n_out, n_in = w.shape[0], fan_in(w.shape)
        p = kohya_name(component, module)
        # (w1a @ w1b) and (w2a @ w2b) have elements ~ sqrt(g) * n_in^-1/4; their product ~ g / sqrt(n_in)
        for i in (1, 2):
            out[f"{p}.hada_w{i}_a"] = seeded(seed, f"{p}.hada_w{i}_a", (n_out, r), np.sqrt(g) / np.sqrt(r))
            out[f"{p}.hada_w{i}_b"] = seeded(seed, f"{p}.hada_w{i}_b", (r, n_in), n_in ** -0.25)
        out[f"{p}.alpha"] = torch.tensor(spec["alpha"], dtype=torch.float16)
    return out


def make_lokr(pipe, spec: dict) -> dict:
    r, g, seed = spec["rank"], spec["gain"], spec["seed"]
    out = {}
    for component, module, mod in target_modules(pipe, spec):
        w = mod.weight
        (oa, oc), (ib, id_) = factorization(w.shape[0]), factorization(w.shape[1])
        ksz = tuple(w.shape[2:])
        n_in = fan_in(w.shape)
        p = kohya_name(component, module)
        full_both = len(ksz) == 2 and ksz != (1, 1)  # 3x3 convs: both factors in full
        decompose_w1 = matches(module, ("ff.net.0.proj", "ff.net.2"))
        # kron(w1, w2) elements = w1 (~1) * w2 (~ g / sqrt(n_in))
        if decompose_w1:
            out[f"{p}.lokr_w1_a"] = seeded(seed, f"{p}.lokr_w1_a", (oa, r), 1.0 / np.sqrt(r))
            out[f"{p}.lokr_w1_b"] = seeded(seed, f"{p}.lokr_w1_b", (r, ib), 1.0)
        else:
            out[f"{p}.lokr_w1"] = seeded(seed, f"{p}.lokr_w1", (oa, ib), 1.0)
        if full_both:
            out[f"{p}.lokr_w2"] = seeded(seed, f"{p}.lokr_w2", (oc, id_, *ksz), g / np.sqrt(n_in))
        else:
            k = int(np.prod(ksz)) if ksz else 1
            out[f"{p}.lokr_w2_a"] = seeded(seed, f"{p}.lokr_w2_a", (oc, r), 1.0 / np.sqrt(r))
            out[f"{p}.lokr_w2_b"] = seeded(seed, f"{p}.lokr_w2_b", (r, id_ * k), g / np.sqrt(n_in))
        out[f"{p}.alpha"] = torch.tensor(spec["alpha"], dtype=torch.float16)
    return out


# ----------------------------------------------------------------------------- reference merge

def read_network(path: Path) -> list[tuple[str | None, str, dict, float | None]]:
    """[(component, module, {suffix: tensor}, alpha or None)] for a kohya / LyCORIS file (component
    None, module "lora_unet_*" / "lora_te_*") or a diffusers/PEFT file (component "unet" or
    "text_encoder", module path; alpha from the header's lora_adapter_metadata: lora_alpha, or
    alpha_pattern for the module; None without metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata() or {})
    groups: dict[str, dict] = {}
    if any(".lora_A." in k for k in sd):  # PEFT
        cfg = json.loads(meta.get("lora_adapter_metadata", "{}"))
        for k, v in sd.items():
            module, suffix = k.rsplit(".lora_", 1)
            groups.setdefault(module, {})["lora_" + suffix] = v
        out = []
        for key, w in groups.items():
            component, module = key.split(".", 1)
            alpha = cfg.get(f"{component}.lora_alpha")
            assert not cfg.get(f"{component}.use_rslora")  # else scale = alpha / sqrt(r)
            for pat, a in (cfg.get(f"{component}.alpha_pattern") or {}).items():
                if matches(module, (pat,)):
                    alpha = a
            out.append((component, module, w, alpha))
        return out
    for k, v in sd.items():
        module, suffix = k.split(".", 1)
        groups.setdefault(module, {})[suffix] = v
    return [(None, key, w, float(w.pop("alpha").item()) if "alpha" in w else None) for key, w in groups.items()]


def layer_delta(w: dict, shape: torch.Size) -> tuple[torch.Tensor, int | None]:
    """(delta reshaped to the layer's weight shape, the rank that divides alpha, or None) for one module."""
    f = {k: v.float() for k, v in w.items()}
    if "lora_down.weight" in f or "lora_A.weight" in f:
        down = f.get("lora_down.weight", f.get("lora_A.weight"))
        up = f.get("lora_up.weight", f.get("lora_B.weight"))
        r = down.shape[0]
        delta = up.reshape(up.shape[0], r) @ down.reshape(r, -1)
        return delta.reshape(shape), r
    if "hada_w1_a" in f:
        delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        return delta.reshape(shape), f["hada_w1_b"].shape[0]
    if any(k.startswith("lokr_") for k in f):
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2).reshape(shape)
        r = f["lokr_w2_b"].shape[0] if "lokr_w2_b" in f else f["lokr_w1_b"].shape[0] if "lokr_w1_b" in f else None
        return delta, r
    raise ValueError(f"unknown network module with keys {sorted(w)}")


def check_kron_layout(w: dict, shape: torch.Size, delta: torch.Tensor) -> None:
    """delta[i*c + p, j*d + q, ...] = w1[i, j] * w2[p, q, ...]: the index layout spelled out."""
    f = {k: v.float() for k, v in w.items()}
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
    b, c = w1.shape[1], w2.shape[0]
    w2 = w2.reshape(c, shape[1] // b, *shape[2:])
    explicit = torch.einsum("ij,pq...->ipjq...", w1, w2).reshape(shape)
    assert torch.allclose(explicit, delta, rtol=1e-6, atol=1e-7)


def module_table(pipe) -> dict:
    """kohya module name -> module, and ("unet"|"text_encoder", module path) -> module."""
    table = {}
    for component, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                table[kohya_name(component, name)] = mod
                table[(component, name)] = mod
                if component == "text_encoder":
                    table[(component, canonical_te(name))] = mod
    return table


def merge_networks(pipe, networks: list[tuple[Path, float]]) -> int:
    """W += multiplier * scale * delta for every module of every network, in order. Returns the count."""
    table = module_table(pipe)
    n = 0
    with torch.no_grad():
        for path, multiplier in networks:
            for component, module, w, alpha in read_network(path):
                mod = table[(component, module) if component else module]
                delta, r = layer_delta(w, mod.weight.shape)
                if "lokr_w1" in w or "lokr_w1_a" in w:
                    check_kron_layout(w, mod.weight.shape, delta)
                scale = alpha / r if (alpha is not None and r is not None) else 1.0
                mod.weight += (multiplier * scale) * delta
                n += 1
    return n


# ----------------------------------------------------------------------------- per model

def diffusers_image(model: str, networks: list[tuple[str, Path, float]], fuse: bool = False) -> np.ndarray:
    pipe = load_pipe(model)
    for name, path, _ in networks:
        pipe.load_lora_weights(str(path), adapter_name=name)
    if networks:
        pipe.set_adapters([n for n, _, _ in networks], adapter_weights=[w for _, _, w in networks])
        if fuse:
            pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=[n for n, _, _ in networks])
    return generate(pipe, model)


def merged_image(model: str, networks: list[tuple[Path, float]]) -> np.ndarray:
    pipe = load_pipe(model)
    if networks:
        assert merge_networks(pipe, networks) > 0
    return generate(pipe, model)


def write_networks(model: str, work: Path) -> tuple[dict, dict]:
    """Every network file of a model into `work`. Returns ({stem: path}, {file name: description})."""
    files, described = {}, {}
    for name, spec in LORA_ADAPTERS.items():
        adapter = build_lora_adapter(model, name, spec)
        for fmt, writer in (("peft", write_peft_file), ("kohya", write_kohya_file)):
            path = work / f"{name}_{fmt}.safetensors"
            tensors = writer(adapter, spec, path)
            files[path.stem] = path
            if fmt == "peft":
                alpha_from = "header lora_adapter_metadata" if spec["peft_metadata"] else "none: alpha = rank"
                te_names = spec["peft_te_names"]
            else:
                alpha_dtypes = sorted({str(v.dtype).removeprefix("torch.") for k, v in tensors.items() if k.endswith(".alpha")})
                alpha_from = ".alpha tensors (" + ", ".join(alpha_dtypes) + ")"
                te_names = "lora_te_text_model_*"
            described[path.name] = dict(
                network=name, type="lora", format=fmt, rank=spec["rank"], alpha=spec["alpha"],
                rank_pattern=pattern_for(spec["rank_pattern"], spec["unet"]),
                alpha_pattern=pattern_for(spec["alpha_pattern"], spec["unet"]), alpha_from=alpha_from,
                te_names=te_names, unet_targets=list(spec["unet"]), te_targets=list(spec["te"]), seed=spec["seed"],
                modules=(len(adapter["unet"]) + len(adapter["text_encoder"])) // 2, tensors=len(tensors))
    base_pipe = load_pipe_cache(model)
    for name, spec in LYCORIS.items():
        tensors = (make_loha if name == "loha" else make_lokr)(base_pipe, spec)
        path = work / f"{name}.safetensors"
        tensors = {k: v.half() for k, v in tensors.items()}  # float16, like most LyCORIS files (values f16-exact)
        st_io.save_file_sorted(tensors, path, {"format": "pt"})
        files[path.stem] = path
        described[path.name] = dict(
            network=name, type=name, format="lycoris", rank=spec["rank"], alpha=spec["alpha"],
            unet_blocks=list(spec["unet_blocks"]), unet_targets=list(spec["unet"]), te_targets=list(spec["te"]),
            seed=spec["seed"], modules=len(target_modules(base_pipe, spec)), tensors=len(tensors))
    return files, described


def run_case(model: str, key: str, nets: list, source: str, files: dict, none_img) -> tuple[np.ndarray, dict]:
    """The golden image of one case and its checks (max differences out of 255)."""
    checks = {}
    if not nets:
        img = diffusers_image(model, [])
        checks["merge_vs_diffusers"] = max_diff(img, merged_image(model, []))
        golden = TXT2IMG_GOLDENS / f"{model}.safetensors"
        if golden.exists():
            from safetensors.torch import load_file

            checks["txt2img_golden"] = max_diff(img, load_file(str(golden))[f"{SAMPLER}|{SCHEDULE}"].numpy())
            assert checks["txt2img_golden"] == 0, checks
        return img, checks
    if source == "diffusers":
        peft = [(n, files[f"{n}_peft"], w) for n, w in nets]
        kohya = [(n, files[f"{n}_kohya"], w) for n, w in nets]
        img = diffusers_image(model, peft)
        checks["kohya_vs_peft"] = max_diff(img, diffusers_image(model, kohya))
        checks["fused_vs_unfused"] = max_diff(img, diffusers_image(model, peft, fuse=True))
        checks["merge_kohya_vs_diffusers"] = max_diff(img, merged_image(model, [(p, w) for _, p, w in kohya]))
        checks["merge_peft_vs_diffusers"] = max_diff(img, merged_image(model, [(p, w) for _, p, w in peft]))
        assert checks["kohya_vs_peft"] <= MAX_FORMAT_DIFF, (key, checks)
        assert checks["fused_vs_unfused"] <= MAX_FUSED_DIFF, (key, checks)
        assert checks["merge_kohya_vs_diffusers"] <= MAX_MERGE_DIFF, (key, checks)
        assert checks["merge_peft_vs_diffusers"] <= MAX_MERGE_DIFF, (key, checks)
    else:
        img = merged_image(model, [(files[n], w) for n, w in nets])
    checks["vs_none_mean"] = round(float(np.abs(img.astype(np.int32) - none_img.astype(np.int32)).mean()), 3)
    checks["vs_none_max"] = max_diff(img, none_img)
    return img, checks


def run_model(model: str, out_dir: Path, golden_dir: Path, keep_all: bool) -> int:
    keep = KEEP.get(model) if not keep_all else None
    with tempfile.TemporaryDirectory() as tmp:
        files, described = write_networks(model, Path(tmp))
        kept = {stem: p for stem, p in files.items() if keep is None or stem in keep["files"]}
        images, cases_meta = {}, []
        for key, nets, source in CASES:
            img, checks = run_case(model, key, nets, source, files, images.get("none"))
            print(f"{model}: {key:10s} mean {img.mean():7.3f}  {json.dumps(checks)}", flush=True)
            images[key] = img
            if keep is not None and key not in keep["cases"]:
                continue
            networks = [dict(name=n, weight=w, files=sorted(p.name for stem, p in kept.items() if stem.split("_")[0] == n))
                        for n, w in nets]
            assert all(x["files"] for x in networks), (key, "a case needs one of its files kept")
            golden = ("diffusers, no network" if not nets else
                      "diffusers load_lora_weights(*_peft.safetensors) + set_adapters, unfused" if source == "diffusers"
                      else "reference merge (merge_networks)")
            cases_meta.append(dict(key=key, networks=networks, golden=golden, checks=checks))
        images = {c["key"]: images[c["key"]] for c in cases_meta}

        if out_dir.exists():
            for old in out_dir.glob("*.safetensors"):
                old.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in kept.values():
            (out_dir / p.name).write_bytes(p.read_bytes())
    width, height = image_size(model)
    meta = {
        "model": model,
        "prompt": t2i.PROMPT,
        "negative_prompt": t2i.NEGATIVE,
        "steps": str(t2i.STEPS),
        "seed": str(t2i.SEED),
        "cfg": str(t2i.CFG),
        "width": str(width),
        "height": str(height),
        "sampler": SAMPLER,
        "schedule": SCHEDULE,
        "diffusers": diffusers.__version__,
        "peft": importlib.metadata.version("peft"),
        "torch": torch.__version__.split("+")[0],
        "cases": json.dumps(cases_meta, sort_keys=True),
        "networks": json.dumps({k: v for k, v in described.items() if Path(k).stem in kept}, sort_keys=True),
    }
    golden_dir.mkdir(parents=True, exist_ok=True)
    golden_path = golden_dir / f"{model}.safetensors"
    st_io.save_file_sorted({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in images.items()},
                           golden_path, meta)
    total = 0
    for f in sorted(out_dir.glob("*.safetensors")) + [golden_path]:
        total += f.stat().st_size
        print(f"  {f}  {f.stat().st_size:7d} bytes")
    print(f"  {model}: {total} bytes in all")
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="network files go to OUT/<model>/")
    ap.add_argument("--goldens", type=Path, default=DEFAULT_GOLDENS,
                    help="golden images go to GOLDENS/<model>.safetensors (kept out of the network folder, "
                         "which tests use as a LoRA folder)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--all-files", action="store_true",
                    help="write every network file and case for every model (default: the KEEP subset)")
    args = ap.parse_args(argv)
    setup_environment()
    total = sum(run_model(model, args.out / model, args.goldens, args.all_files) for model in args.models)
    print(f"{total} bytes in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
