#!/usr/bin/env python3
"""diffusers/transformers  ->  original LDM / A1111 single-file key layout.

Written from the structure of the original CompVis/Stability `ldm` modules
(cross-checked by loading the result back with diffusers' `from_single_file`,
see make_tiny_models.py).  Every function takes a state dict in diffusers /
transformers naming and returns a new dict in LDM naming (values are the same
tensors, reshaped where the layouts differ); `*_inverse` functions go back and
are used for self-validation.

UNet  (prefix "model.diffusion_model.", lpb = layers_per_block)
  time_embedding.linear_{1,2}          -> time_embed.{0,2}
  conv_in                              -> input_blocks.0.0
  down_blocks.b.resnets.l              -> input_blocks.(1 + b*(lpb+1) + l).0
  down_blocks.b.attentions.l           -> input_blocks.(1 + b*(lpb+1) + l).1
  down_blocks.b.downsamplers.0.conv    -> input_blocks.((b+1)*(lpb+1)).0.op
  mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
  up_blocks.b.resnets.l                -> output_blocks.(b*(lpb+1) + l).0
  up_blocks.b.attentions.l             -> output_blocks.(b*(lpb+1) + l).1
  up_blocks.b.upsamplers.0.conv        -> output_blocks.(b*(lpb+1) + lpb).(2 if attn else 1).conv
  conv_norm_out / conv_out             -> out.0 / out.2
  inside resnets: norm1->in_layers.0, conv1->in_layers.2, time_emb_proj->emb_layers.1,
                  norm2->out_layers.0, conv2->out_layers.3, conv_shortcut->skip_connection
  inside attentions (SpatialTransformer): names are identical.

VAE  (prefix "first_stage_model.", n = number of blocks)
  encoder.down_blocks.i.resnets.j      -> encoder.down.i.block.j
  encoder.down_blocks.i.downsamplers.0 -> encoder.down.i.downsample
  decoder.up_blocks.i.resnets.j        -> decoder.up.(n-1-i).block.j
  decoder.up_blocks.i.upsamplers.0     -> decoder.up.(n-1-i).upsample
  {en,de}coder.mid_block.resnets.k     -> {en,de}coder.mid.block_(k+1)
  {en,de}coder.mid_block.attentions.0  -> {en,de}coder.mid.attn_1 with
      group_norm->norm, to_q/to_k/to_v->q/k/v, to_out.0->proj_out, Linear [C,C] -> 1x1 conv [C,C,1,1]
  {en,de}coder.conv_norm_out           -> {en,de}coder.norm_out
  conv_shortcut (in resnets)           -> nin_shortcut
  conv_in, conv_out, quant_conv, post_quant_conv: unchanged.

CLIP text encoder, SD1 (prefix "cond_stage_model.transformer."): canonical
transformers names "text_model.*" unchanged (+ optional int64 position_ids).

OpenCLIP text encoder, SD2 (prefix "cond_stage_model.model."):
  text_model.embeddings.token_embedding.weight    -> token_embedding.weight
  text_model.embeddings.position_embedding.weight -> positional_embedding
  text_model.encoder.layers.N.layer_norm{1,2}     -> transformer.resblocks.N.ln_{1,2}
  text_model.encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias}
                                        -> transformer.resblocks.N.attn.in_proj_{weight,bias} (cat q,k,v on dim 0)
  text_model.encoder.layers.N.self_attn.out_proj  -> transformer.resblocks.N.attn.out_proj
  text_model.encoder.layers.N.mlp.fc1 / fc2       -> transformer.resblocks.N.mlp.c_fc / c_proj
  text_model.final_layer_norm                      -> ln_final
  plus (not in the diffusers model): one extra last resblock, text_projection
  [hidden, proj] (used as x @ P), logit_scale (0-d).
"""
from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."

_UNET_RES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]
_UNET_TOP = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
]
_VAE_ATTN = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def _swap_prefix(rest: str, table, forward=True):
    for a, b in table:
        src, dst = (a, b) if forward else (b, a)
        if rest.startswith(src):
            return dst + rest[len(src):]
    raise KeyError(rest)


# ----------------------------------------------------------------------------- UNet

def unet_key_to_ldm(key: str, config: dict) -> str:
    lpb = int(config["layers_per_block"])
    up_types = list(config["up_block_types"])
    for a, b in _UNET_TOP:
        if key.startswith(a):
            return b + key[len(a):]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * (lpb + 1) + l
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_swap_prefix(rest, _UNET_RES)}"
        return f"input_blocks.{idx}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_swap_prefix(m[2], _UNET_RES)}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * (lpb + 1) + l
        if kind == "resnets":
            return f"output_blocks.{idx}.0.{_swap_prefix(rest, _UNET_RES)}"
        return f"output_blocks.{idx}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        b = int(m[1])
        has_attn = up_types[b].startswith("CrossAttn")
        return f"output_blocks.{b * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv.{m[2]}"
    raise KeyError(f"unmapped UNet key {key!r}")


def unet_to_ldm(sd: dict, config: dict, prefix: str = UNET_PREFIX) -> dict:
    out = {}
    for k, v in sd.items():
        nk = prefix + unet_key_to_ldm(k, config)
        assert nk not in out, nk
        out[nk] = v
    return out


