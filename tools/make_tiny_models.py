#!/usr/bin/env python3
"""Build tiny random-weight Stable Diffusion models in both layouts.

Writes under tests/fixtures/models/ (default):

  sd1-tiny/                    diffusers directory (float32 safetensors)
  sd1-tiny.safetensors         same weights, LDM/A1111 single file (float16 weights)
  sd1-tiny-inpaint.safetensors only with --inpaint: SD1 inpainting variant (UNet
                               in_channels 9), single file only; committed for the inpaint
                               goldens (tools/make_img2img_goldens.py)
  sd2-tiny/                    diffusers directory, SD2 style (v_prediction, linear proj, gelu)
  sd2-tiny.safetensors         single file with the OpenCLIP text-encoder layout
  odd-tiny/                    diffusers directory, SD1 style with odd sizes everywhere (channels
                               9/15, 3/5 heads of width 3, text width 15 = 3 heads of 5, odd
                               timestep-embedding width, 250-merge vocabulary)
  odd-tiny.safetensors         same weights, SD1 single file without the DDPM schedule buffers
                               (like a checkpoint converted from diffusers)

Every weight is exactly representable in float16, so the f32 directory and the
f16 single file hold identical values.  All randomness is seeded per tensor
(seed, tensor name), so reruns are byte-identical.

After writing, each single file is validated against its diffusers directory:
 (a) with this repo's own inverse mapping (tools/ldm_layout.py), and
 (b) with diffusers' own loader: StableDiffusion[Inpaint]Pipeline.from_single_file(
     file, config=<diffusers dir>, local_files_only=True), comparing every tensor.

Usage:  python tools/make_tiny_models.py [--out DIR] [--no-validate] [--inpaint] [--models NAME ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clip_bpe_files  # noqa: E402
import ldm_layout  # noqa: E402
import st_io  # noqa: E402
from hashinit import fnv1a64  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "models"

TINY_MERGES = 1000
TINY_VOCAB = 256 * 2 + TINY_MERGES + 2  # 1514
TINY_BOS = TINY_VOCAB - 2  # <|startoftext|> = 1512
TINY_EOS = TINY_VOCAB - 1  # <|endoftext|>   = 1513
SD2_PAD_ID = 0  # "!" is the first byte symbol
# odd-tiny: a shorter vocabulary (other special-token ids, and a smaller embedding table).
ODD_MERGES = 250
ODD_VOCAB = 256 * 2 + ODD_MERGES + 2  # 764
ODD_BOS = ODD_VOCAB - 2  # 762
ODD_EOS = ODD_VOCAB - 1  # 763

# ----------------------------------------------------------------------------- configs

SD1_TEXT = dict(
    vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
    num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=32,
    bos_token_id=TINY_BOS, eos_token_id=TINY_EOS, pad_token_id=TINY_EOS,
)
SD2_TEXT = dict(
    vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
    layer_norm_eps=1e-5, projection_dim=32,
    bos_token_id=TINY_BOS, eos_token_id=TINY_EOS, pad_token_id=SD2_PAD_ID,
)

# SD1 tiny: 3 levels, layers_per_block 1, 4 heads everywhere (real SD1: 8 heads).
SD1_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
    cross_attention_dim=32, attention_head_dim=4, use_linear_projection=False,
)
# SD2 tiny: 2 levels, layers_per_block 2 (like real SD), linear projection, and a
# constant head dim of 4 (real SD2: 64) -> attention_head_dim (= #heads) per block.
SD2_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4,
    cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True,
)
# odd-tiny: SD1 style (epsilon, conv proj_in/out, CLIP ViT text encoder in the SD1 layout) with
# odd sizes: text width 15 (3 heads of 5, MLP 23); UNet channels (9, 15), 3 groups (3 and 5
# channels per group), 3 / 5 heads of width 3 (attention_head_dim = #heads per level), timestep
# embedding of odd width 9 (zero-padded), cross-attention width 15; VAE channels (6, 9) with
# 3 groups, so its mid-block attention is one head of width 9.
ODD_TEXT = dict(
    vocab_size=ODD_VOCAB, hidden_size=15, intermediate_size=23, num_hidden_layers=2,
    num_attention_heads=3, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=15,
    bos_token_id=ODD_BOS, eos_token_id=ODD_EOS, pad_token_id=ODD_EOS,
)
ODD_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(9, 15), layers_per_block=1, norm_num_groups=3,
    cross_attention_dim=15, attention_head_dim=(3, 5), use_linear_projection=False,
)
ODD_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(6, 9), layers_per_block=1, latent_channels=4, norm_num_groups=3,
    sample_size=16, scaling_factor=0.18215,
)
VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 16), layers_per_block=2, latent_channels=4, norm_num_groups=4,
    sample_size=16, scaling_factor=0.18215,
)
SCHED_COMMON = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    trained_betas=None, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading",
)

MODELS = {
    "sd1-tiny": dict(seed=1001, text=SD1_TEXT, unet=SD1_UNET, vae=VAE, family="sd1",
                     scheduler="PNDMScheduler", prediction_type="epsilon", pad_token=clip_bpe_files.EOS),
    "sd2-tiny": dict(seed=2002, text=SD2_TEXT, unet=SD2_UNET, vae=VAE, family="sd2",
                     scheduler="DDIMScheduler", prediction_type="v_prediction", pad_token="!"),
    "odd-tiny": dict(seed=5005, text=ODD_TEXT, unet=ODD_UNET, vae=ODD_VAE, family="sd1",
                     scheduler="PNDMScheduler", prediction_type="epsilon", pad_token=clip_bpe_files.EOS,
                     merges=ODD_MERGES, ldm_schedule_buffers=False),
}
INPAINT = dict(base="sd1-tiny", name="sd1-tiny-inpaint", unet_in_channels=9, seed_offset=7)

# ----------------------------------------------------------------------------- init

def f16_exact(a: np.ndarray) -> np.ndarray:
    """Round float values through float16 and back (so f16 storage is lossless)."""
    out = np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)
    assert np.all(np.isfinite(out))
    return out


def seeded_value(seed: int, name: str, shape) -> np.ndarray:
    """Deterministic random tensor for (seed, canonical name, shape), f16-exact f32.

    norm weights: 1 + 0.1 N;  biases (and norm biases): 0.1 N;  embeddings: 0.1 N;
    other weights (Linear / conv): N / sqrt(fan_in), fan_in = prod(shape[1:])."""
    shape = tuple(int(s) for s in shape)
    ss = np.random.SeedSequence([seed, fnv1a64(name)])
    n = np.random.Generator(np.random.PCG64(ss)).standard_normal(shape)
    parts = name.split(".")
    module_name = parts[-2] if len(parts) >= 2 else ""
    if name.endswith(".weight") and len(shape) == 1 and "norm" in name:
        v = 1.0 + 0.1 * n
    elif name.endswith(".bias") or len(shape) <= 1:
        v = 0.1 * n
    elif module_name.endswith("embedding"):  # nn.Embedding tables (not time_embedding.linear_*)
        v = 0.1 * n
    else:
        v = n / np.sqrt(float(np.prod(shape[1:])))
    return f16_exact(v)


def seeded_init_(module: torch.nn.Module, seed: int, prefix: str = "") -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(seeded_value(seed, prefix + name, p.shape)))


def make_text_encoder(text_cfg: dict, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**text_cfg)
    torch.manual_seed(seed)
    model = CLIPTextModel(cfg).eval()
    seeded_init_(model, seed, prefix="text_model.")
    return model


def openclip_extras(text_model, seed: int) -> dict:
    """OpenCLIP-only tensors: one extra (last) resblock, text_projection, logit_scale."""
    cfg = text_model.config
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    pre = f"transformer.resblocks.{n}."
    shapes = {
        "ln_1.weight": (h,), "ln_1.bias": (h,),
        "attn.in_proj_weight": (3 * h, h), "attn.in_proj_bias": (3 * h,),
        "attn.out_proj.weight": (h, h), "attn.out_proj.bias": (h,),
        "ln_2.weight": (h,), "ln_2.bias": (h,),
        "mlp.c_fc.weight": (f, h), "mlp.c_fc.bias": (f,),
        "mlp.c_proj.weight": (h, f), "mlp.c_proj.bias": (h,),
    }
    out = {}
    for k, s in shapes.items():
        name = pre + k
        # value rules keyed on OpenCLIP names: ln_* are norms.
        rule_name = name.replace("ln_1.", "norm1.").replace("ln_2.", "norm2.").replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias")
        out[name] = torch.from_numpy(seeded_value(seed, rule_name, s))
    proj = cfg.projection_dim
    out["text_projection"] = torch.from_numpy(seeded_value(seed, "text_projection.proj", (h, proj)))
    out["logit_scale"] = torch.tensor(float(np.float16(np.log(1.0 / 0.07))), dtype=torch.float32)
    return out


def make_unet(cfg: dict, seed: int, in_channels: int | None = None):
    from diffusers import UNet2DConditionModel

    cfg = dict(cfg)
    if in_channels is not None:
        cfg["in_channels"] = in_channels
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**cfg).eval()
    seeded_init_(m, seed)
    return m


def make_vae(cfg: dict, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    m = AutoencoderKL(**cfg).eval()
    seeded_init_(m, seed)
    return m


def make_scheduler(spec: dict):
    import diffusers

    cls = getattr(diffusers, spec["scheduler"])
    kw = dict(SCHED_COMMON, prediction_type=spec["prediction_type"])
    if spec["scheduler"] == "PNDMScheduler":
        kw["skip_prk_steps"] = True
        kw.pop("clip_sample")
    return cls(**kw)


def ldm_schedule_buffers(beta_start=0.00085, beta_end=0.012, n=1000) -> dict:
    """The DDPM buffers an LDM checkpoint carries (computed like ldm's
    register_schedule in float64, stored as float32)."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in bufs.items()}


