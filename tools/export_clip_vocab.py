#!/usr/bin/env python3
"""Write a HF-style tokenizer folder (vocab.json + merges.txt) from open_clip's bpe_simple_vocab_16e6.txt.gz.

The vocabulary is built exactly as CLIP/open_clip build it: the 256 byte-level characters, the same with
"</w>", one token per merge (in merge order), then <|startoftext|> and <|endoftext|>. With the full 48894
merges this is, id for id, the vocabulary of openai/clip-vit-large-patch14.

  python tools/export_clip_vocab.py OUT_DIR [--merges N] [--bpe data/clip/bpe_simple_vocab_16e6.txt.gz]

--merges N keeps only the first N merges (tiny test vocabularies); special tokens then get ids 512+N, 513+N.
"""
import argparse
import gzip
import json
import os

FULL_MERGES = 49152 - 256 - 2  # 48894, what CLIP uses from the 262144-line file
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bytes_to_unicode():
  """GPT-2/CLIP byte -> printable character map, in CLIP's vocabulary order."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, [chr(c) for c in cs]))


def load_merges(bpe_path, n_merges=FULL_MERGES):
  lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
  lines = lines[1:n_merges + 1]  # line 0 is the "#version" header
  return [tuple(line.split()) for line in lines]


def build_vocab(merges):
  byte_chars = list(bytes_to_unicode().values())
  tokens = byte_chars + [c + "</w>" for c in byte_chars]
  tokens += ["".join(m) for m in merges]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  return {t: i for i, t in enumerate(tokens)}


def export(out_dir, n_merges=FULL_MERGES, bpe_path=None):
  bpe_path = bpe_path or os.path.join(REPO, "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
  merges = load_merges(bpe_path, n_merges)
  vocab = build_vocab(merges)
  assert len(vocab) == 512 + len(merges) + 2, "duplicate token in merges"
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n")
    for a, b in merges:
      f.write(f"{a} {b}\n")
  return vocab, merges


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("out_dir")
  ap.add_argument("--merges", type=int, default=FULL_MERGES, help="number of merges to keep")
  ap.add_argument("--bpe", default=None, help="path of bpe_simple_vocab_16e6.txt.gz")
  args = ap.parse_args()
  if not 0 <= args.merges <= FULL_MERGES:
    ap.error(f"--merges must be in [0, {FULL_MERGES}]")
  vocab, merges = export(args.out_dir, args.merges, args.bpe)
  print(f"wrote {args.out_dir}/vocab.json ({len(vocab)} tokens) and merges.txt ({len(merges)} merges)")


if __name__ == "__main__":
  main()
