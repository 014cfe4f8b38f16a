#!/usr/bin/env python3
"""Golden token ids for the tokenizer corpus, from transformers' CLIPTokenizer (the reference).

  python tools/make_tokenizer_goldens.py

Reads tests/fixtures/tokenizer/corpus.b64.gz (tools/make_tokenizer_corpus.py), builds
  * the full CLIP vocabulary from data/clip/bpe_simple_vocab_16e6.txt.gz (tools/export_clip_vocab.py),
  * a reduced one (first 1000 merges) into tests/fixtures/tokenizer/tiny1000/,
  * the config-only folders tests/fixtures/tokenizer/configs/<name>/ (tokenizer_config.json and/or
    special_tokens_map.json; CONFIGS below), used with tiny1000's vocab.json/merges.txt,
and writes tests/fixtures/tokenizer/corpus_goldens.jsonl.gz (gzip, mtime 0): a header line, then one
object per corpus line (same order), with text = bytes.decode("utf-8", "replace") and
  "ids":      CLIPTokenizer(vocab_file, merges_file)(text).input_ids, full vocabulary (= bundled());
  "tiny_ids": the same with tiny1000's files (= from_files());
  "<name>":   CLIPTokenizer.from_pretrained(folder)(text).input_ids (= from_dir()) for each folder in
              the header's "from_pretrained" map (the tiny model tokenizers and the configs above),
              present only where it differs from tiny_ids.
"""
import base64
import gzip
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_clip_vocab  # noqa: E402

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures", "tokenizer")
MODELS = os.path.join(REPO, "tests", "fixtures", "models")
TINY_MERGES = 1000
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _flags(content, normalized, **kw):
  d = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}
  d.update(kw)
  return d


# Config-only tokenizer folders (used with tiny1000's vocab.json and merges.txt).
CONFIGS = {
    # CompVis/stable-diffusion-v1-4 and runwayml/stable-diffusion-v1-5 `tokenizer/` (transformers 4.2x
    # era): BOS/EOS/UNK are AddedTokens with normalized=true, pad a plain string.
    "sd15": {
        "tokenizer_config.json": {
            "add_prefix_space": False, "bos_token": {"__type": "AddedToken", **_flags(BOS, True)},
            "do_lower_case": True, "eos_token": {"__type": "AddedToken", **_flags(EOS, True)}, "errors": "replace",
            "model_max_length": 77, "name_or_path": "openai/clip-vit-large-patch14", "pad_token": EOS,
            "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
            "unk_token": {"__type": "AddedToken", **_flags(EOS, True)}},
        "special_tokens_map.json": {"bos_token": _flags(BOS, True), "eos_token": _flags(EOS, True),
                                    "pad_token": EOS, "unk_token": _flags(EOS, True)},
    },
    # openai/clip-vit-large-patch14 as saved by transformers 4.3x+: added_tokens_decoder, normalized=true.
    "clip_added_tokens_decoder": {
        "tokenizer_config.json": {
            "add_prefix_space": False,
            "added_tokens_decoder": {"1512": _flags(BOS, True, special=True), "1513": _flags(EOS, True, special=True)},
            "bos_token": BOS, "clean_up_tokenization_spaces": True, "do_lower_case": True, "eos_token": EOS,
            "errors": "replace", "model_max_length": 77, "pad_token": EOS, "tokenizer_class": "CLIPTokenizer",
            "unk_token": EOS},
    },
    # Synthetic: every flag, tokens outside the vocabulary, extra and model-specific special tokens.
    "flags": {
        "tokenizer_config.json": {
            "added_tokens_decoder": {
                "1512": _flags(BOS, False, special=True), "1513": _flags(EOS, False, rstrip=True, special=True),
                "2000": _flags("Cat", True, single_word=True), "2001": _flags("<lora>", False, lstrip=True, rstrip=True),
                "2002": _flags("dog", False, lstrip=True), "2003": {"content": "a"}},
            "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": "!",
            "additional_special_tokens": ["BREAK", {"__type": "AddedToken", **_flags("mars", True, single_word=True)}],
            "image_token": "<img>", "tokenizer_class": "CLIPTokenizer"},
    },
    # split_special_tokens: BOS/EOS in the text are ordinary text; legacy special_tokens_map.json only.
    "split_special": {
        "tokenizer_config.json": {"split_special_tokens": True, "tokenizer_class": "CLIPTokenizer"},
        "special_tokens_map.json": {"bos_token": BOS, "eos_token": _flags(EOS, False, lstrip=True),
                                    "pad_token": "<pad>", "unk_token": EOS, "mask_token": _flags("photo", True)},
    },
}


def write_gz(path, data):
  """Byte-stable gzip: no file name, mtime 0."""
  with open(path, "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
      f.write(data)


def read_corpus():
  with gzip.open(os.path.join(FIX, "corpus.b64.gz"), "rt") as f:
    return [base64.b64decode(line.rstrip("\n")) for line in f]


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


def pretrained_folders(tiny_dir):
  """name -> folder for CLIPTokenizer.from_pretrained; the test builds the same folders."""
  folders = {"sd1-tiny": os.path.join(MODELS, "sd1-tiny", "tokenizer"),
             "sd2-tiny": os.path.join(MODELS, "sd2-tiny", "tokenizer")}
  cfg_root = os.path.join(FIX, "configs")
  shutil.rmtree(cfg_root, ignore_errors=True)
  for name, files in CONFIGS.items():
    d = os.path.join(cfg_root, name)
    os.makedirs(d)
    for fname, content in files.items():
      with open(os.path.join(d, fname), "w", encoding="utf-8", newline="\n") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    folders[name] = d
  return folders


def load_pretrained(folder, tiny_dir, tmp):
  """from_pretrained on `folder`, with tiny1000's vocab/merges when the folder has none."""
  if os.path.exists(os.path.join(folder, "vocab.json")):
    return CLIPTokenizer.from_pretrained(folder)
  d = os.path.join(tmp, os.path.basename(folder))
  shutil.copytree(folder, d)
  for fname in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(tiny_dir, fname), d)
  return CLIPTokenizer.from_pretrained(d)


def main():
  items = read_corpus()
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
  folders = pretrained_folders(tiny_dir)
  with tempfile.TemporaryDirectory() as tmp:
    pretrained = {name: load_pretrained(folder, tiny_dir, tmp) for name, folder in folders.items()}
  lines = []
  header = {"reference": f"transformers {transformers.__version__} CLIPTokenizer(vocab_file, merges_file)",
            "tokenizers": tokenizers.__version__, "decode": "utf-8 errors=replace", "items": len(items),
            "from_pretrained": {name: os.path.relpath(folder, REPO) for name, folder in folders.items()},
            "pad_ids": {name: tok.pad_token_id for name, tok in pretrained.items()}}
  lines.append(json.dumps(header))
  differs = dict.fromkeys(pretrained, 0)
  for b in items:
    text = b.decode("utf-8", errors="replace")
    rec = {"ids": full(text).input_ids, "tiny_ids": tiny(text).input_ids}
    for name, tok in pretrained.items():
      ids = tok(text).input_ids
      if ids != rec["tiny_ids"]:
        rec[name] = ids
        differs[name] += 1
    lines.append(json.dumps(rec, separators=(",", ":")))
  out = os.path.join(FIX, "corpus_goldens.jsonl.gz")
  write_gz(out, ("\n".join(lines) + "\n").encode("utf-8"))
  print(f"wrote {len(items)} goldens to {out} ({os.path.getsize(out)} bytes); "
        f"items differing from tiny_ids: {differs}")


if __name__ == "__main__":
  main()