# ----------------------------------------------------------------------------- writing

def build_components(spec: dict, unet_in_channels: int | None = None, seed_offset: int = 0):
    seed = spec["seed"]
    te = make_text_encoder(spec["text"], seed)
    unet = make_unet(spec["unet"], seed + seed_offset, unet_in_channels)
    vae = make_vae(spec["vae"], seed)
    sched = make_scheduler(spec)
    extras = openclip_extras(te, seed) if spec["family"] == "sd2" else None
    return te, unet, vae, sched, extras


def _save_st(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    st_io.save_file_sorted(tensors, path, metadata)


def write_text_encoder_dir(te, out_dir: Path, flattened: bool = False) -> None:
    """config.json + model.safetensors (f32). Keys are the canonical
    "text_model.*" names (as in every SD repo) unless flattened=True, which keeps
    the transformers>=5.6 save_pretrained names ("embeddings.*", "encoder.*")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    te.save_pretrained(out_dir, safe_serialization=True)
    sd = {k: v.detach().to(torch.float32) for k, v in te.state_dict().items()}
    if not flattened:
        sd = ldm_layout.canonical_clip_keys(sd)
    for f in out_dir.glob("*.safetensors"):
        f.unlink()
    _save_st(sd, out_dir / "model.safetensors", {"format": "pt"})


def write_diffusers_dir(spec: dict, comps, out_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    te, unet, vae, sched, _ = comps
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tok"
        clip_bpe_files.write_hf_files(tok_dir, spec.get("merges", TINY_MERGES), spec["pad_token"])
        tok = CLIPTokenizer.from_pretrained(tok_dir)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(out_dir, safe_serialization=True)
    # Tokenizer folder exactly like the SD repos: the four classic files only.
    shutil.rmtree(out_dir / "tokenizer")
    clip_bpe_files.write_hf_files(out_dir / "tokenizer", spec.get("merges", TINY_MERGES), spec["pad_token"])
    # Text encoder weights under their canonical names (see write_text_encoder_dir).
    write_text_encoder_dir(te, out_dir / "text_encoder")
    # Stable key order for the component/pipeline configs (not the tokenizer files).
    for cfg in [out_dir / "model_index.json", *out_dir.glob("*/config.json"), *out_dir.glob("*/scheduler_config.json")]:
        data = json.loads(cfg.read_text())
        cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def single_file_state_dict(spec: dict, comps) -> dict:
    te, unet, vae, _, extras = comps
    f16 = lambda d: {k: v.detach().to(torch.float16) for k, v in d.items()}  # noqa: E731
    out = {}
    out.update(f16(ldm_layout.unet_to_ldm(unet.state_dict(), dict(unet.config))))
    out.update(f16(ldm_layout.vae_to_ldm(vae.state_dict(), dict(vae.config))))
    if spec["family"] == "sd1":
        te_sd = ldm_layout.clip_to_ldm(te.state_dict(), position_ids=False)
        out.update(f16(te_sd))
        # Real SD1 checkpoints carry this int64 buffer; loaders must skip it.
        n = spec["text"]["max_position_embeddings"]
        out[ldm_layout.CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    else:
        out.update(f16(ldm_layout.openclip_to_ldm(te.state_dict(), extras)))
    if spec.get("ldm_schedule_buffers", True):
        out.update(ldm_schedule_buffers())  # float32, like the real checkpoints' buffers
    # else: none, like checkpoints converted from diffusers (saves 48 KB of fixture)
    for k, v in out.items():
        if v.is_floating_point():
            assert torch.equal(v.float().half(), v.half()), k
    return out


# ----------------------------------------------------------------------------- validation

def _cmp_state(a: dict, b: dict, what: str) -> int:
    ka, kb = set(a), set(b)
    if ka != kb:
        raise AssertionError(f"{what}: key mismatch: only-left={sorted(ka - kb)[:5]} only-right={sorted(kb - ka)[:5]}")
    for k in sorted(ka):
        x, y = a[k].detach().float(), b[k].detach().float()
        if x.shape != y.shape or not torch.equal(x, y):
            raise AssertionError(f"{what}: tensor {k} differs ({tuple(x.shape)} vs {tuple(y.shape)})")
    return len(ka)


def validate(name: str, spec: dict, dir_path: Path, file_path: Path, inpaint: bool = False) -> list[str]:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    report = []
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    ref = cls.from_pretrained(dir_path, local_files_only=True)
    ref_te = ldm_layout.canonical_clip_keys(ref.text_encoder.state_dict())
    ldm = load_file(str(file_path))

    # (a) own inverse mapping
    n = _cmp_state(ldm_layout.unet_from_ldm(ldm, dict(ref.unet.config), diffusers_keys=ref.unet.state_dict().keys()),
                   ref.unet.state_dict(), f"{name} unet (own inverse)")
    n += _cmp_state(ldm_layout.vae_from_ldm(ldm, dict(ref.vae.config), diffusers_keys=ref.vae.state_dict().keys()),
                    ref.vae.state_dict(), f"{name} vae (own inverse)")
    if spec["family"] == "sd1":
        te_back = ldm_layout.clip_from_ldm(ldm)
    else:
        te_back = ldm_layout.openclip_from_ldm(ldm, ref.text_encoder.config.num_hidden_layers)
    n += _cmp_state(te_back, ref_te, f"{name} text encoder (own inverse)")
    unet_ldm = [k for k in ldm if k.startswith(ldm_layout.UNET_PREFIX)]
    vae_ldm = [k for k in ldm if k.startswith(ldm_layout.VAE_PREFIX)]
    assert len(unet_ldm) == len(ref.unet.state_dict()) and len(vae_ldm) == len(ref.vae.state_dict())
    report.append(f"{name}: own inverse mapping OK ({n} tensors equal)")

    # (b) diffusers' from_single_file with the tiny directory as config
    sf = cls.from_single_file(str(file_path), config=str(dir_path), local_files_only=True)
    n = _cmp_state(sf.unet.state_dict(), ref.unet.state_dict(), f"{name} unet (from_single_file)")
    n += _cmp_state(sf.vae.state_dict(), ref.vae.state_dict(), f"{name} vae (from_single_file)")
    n += _cmp_state(sf.text_encoder.state_dict(), ref.text_encoder.state_dict(), f"{name} te (from_single_file)")
    assert dict(sf.scheduler.config) == dict(ref.scheduler.config)
    report.append(f"{name}: diffusers from_single_file OK ({n} tensors equal, dtype {sf.unet.dtype})")

    # tokenizer
    tok = CLIPTokenizer.from_pretrained(dir_path / "tokenizer")
    assert len(tok) == spec["text"]["vocab_size"]
    assert tok.bos_token_id == spec["text"]["bos_token_id"] and tok.eos_token_id == spec["text"]["eos_token_id"]
    assert tok.pad_token_id == spec["text"]["pad_token_id"], (tok.pad_token_id, spec["text"]["pad_token_id"])
    report.append(f"{name}: CLIPTokenizer loads (vocab {len(tok)}, bos {tok.bos_token_id}, eos {tok.eos_token_id}, pad {tok.pad_token_id})")

    # end-to-end: both pipelines give the same image
    kw = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np",
              height=8 * ref.vae_scale_factor, width=8 * ref.vae_scale_factor)
    if inpaint:
        img = torch.zeros(1, 3, kw["height"], kw["width"])
        mask = torch.ones(1, 1, kw["height"], kw["width"])
        kw.update(image=img, mask_image=mask)
    a = ref("a photograph of an astronaut", generator=torch.Generator().manual_seed(0), **kw).images
    b = sf("a photograph of an astronaut", generator=torch.Generator().manual_seed(0), **kw).images
    assert np.isfinite(a).all() and np.array_equal(a, b)
    report.append(f"{name}: 2-step pipeline run identical for dir and single file, image {a.shape}, mean {a.mean():.4f}")
    return report


def _check_tokenizer_vs_open_clip(dir_path: Path, n_merges: int = TINY_MERGES) -> str:
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(dir_path / "tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        gz = Path(tmp) / "m.txt.gz"
        clip_bpe_files.write_open_clip_gz(gz, n_merges)
        ref = SimpleTokenizer(bpe_path=str(gz))
    texts = ["a photograph of an astronaut riding a horse", "Hello, World!! 123 déjà-vu",
             "masterpiece, best quality, (cat:1.2)", "  lots   of   spaces  "]
    for t in texts:
        got = tok(t, add_special_tokens=False).input_ids
        exp = ref.encode(t)
        assert got == exp, (t, got, exp)
    return f"tokenizer matches open_clip SimpleTokenizer (truncated merges) on {len(texts)} strings"


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--inpaint", action="store_true",
                    help="also write sd1-tiny-inpaint.safetensors (~0.57 MB; off by default for the size budget)")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS),
                    help="which models to write (default: all; the others are left as they are)")
    args = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for name in args.models:
        spec = MODELS[name]
        comps = build_components(spec)
        write_diffusers_dir(spec, comps, out / name)
        sd = single_file_state_dict(spec, comps)
        _save_st(sd, out / f"{name}.safetensors", {"format": "pt"})
        print(f"wrote {out / name}/ and {out / (name + '.safetensors')} ({len(sd)} tensors)")
        if not args.no_validate:
            reports += validate(name, spec, out / name, out / f"{name}.safetensors")
            if name in ("sd1-tiny", "odd-tiny"):
                reports.append(f"{name}: " + _check_tokenizer_vs_open_clip(out / name, spec.get("merges", TINY_MERGES)))
    if args.inpaint and INPAINT["base"] in args.models:
        spec = MODELS[INPAINT["base"]]
        comps = build_components(spec, unet_in_channels=INPAINT["unet_in_channels"], seed_offset=INPAINT["seed_offset"])
        sd = single_file_state_dict(spec, comps)
        path = out / f"{INPAINT['name']}.safetensors"
        _save_st(sd, path, {"format": "pt"})
        print(f"wrote {path} ({len(sd)} tensors)")
        if not args.no_validate:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp) / INPAINT["name"]
                write_diffusers_dir(spec, comps, d)
                reports += validate(INPAINT["name"], spec, d, path, inpaint=True)
    for r in reports:
        print("  " + r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
