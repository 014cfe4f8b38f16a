#!/usr/bin/env python3
"""Seed corpus for fuzz/fuzz_lora.cc: small LoRA-family files for its four weights
(unet.blk.lin [8, 6], unet.blk.conv [4, 3, 3, 3], unet.blk.pw [6, 4, 1, 1] and the text encoder's
layer-0 fc1 [5, 5]), one per layout and network kind.

Usage: python3 tools/make_fuzz_lora_seeds.py [--out fuzz/corpus/lora]   (standard library only;
byte-identical reruns)
"""
import argparse
import json
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tensor(shape, seed, dtype="F32"):
    n = 1
    for s in shape:
        n *= s
    vals = [((i * 37 + seed * 11) % 17 - 8) / 16.0 for i in range(n)]
    fmt = {"F32": "f", "F16": "e"}[dtype]
    return dtype, list(shape), struct.pack("<%d%s" % (n, fmt), *vals)


def scalar(v, dtype="F32"):
    if dtype == "I64":
        return "I64", [], struct.pack("<q", int(v))
    return dtype, [], struct.pack("<" + {"F32": "f", "F16": "e"}[dtype], v)


def save(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "fuzz" / "corpus" / "lora")
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    k = "lora_unet_blk_"
    seeds = {
        "kohya_linear": {k + "lin.lora_down.weight": tensor([2, 6], 1, "F16"),
                         k + "lin.lora_up.weight": tensor([8, 2], 2, "F16"), k + "lin.alpha": scalar(1, "F16"),
                         "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": tensor([1, 5], 3),
                         "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": tensor([5, 1], 4),
                         "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": scalar(1, "I64")},
        "locon_conv": {k + "conv.lora_down.weight": tensor([2, 3, 3, 3], 5),
                       k + "conv.lora_up.weight": tensor([4, 2, 1, 1], 6), k + "conv.alpha": scalar(2),
                       k + "pw.lora_down.weight": tensor([2, 4, 1, 1], 7),
                       k + "pw.lora_up.weight": tensor([6, 2, 1, 1], 8)},
        "locon_tucker": {k + "conv.lora_down.weight": tensor([2, 3, 1, 1], 9),
                         k + "conv.lora_mid.weight": tensor([2, 2, 3, 3], 10),
                         k + "conv.lora_up.weight": tensor([4, 2, 1, 1], 11)},
        "loha": {k + "lin.hada_w1_a": tensor([8, 2], 12), k + "lin.hada_w1_b": tensor([2, 6], 13),
                 k + "lin.hada_w2_a": tensor([8, 2], 14), k + "lin.hada_w2_b": tensor([2, 6], 15),
                 k + "lin.alpha": scalar(1)},
        "lokr": {k + "conv.lokr_w1": tensor([2, 1], 16), k + "conv.lokr_w2": tensor([2, 3, 3, 3], 17),
                 k + "lin.lokr_w1_a": tensor([2, 1], 18), k + "lin.lokr_w1_b": tensor([1, 2], 19),
                 k + "lin.lokr_w2_a": tensor([4, 1], 20), k + "lin.lokr_w2_b": tensor([1, 3], 21),
                 k + "lin.alpha": scalar(1)},
        "full": {k + "lin.diff": tensor([8, 6], 22)},
        "peft": {"unet.blk.lin.lora_A.weight": tensor([2, 6], 23), "unet.blk.lin.lora_B.weight": tensor([8, 2], 24),
                 "text_encoder.encoder.layers.0.mlp.fc1.lora_A.weight": tensor([1, 5], 25),
                 "text_encoder.encoder.layers.0.mlp.fc1.lora_B.weight": tensor([5, 1], 26)},
        "old_diffusers": {"unet.blk.lin.lora.down.weight": tensor([1, 6], 28),
                          "unet.blk.lin.lora.up.weight": tensor([8, 1], 29)},
    }
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.r": 2, "unet.alpha_pattern": {"lin": 1},
                                                 "text_encoder.lora_alpha": 1, "text_encoder.use_rslora": True})}
    for name, t in seeds.items():
        save(out / f"{name}.safetensors", t, meta if name == "peft" else None)
    print(f"wrote {len(seeds)} seeds to {out}")


if __name__ == "__main__":
    main()
