#!/usr/bin/env python3
"""Golden CLIP text-encoder outputs (transformers CLIPTextModel, float32, CPU).

Writes
  tests/fixtures/golden/text_encoder/<name>.safetensors   for every tiny config:
      sd1_tiny, sd2_tiny, odd_tiny (weights: tests/fixtures/models/{sd1,sd2,odd}-tiny/text_encoder)
      te_h48_gelu, te_h40_qgelu (standalone; weights written by this script to
                                 tests/fixtures/models/text_encoders/<name>/ in both layouts,
                                 plus a matching tokenizer/ folder)
  tests/fixtures/golden/text_encoder/vit_l14_hashinit.safetensors
      full-size openai/clip-vit-large-patch14 text config, weights from tools/hashinit.py
      (nothing committed: the C++ side regenerates them bit-identically).

Each golden file holds (float32 unless noted):
  input_ids          int32 [B, 77]
  last_hidden_state  [B, 77, H]   = final_layer_norm(output of the last layer)
  skip2              [B, 77, H]   = final_layer_norm(hidden_states[-2])  (A1111 "clip skip 2")
  pooler_output      [B, H]       = last_hidden_state at the FIRST position whose id == eos_token_id
and string metadata: "config" (the CLIPTextConfig JSON), "max_abs" (JSON), "semantics", ...
The model is run with input_ids only (no attention mask -> plain causal mask),
attn_implementation="eager", torch.set_num_threads(1).

Tiny input_ids (3 rows, pad id of the config's family: SD1/quick_gelu -> eos, SD2/gelu -> 0 "!"):
  0: BOS + ids of "a photograph of an astronaut riding a horse" from the config's own
     (truncated-merges) CLIP tokenizer + EOS + pad
  1: BOS + 75 uniform random ids in [0, bos) + EOS         (full 77, seeded)
  2: BOS + EOS + pad

Usage: python tools/make_text_encoder_goldens.py [--skip-vit]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clip_bpe_files  # noqa: E402
import hashinit  # noqa: E402
import ldm_layout  # noqa: E402
import st_io  # noqa: E402
import make_tiny_models as tiny  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "tests" / "fixtures" / "models"
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden" / "text_encoder"
SEQ_LEN = 77
PROMPT = "a photograph of an astronaut riding a horse"
VIT_PROMPT = "a photograph of an astronaut riding a horse, highly detailed"

def _vocab(n_merges: int) -> int:
    """CLIP vocab size for the first n_merges merges: 512 byte symbols + merges + 2 specials."""
    return 512 + n_merges + 2


# Standalone tiny text encoders (weights written under models/text_encoders/<name>/).
#  layout "openclip": single file in the SD2 OpenCLIP layout with N+1 resblocks
#  layout "clip":     single file in the SD1 layout
#  merges:           the vocab is CLIP's construction truncated to this many merges (kept
#                     small to save space; also gives other bos/eos ids than the SD tiny models)
#  flattened_dir:     the diffusers-style folder keeps transformers>=5.6 save_pretrained
#                     names ("embeddings.*", "encoder.*", no "text_model." prefix)
STANDALONE = {
    "te_h48_gelu": dict(
        seed=3003, layout="openclip", flattened_dir=False, merges=0,
        text=dict(vocab_size=_vocab(0), hidden_size=48, intermediate_size=67, num_hidden_layers=3,
                  num_attention_heads=6, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                  projection_dim=24, bos_token_id=_vocab(0) - 2, eos_token_id=_vocab(0) - 1,
                  pad_token_id=tiny.SD2_PAD_ID),
    ),
    "te_h40_qgelu": dict(
        seed=4004, layout="clip", flattened_dir=True, merges=250,
        text=dict(vocab_size=_vocab(250), hidden_size=40, intermediate_size=100, num_hidden_layers=4,
                  num_attention_heads=5, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                  projection_dim=40, bos_token_id=_vocab(250) - 2, eos_token_id=_vocab(250) - 1,
                  pad_token_id=_vocab(250) - 1),
    ),
}

# openai/clip-vit-large-patch14 text_config (transcribed, no download).
VIT_L14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    attention_dropout=0.0, initializer_factor=1.0, initializer_range=0.02,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
VIT_PAD_ID = 49407  # what the SD1 tokenizer pads with (pad_token "<|endoftext|>")

SEMANTICS = (
    "transformers CLIPTextModel forward(input_ids) without attention_mask (causal mask only); "
    "last_hidden_state = final_layer_norm(hidden_states[-1]); skip2 = final_layer_norm(hidden_states[-2]); "
    "pooler_output = last_hidden_state[b, first index where input_ids == eos_token_id] "
    "(eos_token_id != 2; if no eos in a row the index would be 0); hidden_act as in config "
    "(quick_gelu: x*sigmoid(1.702x); gelu: exact erf gelu)"
)


def _tiny_tokenizer_ids(n_merges: int) -> list[int]:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        clip_bpe_files.write_hf_files(tmp, n_merges, clip_bpe_files.EOS)
        tok = CLIPTokenizer.from_pretrained(tmp)
        return tok(PROMPT, add_special_tokens=False).input_ids


def tiny_input_ids(cfg: dict, seed: int, n_merges: int) -> torch.Tensor:
    bos, eos, pad = cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]
    assert cfg["vocab_size"] == _vocab(n_merges) and bos == cfg["vocab_size"] - 2
    words = _tiny_tokenizer_ids(n_merges)
    assert len(words) <= SEQ_LEN - 2
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 77])))
    rand = rng.integers(0, bos, size=SEQ_LEN - 2).tolist()
    rows = [
        [bos] + words + [eos],
        [bos] + rand + [eos],
        [bos, eos],
    ]
    rows = [r + [pad] * (SEQ_LEN - len(r)) for r in rows]
    ids = torch.tensor(rows, dtype=torch.int32)
    assert ids.shape == (3, SEQ_LEN) and int(ids.max()) < cfg["vocab_size"]
    return ids


def _final_ln(model):
    return model.final_layer_norm if hasattr(model, "final_layer_norm") else model.text_model.final_layer_norm


@torch.no_grad()
def run_golden(model, input_ids: torch.Tensor) -> dict:
    model.eval()
    out = model(input_ids=input_ids.to(torch.int64), output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1
    ln = _final_ln(model)
    # semantics checks for this transformers version
    assert torch.equal(ln(hs[-1]), out.last_hidden_state), "hidden_states[-1] is not the pre-LN last layer output"
    eos_pos = (input_ids == model.config.eos_token_id).int().argmax(-1)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(input_ids.shape[0]), eos_pos])
    return {
        "input_ids": input_ids.to(torch.int32).contiguous(),
        "last_hidden_state": out.last_hidden_state.float().contiguous(),
        "skip2": ln(hs[-2]).float().contiguous(),
        "pooler_output": out.pooler_output.float().contiguous(),
    }


def save_golden(path: Path, tensors: dict, config: dict, extra_meta: dict) -> None:
    max_abs = {k: float(v.abs().max()) for k, v in tensors.items() if v.is_floating_point()}
    meta = {
        "config": json.dumps(config, sort_keys=True),
        "max_abs": json.dumps(max_abs, sort_keys=True),
        "semantics": SEMANTICS,
        "generator": "tools/make_text_encoder_goldens.py",
        "torch_version": torch.__version__,
        "transformers_version": __import__("transformers").__version__,
    }
    meta.update(extra_meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    st_io.save_file_sorted(tensors, path, meta)
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes) max_abs={max_abs}")


def load_text_encoder(folder: Path):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(folder, attn_implementation="eager", local_files_only=True).eval()


CONFIG_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_dim", "attention_dropout",
    "bos_token_id", "eos_token_id", "pad_token_id",
)


def config_dict(model) -> dict:
    """The architecture-relevant CLIPTextConfig fields (same names as config.json)."""
    d = model.config.to_dict()
    return {k: d[k] for k in CONFIG_KEYS}


def write_standalone(name: str, spec: dict) -> tuple[Path, list[str]]:
    """Both layouts of a standalone tiny text encoder; returns (diffusers folder, report)."""
    from safetensors.torch import load_file

    root = MODELS_DIR / "text_encoders" / name
    if root.exists():
        shutil.rmtree(root)
    te = tiny.make_text_encoder(spec["text"], spec["seed"])
    folder = root / "text_encoder"
    tiny.write_text_encoder_dir(te, folder, flattened=spec["flattened_dir"])
    pad_token = "!" if spec["layout"] == "openclip" else clip_bpe_files.EOS
    vocab = clip_bpe_files.write_hf_files(root / "tokenizer", spec["merges"], pad_token)
    assert len(vocab) == spec["text"]["vocab_size"] and vocab[pad_token] == spec["text"]["pad_token_id"]
    for cfg in folder.glob("*.json"):
        cfg.write_text(json.dumps(json.loads(cfg.read_text()), indent=2, sort_keys=True) + "\n")
    if spec["layout"] == "openclip":
        ldm = ldm_layout.openclip_to_ldm(te.state_dict(), tiny.openclip_extras(te, spec["seed"]))
    else:
        ldm = ldm_layout.clip_to_ldm(te.state_dict(), position_ids=True)
    ldm = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in ldm.items()}
    single = root / f"{name}.safetensors"
    st_io.save_file_sorted(ldm, single, {"format": "pt"})

    # validation: single file -> canonical names == the folder's weights
    report = []
    ref = load_text_encoder(folder)
    ref_sd = ldm_layout.canonical_clip_keys(ref.state_dict())
    back_ldm = load_file(str(single))
    if spec["layout"] == "openclip":
        back = ldm_layout.openclip_from_ldm(back_ldm, ref.config.num_hidden_layers)
    else:
        back = ldm_layout.clip_from_ldm(back_ldm)
    n = tiny._cmp_state(back, ref_sd, f"{name} (own inverse)")
    report.append(f"{name}: own inverse mapping OK ({n} tensors equal)")
    try:
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
        from transformers import CLIPTextModel

        m = create_diffusers_clip_model_from_ldm(CLIPTextModel, back_ldm, config=str(root), subfolder="text_encoder",
                                                 local_files_only=True)
        n = tiny._cmp_state(ldm_layout.canonical_clip_keys(m.state_dict()), ref_sd, f"{name} (diffusers)")
        report.append(f"{name}: diffusers create_diffusers_clip_model_from_ldm OK ({n} tensors equal)")
    except AssertionError:
        raise
    except Exception as e:  # internal diffusers API; report, don't fail
        report.append(f"{name}: diffusers single-file CLIP conversion not checked ({type(e).__name__}: {e})")
    return folder, report


def tiny_goldens() -> list[str]:
    reports = []
    entries = [
        ("sd1_tiny", MODELS_DIR / "sd1-tiny" / "text_encoder", 1001, "sd1", "tests/fixtures/models/sd1-tiny",
         tiny.TINY_MERGES),
        ("sd2_tiny", MODELS_DIR / "sd2-tiny" / "text_encoder", 2002, "sd2", "tests/fixtures/models/sd2-tiny",
         tiny.TINY_MERGES),
        ("odd_tiny", MODELS_DIR / "odd-tiny" / "text_encoder", 5005, "sd1", "tests/fixtures/models/odd-tiny",
         tiny.ODD_MERGES),
    ]
    for name, spec in STANDALONE.items():
        folder, rep = write_standalone(name, spec)
        reports += rep
        fam = "sd2" if spec["layout"] == "openclip" else "sd1"
        entries.append((name, folder, spec["seed"], fam, f"tests/fixtures/models/text_encoders/{name}",
                        spec["merges"]))
    for name, folder, seed, fam, weights, n_merges in entries:
        if not folder.is_dir():
            raise SystemExit(f"{folder} missing: run tools/make_tiny_models.py first")
        model = load_text_encoder(folder)
        cfg = config_dict(model)
        ids = tiny_input_ids(cfg, seed, n_merges)
        g = run_golden(model, ids)
        save_golden(GOLDEN_DIR / f"{name}.safetensors", g, cfg,
                    {"family": fam, "weights": weights, "prompt_row0": PROMPT, "bpe_merges": str(n_merges)})
    return reports


def vit_l14_golden() -> list[str]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    t0 = time.perf_counter()
    cfg = CLIPTextConfig(**VIT_L14_TEXT)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = CLIPTextModel(cfg).eval()
    filled = hashinit.hash_init_state_dict(model)
    assert len(filled) == len(list(model.parameters()))
    h = hashlib.sha256()
    for k in sorted(filled):
        h.update(k.encode())
        h.update(np.ascontiguousarray(filled[k], dtype="<f4").tobytes())
    weights_sha = h.hexdigest()
    del filled
    t_init = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        clip_bpe_files.write_hf_files(tmp, clip_bpe_files.FULL_MERGES, clip_bpe_files.EOS)
        tok = CLIPTokenizer.from_pretrained(tmp)
        enc = tok(VIT_PROMPT, padding="max_length", max_length=SEQ_LEN, truncation=True).input_ids
    from open_clip.tokenizer import SimpleTokenizer

    oc = SimpleTokenizer()
    assert enc[1:enc.index(49407)] == oc.encode(VIT_PROMPT), "HF and open_clip tokenization differ"
    assert enc[0] == 49406 and all(t == VIT_PAD_ID for t in enc[enc.index(49407):])
    ids = torch.tensor([enc], dtype=torch.int32)

    t1 = time.perf_counter()
    g = run_golden(model, ids)
    t_fwd = time.perf_counter() - t1
    conf = config_dict(model)
    save_golden(GOLDEN_DIR / "vit_l14_hashinit.safetensors", g, conf, {
        "family": "sd1",
        "weights": "hashinit (tools/hashinit.py), canonical names text_model.*",
        "weights_sha256": weights_sha,
        "weights_sha256_doc": "sha256 over sorted canonical names: utf8(name) + little-endian f32 bytes",
        "prompt": VIT_PROMPT,
        "pad_id": str(VIT_PAD_ID),
    })
    total = time.perf_counter() - t0
    msg = (f"vit_l14_hashinit: ids {enc[:enc.index(49407) + 1]}; hash-init {t_init:.1f}s, "
           f"forward {t_fwd:.2f}s (1 thread), total {total:.1f}s; weights sha256 {weights_sha[:16]}...")
    return [msg]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-vit", action="store_true", help="skip the full-size ViT-L/14 golden")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    reports = tiny_goldens()
    if not args.skip_vit:
        reports += vit_l14_golden()
    for r in reports:
        print("  " + r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
