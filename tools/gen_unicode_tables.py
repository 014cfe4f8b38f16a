#!/usr/bin/env python3
"""Generate src/pipeline/unicode_tables.{h,cc} for the CLIP tokenizer.

The reference tokenizer (transformers 5 CLIPTokenizer = HF `tokenizers`, Rust) takes its Unicode data from
three places, each with its own Unicode version:
  * NFC            -> the `unicode-normalization-alignments` crate (older than Python 3.11's Unicode 14:
                      it lacks e.g. U+11938's decomposition),
  * Lowercase      -> Rust's `char::to_lowercase` (per character; no final-sigma rule; newer Unicode),
  * \\s \\p{L} \\p{N} -> Oniguruma's Unicode tables (used by the normalizer's and pre-tokenizer's regexes).
Python's `unicodedata` matches none of them exactly, so this script *probes the installed `tokenizers`
library itself* for every code point and writes what it does. Python's unicodedata only supplies what
cannot be probed directly (the one-step decomposition of primary composites, canonical combining class
values), and each such value is checked against the probe before use. Finally the NFC algorithm is
re-run in Python over the generated tables and compared with the library on every code point and on
random mark sequences.

  /root/.venvs/sdtools/bin/python tools/gen_unicode_tables.py   (writes into src/pipeline/)
"""
import os
import random
import sys
import unicodedata as ud

import tokenizers
from tokenizers import Regex, normalizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_H = os.path.join(REPO, "src", "pipeline", "unicode_tables.h")
OUT_CC = os.path.join(REPO, "src", "pipeline", "unicode_tables.cc")

SEP = "\x00"  # a starter with no mappings: keeps probes of neighbouring code points independent
CPS = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
SBASE, LBASE, VBASE, TBASE, LCOUNT, VCOUNT, TCOUNT = 0xAC00, 0x1100, 0x1161, 0x11A7, 19, 21, 28
NCOUNT, SCOUNT = VCOUNT * TCOUNT, LCOUNT * VCOUNT * TCOUNT


def per_char(normalizer, prefix="", suffix=""):
  s = SEP.join(prefix + chr(c) + suffix for c in CPS)
  out = normalizer.normalize_str(s).split(SEP)
  assert len(out) == len(CPS), "probe separator got mangled"
  return dict(zip(CPS, out))


def probe_classes():
  # 0 other, 1 letter, 2 number, 3 space; classes probed with the same regex engine (Oniguruma).
  cls = [0] * 0x110000
  allchars = "".join(chr(c) for c in CPS)
  for value, rx in ((1, r"\p{L}"), (2, r"\p{N}"), (3, r"\s")):
    kept = normalizers.Replace(Regex("[^" + rx + "]"), "").normalize_str(allchars)
    for ch in kept:
      assert cls[ord(ch)] == 0, f"U+{ord(ch):04X} in two classes"
      cls[ord(ch)] = value
  return cls


def probe_ccc():
  """Canonical combining classes as the NFC crate sees them.

  U+0345 has the largest class (240). NFD(U+0345 c) swaps the two iff 0 < ccc(c) < 240, and
  NFD(c U+0334) (class 1) swaps iff ccc(c) > 1; that tells the crate's nonzero set. Values come from
  unicodedata and are checked for every nonzero code point by ordering against one mark per class.
  """
  swapped = per_char(normalizers.NFD(), prefix="\u0345")
  nfd1 = per_char(normalizers.NFD())
  ccc = {}
  for c in CPS:
    # Only code points that survive NFD are ever looked up (classes are used after decomposition).
    if nfd1[c] != chr(c):
      continue
    if swapped[c] == chr(c) + "\u0345" and c != 0x345:
      ccc[c] = ud.combining(chr(c))
  ccc[0x345] = 240
  bad = [c for c, v in ccc.items() if v == 0]
  assert not bad, f"crate has nonzero class where unicodedata has 0: {[hex(c) for c in bad]}"
  py_only = [c for c in CPS if ud.combining(chr(c)) and c not in ccc and nfd1[c] == chr(c)]
  # Marks that Python knows but the crate gives class 0 (newer than the crate's Unicode) stay 0.
  # Check values: one representative per class, every mark must order consistently with it.
  reps = {}
  for c, v in sorted(ccc.items()):
    reps.setdefault(v, c)
  nfd = normalizers.NFD()
  for v, rep in reps.items():
    for other_v, other in reps.items():
      out = nfd.normalize_str("a" + chr(rep) + chr(other))
      expect = "a" + "".join(x for _, x in sorted([(v, chr(rep)), (other_v, chr(other))], key=lambda t: t[0]))
      assert out == expect, f"class order mismatch U+{rep:04X}({v}) U+{other:04X}({other_v})"
  for c, v in ccc.items():
    rep = reps[v]
    if rep == c:
      continue
    # Same class as rep: order is kept in both directions; any other class would reorder one of them.
    for a, b in ((rep, c), (c, rep)):
      out = nfd.normalize_str("a" + chr(a) + chr(b))
      assert out[-2:] == nfd.normalize_str(chr(a))[-1:] + nfd.normalize_str(chr(b))[-1:] or \
          out == "a" + nfd.normalize_str(chr(a))[0:] + nfd.normalize_str(chr(b)), f"U+{c:04X} class"
  return ccc, py_only


