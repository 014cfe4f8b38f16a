#!/usr/bin/env python3
"""Golden token ids for the tokenizer corpus, from transformers' CLIPTokenizer (the reference).

  python tools/make_tokenizer_goldens.py

Reads tests/fixtures/tokenizer/corpus.b64 (tools/make_tokenizer_corpus.py), builds
  * the full CLIP vocabulary from data/clip/bpe_simple_vocab_16e6.txt.gz (tools/export_clip_vocab.py),
  * a reduced one (first 1000 merges) into tests/fixtures/tokenizer/tiny1000/,
and writes tests/fixtures/tokenizer/corpus_goldens.jsonl: a header line, then one {"ids", "tiny_ids"} line
per corpus line (same order), where
ids = CLIPTokenizer(vocab_file, merges_file)(text).input_ids and text = bytes.decode("utf-8", "replace").
"""
import base64
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_clip_vocab  # noqa: E402

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures", "tokenizer")
TINY_MERGES = 1000


def check_vocab_construction(full_dir):
  """The exported vocabulary must be CLIP's: same as open_clip's SimpleTokenizer and known HF ids."""
  vocab = json.load(open(os.path.join(full_dir, "vocab.json"), encoding="utf-8"))
  assert len(vocab) == 49408
  try:
    from open_clip.tokenizer import SimpleTokenizer
    st = SimpleTokenizer()
    # open_clip names its special tokens <start_of_text>/<end_of_text>; OpenAI CLIP and HF use <|...|>.
    ours = {k: v for k, v in vocab.items() if k not in ("<|startoftext|>", "<|endoftext|>")}
    theirs = {k: v for k, v in st.encoder.items() if k not in ("<start_of_text>", "<end_of_text>")}
    assert ours == theirs, "exported vocab differs from open_clip's SimpleTokenizer.encoder"
    assert st.encoder["<start_of_text>"] == 49406 and st.encoder["<end_of_text>"] == 49407
  except ImportError:
    print("open_clip not installed; skipped SimpleTokenizer comparison", file=sys.stderr)
    st = None
  # Ids published for openai/clip-vit-large-patch14 (vocab.json of the hub repo).
  assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
  assert vocab["!"] == 0 and vocab["a</w>"] == 320 and vocab["photo</w>"] == 1125
  assert vocab["of</w>"] == 539 and vocab["cat</w>"] == 2368
  tok = CLIPTokenizer(os.path.join(full_dir, "vocab.json"), os.path.join(full_dir, "merges.txt"))
  assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
  if st is not None:
    # open_clip cleans text differently (ftfy, html unescape); on plain lowercase ASCII both agree.
    for s in ["a photo of a cat", "an astronaut riding a horse on mars, 8k, highly detailed",
              "it's a dog's life", "masterpiece best quality (cat:1.2)"]:
      assert tok(s).input_ids[1:-1] == st.encode(s), s
  return tok


def main():
  with open(os.path.join(FIX, "corpus.b64")) as f:
    items = [base64.b64decode(line.rstrip("\n")) for line in f]
  with tempfile.TemporaryDirectory() as tmp:
    export_clip_vocab.export(tmp)
    full = check_vocab_construction(tmp)
  tiny_dir = os.path.join(FIX, "tiny1000")
  export_clip_vocab.export(tiny_dir, TINY_MERGES)
  # A pad token other than EOS (as SD 2.x ships), for the from_dir test.
  with open(os.path.join(tiny_dir, "special_tokens_map.json"), "w") as f:
    json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "!"}, f, indent=2)
  tiny = CLIPTokenizer(os.path.join(tiny_dir, "vocab.json"), os.path.join(tiny_dir, "merges.txt"))
  out = os.path.join(FIX, "corpus_goldens.jsonl")
  with open(out, "w") as f:
    header = {"reference": f"transformers {transformers.__version__} CLIPTokenizer(vocab_file, merges_file)",
              "tokenizers": tokenizers.__version__, "decode": "utf-8 errors=replace", "items": len(items)}
    f.write(json.dumps(header) + "\n")
    for b in items:
      text = b.decode("utf-8", errors="replace")
      rec = {"ids": full(text).input_ids, "tiny_ids": tiny(text).input_ids}
      f.write(json.dumps(rec, separators=(",", ":")) + "\n")
  print(f"wrote {len(items)} goldens to {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
  main()