def unet_from_ldm(ldm: dict, config: dict, prefix: str = UNET_PREFIX, diffusers_keys=None) -> dict:
    """Inverse of unet_to_ldm, driven by the diffusers key list (names are unique)."""
    assert diffusers_keys is not None
    inv = {prefix + unet_key_to_ldm(k, config): k for k in diffusers_keys}
    return {inv[k]: v for k, v in ldm.items() if k in inv}


# ----------------------------------------------------------------------------- VAE

def _vae_res(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.")


def vae_key_to_ldm(key: str, config: dict) -> str:
    n = len(config["up_block_types"])
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_vae_res(m[3])}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{_vae_res(m[3])}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_res(m[3])}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_swap_prefix(m[2], _VAE_ATTN)}"
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", key) or re.fullmatch(
        r"(quant_conv|post_quant_conv)\.(weight|bias)", key
    ):
        return key
    raise KeyError(f"unmapped VAE key {key!r}")


def _is_vae_attn_weight(ldm_key: str) -> bool:
    return ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and not ldm_key.endswith("norm.weight")


def vae_to_ldm(sd: dict, config: dict, prefix: str = VAE_PREFIX) -> dict:
    out = {}
    for k, v in sd.items():
        lk = vae_key_to_ldm(k, config)
        if _is_vae_attn_weight(lk):
            assert v.dim() == 2, (k, v.shape)
            v = v.reshape(*v.shape, 1, 1)
        out[prefix + lk] = v
    return out


def vae_from_ldm(ldm: dict, config: dict, prefix: str = VAE_PREFIX, diffusers_keys=None) -> dict:
    assert diffusers_keys is not None
    inv = {prefix + vae_key_to_ldm(k, config): k for k in diffusers_keys}
    out = {}
    for k, v in ldm.items():
        if k not in inv:
            continue
        if _is_vae_attn_weight(k[len(prefix):]):
            assert v.dim() == 4 and v.shape[2:] == (1, 1)
            v = v[:, :, 0, 0]
        out[inv[k]] = v
    return out


# ----------------------------------------------------------------------------- text encoders

def canonical_clip_keys(sd: dict) -> dict:
    """transformers >= 5.6 CLIPTextModel state dict -> canonical "text_model.*" names."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}


def clip_to_ldm(sd: dict, prefix: str = CLIP_PREFIX, position_ids: bool = True) -> dict:
    sd = canonical_clip_keys(sd)
    out = {prefix + k: v for k, v in sd.items()}
    if position_ids:
        n = sd["text_model.embeddings.position_embedding.weight"].shape[0]
        out[prefix + "text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64).reshape(1, n)
    return out


def clip_from_ldm(ldm: dict, prefix: str = CLIP_PREFIX) -> dict:
    return {
        k[len(prefix):]: v
        for k, v in ldm.items()
        if k.startswith(prefix) and not k.endswith("position_ids")
    }


_OC_LAYER = [
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("self_attn.out_proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]


def openclip_to_ldm(sd: dict, extra: dict, prefix: str = OPENCLIP_PREFIX) -> dict:
    """`sd`: CLIPTextModel state dict (N layers). `extra`: OpenCLIP-only tensors in
    OpenCLIP naming without prefix: the extra last resblock
    ("transformer.resblocks.N.*"), "text_projection" [hidden, proj], "logit_scale"."""
    sd = canonical_clip_keys(sd)
    out = {}
    qkv = {}
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + k.rsplit(".", 1)[1]] = v
        else:
            m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", k)
            if not m:
                raise KeyError(f"unmapped CLIP key {k!r}")
            layer, rest = int(m[1]), m[2]
            mq = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if mq:
                qkv.setdefault((layer, mq[2]), {})[mq[1]] = v
                continue
            out[f"{prefix}transformer.resblocks.{layer}.{_swap_prefix(rest, _OC_LAYER)}"] = v
    for (layer, kind), parts in qkv.items():
        assert set(parts) == {"q", "k", "v"}
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    for k, v in extra.items():
        assert prefix + k not in out, k
        out[prefix + k] = v
    return out


def openclip_from_ldm(ldm: dict, num_layers: int, prefix: str = OPENCLIP_PREFIX) -> dict:
    """Back to canonical transformers names, keeping resblocks 0..num_layers-1 only."""
    out = {}
    for k, v in ldm.items():
        if not k.startswith(prefix):
            continue
        r = k[len(prefix):]
        if r == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = v
        elif r == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = v
        elif r.startswith("ln_final."):
            out["text_model.final_layer_norm." + r.rsplit(".", 1)[1]] = v
        elif r in ("text_projection", "logit_scale"):
            continue
        else:
            m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", r)
            assert m, k
            layer, rest = int(m[1]), m[2]
            if layer >= num_layers:
                continue
            base = f"text_model.encoder.layers.{layer}."
            mi = re.fullmatch(r"attn\.in_proj_(weight|bias)", rest)
            if mi:
                q, kk, vv = v.chunk(3, dim=0)
                for n, t in zip("qkv", (q, kk, vv)):
                    out[f"{base}self_attn.{n}_proj.{mi[1]}"] = t
            else:
                out[base + _swap_prefix(rest, _OC_LAYER, forward=False)] = v
    return out