def nfc_py(s, decomp, ccc, comp):
  """The textbook NFC algorithm over the generated tables (mirrors the C++ code)."""
  d = []
  for ch in s:
    c = ord(ch)
    if SBASE <= c < SBASE + SCOUNT:
      i = c - SBASE
      d += [LBASE + i // NCOUNT, VBASE + (i % NCOUNT) // TCOUNT]
      if i % TCOUNT:
        d.append(TBASE + i % TCOUNT)
    else:
      d += decomp.get(c, [c])
  # canonical ordering (stable sort of each run of non-starters)
  i = 0
  while i < len(d):
    if ccc.get(d[i], 0) == 0:
      i += 1
      continue
    j = i
    while j < len(d) and ccc.get(d[j], 0) != 0:
      j += 1
    d[i:j] = sorted(d[i:j], key=lambda x: ccc[x])
    i = j
  if not d:
    return ""
  out = [d[0]]
  starter = 0 if ccc.get(d[0], 0) == 0 else -1
  last = ccc.get(d[0], 0)
  if last:
    last = 256
  for c in d[1:]:
    cc = ccc.get(c, 0)
    if starter >= 0 and (last < cc or last == 0):
      a = out[starter]
      comp_c = None
      if LBASE <= a < LBASE + LCOUNT and VBASE <= c < VBASE + VCOUNT:
        comp_c = SBASE + ((a - LBASE) * VCOUNT + (c - VBASE)) * TCOUNT
      elif SBASE <= a < SBASE + SCOUNT and (a - SBASE) % TCOUNT == 0 and TBASE < c < TBASE + TCOUNT:
        comp_c = a + (c - TBASE)
      else:
        comp_c = comp.get((a, c))
      if comp_c is not None:
        out[starter] = comp_c
        continue
    if cc == 0:
      starter = len(out)
    last = cc
    out.append(c)
  return "".join(chr(c) for c in out)


def runs(values, default):
  """[(start, value)] change points over 0..0x10FFFF; the first run starts at 0."""
  res = []
  prev = None
  for c in range(0x110000):
    v = values(c) if not 0xD800 <= c <= 0xDFFF else default
    if v != prev:
      res.append((c, v))
      prev = v
  return res


def fmt_array(decl, items, per_line=8):
  lines = [decl + " = {"]
  for i in range(0, len(items), per_line):
    lines.append("    " + ", ".join(items[i:i + per_line]) + ",")
  lines.append("};")
  return "\n".join(lines)


def main():
  print(f"tokenizers {tokenizers.__version__}, unicodedata {ud.unidata_version}", file=sys.stderr)
  cls = probe_classes()
  low = per_char(normalizers.Lowercase())
  nfd = per_char(normalizers.NFD())
  nfc = per_char(normalizers.NFC())
  ccc, py_only = probe_ccc()
  print("marks only in unicodedata:", " ".join(f"{c:04X}" for c in py_only[:12]), "...", file=sys.stderr)

  # Full canonical decompositions (Hangul syllables are algorithmic and left out).
  decomp = {}
  for c in CPS:
    if SBASE <= c < SBASE + SCOUNT:
      continue
    if nfd[c] != chr(c):
      decomp[c] = [ord(x) for x in nfd[c]]
  # Primary composites: decompose, yet NFC keeps them. Their pair is the one-step canonical mapping.
  comp = {}
  for c in decomp:
    if nfc[c] != chr(c):
      continue
    parts = ud.decomposition(chr(c)).split()
    assert parts and not parts[0].startswith("<") and len(parts) == 2, f"U+{c:04X}: {parts}"
    a, b = int(parts[0], 16), int(parts[1], 16)
    comp[(a, b)] = c

  # Check the algorithm + tables against the library.
  bad = [c for c in CPS if nfc_py(chr(c), decomp, ccc, comp) != nfc[c]]
  bad += [c for c in comp.values() if nfc_py(nfd[c], decomp, ccc, comp) != normalizers.NFC().normalize_str(nfd[c])]
  assert not bad, f"NFC mismatch at {[hex(c) for c in bad[:10]]}"
  rng = random.Random(1234)
  marks = sorted(ccc) + py_only + [0x301, 0x308, 0x323, 0x327, 0x1161, 0x11A8, 0x3099]
  bases = [0x41, 0x61, 0x45, 0x55, 0x1100, 0xAC00, 0x3046, 0x928, 0x1B05, 0x11131, 0x1E0A]
  samples = []
  for _ in range(20000):
    n = rng.randint(1, 6)
    samples.append("".join(chr(rng.choice(bases) if rng.random() < 0.3 else rng.choice(marks)) for _ in range(n)))
  got = normalizers.NFC().normalize_str(SEP.join(samples)).split(SEP)
  bad = [s for s, g in zip(samples, got) if nfc_py(s, decomp, ccc, comp) != g]
  assert not bad, f"NFC mismatch on random sequences, e.g. {[hex(ord(x)) for x in bad[0]]}"

  lower_single, lower_multi = [], []
  for c in CPS:
    l = low[c]
    if l == chr(c):
      continue
    if len(l) == 1:
      lower_single.append((c, ord(l)))
    else:
      lower_multi.append((c, [ord(x) for x in l]))
  assert len(lower_multi) < 16 and all(len(m) <= 3 for _, m in lower_multi)

  class_runs = runs(lambda c: cls[c], 0)
  ccc_runs = runs(lambda c: ccc.get(c, 0), 0)

  pool = []
  decomp_entries = []
  for c in sorted(decomp):
    d = decomp[c]
    assert len(d) < 16
    decomp_entries.append((c, len(pool), len(d)))
    pool += d
  assert len(pool) < (1 << 16)

  print(f"classes: {len(class_runs)} runs; ccc: {len(ccc_runs)} runs ({len(ccc)} marks; "
        f"{len(py_only)} marks only in unicodedata); lowercase: {len(lower_single)}+{len(lower_multi)}; "
        f"decompositions: {len(decomp)} (pool {len(pool)}); compositions: {len(comp)}", file=sys.stderr)

  h = f"""// Generated by tools/gen_unicode_tables.py from tokenizers {tokenizers.__version__}; do not edit.
// Unicode data exactly as HF `tokenizers` uses it for CLIP (see docs/TOKENIZER.md).
#pragma once
#include <cstddef>
#include <cstdint>

namespace sdserve::unicode_tables {{

enum CharClass : uint8_t {{ kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 }};

// Run tables: entry = (first_code_point << 8) | value; a run lasts until the next entry.
extern const uint32_t kClassRuns[];
extern const size_t kClassRunsSize;
extern const uint32_t kCccRuns[];
extern const size_t kCccRunsSize;

// Lowercase: sorted (code point, lowercase) pairs; kLowerMulti rows are (code point, n, c0, c1, c2).
extern const uint32_t kLowerSingle[][2];
extern const size_t kLowerSingleSize;
extern const uint32_t kLowerMulti[][5];
extern const size_t kLowerMultiSize;

// Full canonical decompositions (no Hangul): rows (code point, offset into kDecompPool, length).
extern const uint32_t kDecomp[][3];
extern const size_t kDecompSize;
extern const uint32_t kDecompPool[];

// Canonical compositions of primary composites: sorted rows (first, second, composite).
extern const uint32_t kCompose[][3];
extern const size_t kComposeSize;

}}  // namespace sdserve::unicode_tables
"""
  parts = [f"// Generated by tools/gen_unicode_tables.py from tokenizers {tokenizers.__version__}; do not edit.",
           '#include "pipeline/unicode_tables.h"', "", "namespace sdserve::unicode_tables {", ""]
  parts.append(fmt_array("const uint32_t kClassRuns[]", [f"0x{(c << 8) | v:x}" for c, v in class_runs]))
  parts.append(f"const size_t kClassRunsSize = {len(class_runs)};\n")
  parts.append(fmt_array("const uint32_t kCccRuns[]", [f"0x{(c << 8) | v:x}" for c, v in ccc_runs]))
  parts.append(f"const size_t kCccRunsSize = {len(ccc_runs)};\n")
  parts.append(fmt_array("const uint32_t kLowerSingle[][2]", [f"{{0x{a:x}, 0x{b:x}}}" for a, b in lower_single], 6))
  parts.append(f"const size_t kLowerSingleSize = {len(lower_single)};\n")
  rows = []
  for c, m in lower_multi:
    m3 = m + [0] * (3 - len(m))
    rows.append(f"{{0x{c:x}, {len(m)}, 0x{m3[0]:x}, 0x{m3[1]:x}, 0x{m3[2]:x}}}")
  parts.append(fmt_array("const uint32_t kLowerMulti[][5]", rows, 3))
  parts.append(f"const size_t kLowerMultiSize = {len(lower_multi)};\n")
  parts.append(fmt_array("const uint32_t kDecomp[][3]", [f"{{0x{c:x}, {o}, {n}}}" for c, o, n in decomp_entries], 5))
  parts.append(f"const size_t kDecompSize = {len(decomp_entries)};\n")
  parts.append(fmt_array("const uint32_t kDecompPool[]", [f"0x{c:x}" for c in pool], 10))
  parts.append("")
  parts.append(fmt_array("const uint32_t kCompose[][3]",
                         [f"{{0x{a:x}, 0x{b:x}, 0x{c:x}}}" for (a, b), c in sorted(comp.items())], 4))
  parts.append(f"const size_t kComposeSize = {len(comp)};\n")
  parts.append("}  // namespace sdserve::unicode_tables\n")
  with open(OUT_H, "w") as f:
    f.write(h)
  with open(OUT_CC, "w") as f:
    f.write("\n".join(parts))
  print(f"wrote {OUT_H} and {OUT_CC}", file=sys.stderr)


if __name__ == "__main__":
  main()
