#!/usr/bin/env python3
"""Deterministic "hash-init" weights, regenerated bit-identically by the C++ side.

Every value depends only on the tensor *name* and the element index, so a
full-size test model needs no committed weights: both sides compute the same
float32 numbers.

Spec (all integer arithmetic is uint64 with wrap-around, all float math is a
sequence of single-rounding float32 operations):

  seed(name) = FNV-1a 64 over the UTF-8 bytes of name
               (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
  element i (0-based, row-major over the shape):
      z  = seed + i
      z += 0x9E3779B97F4A7C15
      z  = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
      z  = (z ^ (z >> 27)) * 0x94D049BB133111EB
      z ^= z >> 31
      v  = float32(int64(z >> 40) - 8388608) * float32(2^-23)   # exact, in [-1, 1)
  value:
      name ends with ".weight" and contains "norm" -> float32(1) + v * float32(0.1)
      elif name ends with ".bias"                  -> v * float32(0.05)
      elif name contains "embedding"               -> v * float32(0.05)
      else (Linear weight [out, in])               -> v * float32(1 / sqrt(in))
           (the scale 1/sqrt(in) is computed in double, then rounded to float32)

Extension beyond the Linear case (not needed for CLIP text models): for a
weight of rank > 2 (a conv kernel [out, in, kh, kw]) "in" is the fan-in
prod(shape[1:]); a tensor of rank < 2 that reaches the last branch is an error.

Names are the HF/transformers names. For CLIPTextModel that is the canonical
checkpoint name *with* the "text_model." prefix, e.g.
"text_model.encoder.layers.0.self_attn.q_proj.weight" (transformers >= 5.6
flattened CLIPTextModel so its module names lack that prefix;
hash_init_state_dict() adds it back, see below).

Self-test / cross-check:  python tools/hashinit.py
"""
from __future__ import annotations

import math
import sys

import numpy as np

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

_F32_ONE = np.float32(1.0)
_F32_NORM_SCALE = np.float32(0.1)
_F32_SMALL_SCALE = np.float32(0.05)
_F32_2M23 = np.float32(2.0**-23)


def fnv1a64(name: str) -> int:
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & _MASK64
    return h


def hash_uniform(name: str, count: int) -> np.ndarray:
    """The raw values v in [-1, 1) (float32) for elements 0..count-1 of `name`."""
    seed = np.uint64(fnv1a64(name))
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64)
        z += seed
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    top = (z >> np.uint64(40)).astype(np.int64) - 8388608
    del z
    return top.astype(np.float32) * _F32_2M23


def _linear_scale(name: str, shape: tuple[int, ...]) -> np.float32:
    if len(shape) < 2:
        raise ValueError(f"hashinit: no rule for rank-{len(shape)} tensor {name!r} {shape}")
    fan_in = int(np.prod(shape[1:]))
    return np.float32(1.0 / math.sqrt(fan_in))


def hash_init_tensor(name: str, shape) -> np.ndarray:
    """float32 array of `shape` filled by the hash-init rule for tensor `name`."""
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape)) if shape else 1
    v = hash_uniform(name, count)
    if name.endswith(".weight") and "norm" in name:
        out = _F32_ONE + v * _F32_NORM_SCALE
    elif name.endswith(".bias"):
        out = v * _F32_SMALL_SCALE
    elif "embedding" in name:
        out = v * _F32_SMALL_SCALE
    else:
        out = v * _linear_scale(name, shape)
    assert out.dtype == np.float32
    return out.reshape(shape)


def canonical_prefix(model) -> str:
    """Prefix that turns the module's state_dict keys into canonical HF names.

    transformers >= 5.6 flattened CLIPTextModel (keys "embeddings.*",
    "encoder.*", "final_layer_norm.*"), while every checkpoint in the wild and
    the hashinit spec use "text_model.*"."""
    try:
        from transformers import CLIPTextModel
    except Exception:  # pragma: no cover - transformers not installed
        return ""
    if isinstance(model, CLIPTextModel) and not hasattr(model, "text_model"):
        return "text_model."
    return ""


def hash_init_state_dict(model, prefix: str | None = None) -> dict:
    """Fill every parameter of torch module `model` with hash-init values (in place).

    Returns {canonical_name: np.ndarray} of what was written. `prefix` is prepended
    to each state_dict key to form the hashed name; by default it is
    canonical_prefix(model) ("text_model." for a flattened CLIPTextModel)."""
    import torch

    if prefix is None:
        prefix = canonical_prefix(model)
    out = {}
    with torch.no_grad():
        for key, param in model.named_parameters():
            name = prefix + key
            arr = hash_init_tensor(name, tuple(param.shape))
            param.copy_(torch.from_numpy(arr))
            out[name] = arr
    return out


def _self_test() -> int:
    # FNV-1a 64 reference values (empty string / "a").
    assert fnv1a64("") == 0xCBF29CE484222325
    assert fnv1a64("a") == 0xAF63DC4C8601EC8C
    # Scalar re-implementation with Python ints for the first elements.
    def ref(name, i):
        z = (fnv1a64(name) + i) & _MASK64
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return z
    name = "a.weight"
    t = hash_init_tensor(name, [2, 3])
    raw = hash_uniform(name, 6)
    for i in range(6):
        z = ref(name, i)
        assert raw[i] == np.float32((z >> 40) - 8388608) * _F32_2M23
    print(f'seed("{name}") = 0x{fnv1a64(name):016x}')
    for i in range(6):
        z = ref(name, i)
        print(f"  i={i} splitmix=0x{z:016x} v={float(raw[i])!r}")
    flat = t.reshape(-1)
    print(f'hash_init_tensor("{name}", [2, 3]) first 4 values (float32):')
    for i in range(4):
        x = flat[i]
        print(f"  [{i}] {float(x)!r:>24}  bits=0x{x.view(np.uint32):08x}")
    # A few other rule branches, for the C++ cross-check.
    for n, s in [
        ("text_model.final_layer_norm.weight", [4]),
        ("text_model.encoder.layers.0.self_attn.q_proj.bias", [4]),
        ("text_model.embeddings.token_embedding.weight", [2, 2]),
        ("text_model.encoder.layers.0.mlp.fc1.weight", [3072, 768]),
    ]:
        x = hash_init_tensor(n, s).reshape(-1)[:4]
        print(f"{n} {s}: " + ", ".join(f"{float(a)!r} (0x{a.view(np.uint32):08x})" for a in x))
    return 0


if __name__ == "__main__":
    sys.exit(_self_test())
