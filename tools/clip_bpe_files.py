#!/usr/bin/env python3
"""CLIP BPE vocabulary construction (full or truncated) and HF CLIPTokenizer files.

The merges come from open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`
(line 0 is a header, lines 1..48894 are the 48894 merges CLIP uses).  The vocab
is built exactly like OpenAI CLIP / open_clip's SimpleTokenizer:

    256 byte-unicode symbols (bytes_to_unicode order)
    the same 256 symbols with "</w>" appended
    one entry per merge: the concatenation of the pair (in merge order)
    "<|startoftext|>", "<|endoftext|>"

With all 48894 merges this gives the 49408-entry vocab of
openai/clip-vit-large-patch14 (bos 49406, eos 49407).  `n_merges` truncates the
merge list (the tiny test models use 1000 merges -> 1514 tokens).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

FULL_MERGES = 49152 - 256 - 2  # 48894
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def bpe_gz_path() -> Path:
    import open_clip

    p = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not p.is_file():
        raise FileNotFoundError(p)
    return p


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def load_merges(n_merges: int = FULL_MERGES) -> list[tuple[str, str]]:
    if not 0 <= n_merges <= FULL_MERGES:
        raise ValueError(n_merges)
    lines = gzip.open(bpe_gz_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    assert all(len(m) == 2 for m in merges)
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    out = {tok: i for i, tok in enumerate(vocab)}
    assert len(out) == len(vocab), "duplicate vocab entry"
    return out


def write_hf_files(out_dir: os.PathLike, n_merges: int, pad_token: str, model_max_length: int = 77) -> dict[str, int]:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    (the same four files as the SD1.5/SD2 `tokenizer/` folders).  Returns the vocab."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = load_merges(n_merges)
    vocab = build_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} not in vocab")
    # Single-line JSON object in id order (like the CLIP vocab.json files on the HF hub).
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": pad_token,
        "unk_token": EOS,
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    cfg = {
        "add_prefix_space": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return vocab


def write_open_clip_gz(path: os.PathLike, n_merges: int) -> None:
    """A truncated copy of the open_clip merges file, for cross-checking with
    open_clip.tokenizer.SimpleTokenizer(bpe_path=...). Byte-stable (mtime=0)."""
    lines = gzip.open(bpe_gz_path()).read().decode("utf-8").split("\n")
    data = "\n".join(lines[: 1 + n_merges]) + "\n"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data.encode("utf-8"))
