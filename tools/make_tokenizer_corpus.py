#!/usr/bin/env python3
"""Deterministic tokenizer test corpus: prompts as raw bytes, one base64 item per line, gzipped.

  python tools/make_tokenizer_corpus.py [--out tests/fixtures/tokenizer/corpus.b64.gz]

Items are bytes, not text, so invalid UTF-8 can be stored; everything is drawn from a seeded RNG.
The gzip stream has no file name and mtime 0, so the output is byte-stable.
"""
import argparse
import base64
import gzip
import os
import random
import unicodedata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20240601

WORDS = """a photo of cat dog astronaut riding horse on mars portrait woman man city night cyberpunk
landscape mountains river sunset highly detailed 8k octane render trending artstation masterpiece best
quality ultra realistic cinematic lighting bokeh oil painting by greg rutkowski alphonse mucha studio
ghibli anime girl blue eyes long hair smiling forest fog volumetric light dramatic sky castle dragon
fantasy concept art sharp focus intricate elegant digital illustration watercolor sketch low poly
isometric pixel art steampunk robot spaceship nebula galaxy stars underwater coral reef jellyfish
neon glowing reflections rain wet street umbrella vintage film grain kodak portra 35mm photograph
hdr unreal engine 5 ray tracing subsurface scattering depth of field macro closeup wide angle
worst low jpeg artifacts blurry deformed ugly extra fingers mutated hands bad anatomy watermark text
signature cropped out frame lowres normal quality username error missing limbs""".split()
UPPER_WORDS = ["PHOTO", "Cat", "DSLR", "NASA", "McDonald's", "iPhone", "HDR", "UHD", "ArtStation", "BREAK",
               "AND", "CamelCaseWord", "ÉCOLE", "STRASSE", "İSTANBUL", "ΟΔΥΣΣΕΥΣ", "ΣΊΣΥΦΟΣ", "ДОМ"]
CONTRACTIONS = ["it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "'s", "'t",
                "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "rock'n'roll", "o'clock", "'sup", "''s",
                "it’s", "'", "''", "'d'd'd", "'ll've", "l'amour", "dell'arte"]
A1111 = ["(masterpiece:1.2)", "((best quality))", "[worst quality]", "(cat:0.5)", "[dog:cat:0.5]",
         "[cat|dog]", "BREAK", "\\(escaped\\)", "<lora:add_detail:0.8>", "<lora:x:0.5>",
         "<hypernet:foo:1>", "{a|b|c}", "AND", "(red:1.1) AND (blue:0.9)", "__wildcard__",
         "embedding:EasyNegative", "<lyco:abc:1.0>", "(((((deep)))))", ":3", "\\", "\\\\", "|", "<", ">",
         "[]", "()", "::", "1.5::", "(a:b:c:d)"]
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "<|startoftext|>a",
            "a<|endoftext|>", "<|endoftext|><|endoftext|>", "<|endoftext", "|endoftext|>", "<||>",
            "< |endoftext|>", "<|startoftext|><|endoftext|>", "</w>", "a</w>", "<|endoftext|>s",
            "x<|startoftext|>'s", "<|endo<|endoftext|>ftext|>", "<<|endoftext|>>"]
PUNCT = ["!", "!!", "!!!", "?!", "...", "…", "—", "–", "-", "--", ",", ".", ";", ":", "\"", "“", "”", "«»",
         "#", "##", "@", "$", "%", "^", "&", "*", "~", "`", "_", "+=", "/", "//", "|", "||", "¿", "¡", "§",
         "©", "®", "™", "°", "±", "×", "÷", "€", "£", "¥", "₹", "•", "·", "※", "†", "‡", "¶", "→", "⇒", "∞",
         "≈", "≠", "∑", "√", "∫", "♥", "★", "☆", "♪", "☀", "⚡", "✓", "✔", "❤", "〜", "。", "、", "「」",
         "【】", "！", "？", "（", "）", "：", "～", "=^.^=", "-_-", ">_<", "^_^", "¯\\_(ツ)_/¯"]
NUMBERS = ["1", "42", "2024", "3.14159", "1,000,000", "1e-5", "0x1F", "-7", "+3", "50%", "8k", "4K",
           "1920x1080", "16:9", "v1.5", "sd2.1", "1st", "2nd", "3rd", "١٢٣", "४५६", "一二三", "Ⅻ", "½", "²",
           "³", "①", "⑳", "𝟙𝟚𝟛", "１２３", "௰", "፼", "𐌢"]
HTML = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&copy;", "&amp;amp;",
        "Tom &amp; Jerry", "&lt;3", "5 &gt; 3", "&#128512;", "&unknown;", "&", "&&", "&#", "&#;"]
SCRIPTS = ["こんにちは世界", "東京の夜景", "猫", "桜の木の下で", "カタカナ", "ｶﾀｶﾅ", "漢字テスト", "你好，世界",
           "中文提示词", "山水画", "안녕하세요", "한국어 프롬프트", "가", "ᄒᆞᆫ", "Привет мир", "кот",
           "Ёлка", "Γειά σου Κόσμε", "ΌΣΟΣ", "σοφός", "ς", "Σ", "مرحبا بالعالم", "قطة", "שלום עולם",
           "नमस्ते दुनिया", "बिल्ली", "ক্ষ", "ਪੰਜਾਬੀ", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "සිංහල", "ไทย ภาษา",
           "ລາວ", "မြန်မာ", "ខ្មែរ", "ქართული", "Հայերեն", "አማርኛ", "ᐃᓄᒃᑎᑐᑦ", "ᚠᚢᚦ", "ꦗꦮ", "Tiếng Việt",
           "Türkçe ığüşöç", "İi Iı", "Straße", "STRASSE", "ß", "ẞ", "Ænima", "Œuvre", "ﬁancé", "ﬂower", "ﬀ",
           "ǅungla", "ǈ", "Ǳ", "ŉ", "K", "Å", "Ω", "ℌ", "ℍ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐁𝐨𝐥𝐝", "Ｆｕｌｌｗｉｄｔｈ",
           "ＡＢＣ ａｂｃ", "㍿", "㌀", "ｱｲｳ", "𓀀𓀁", "𐐀𐐨", "𞤀𞤢", "ᏌᏏ", "ꭰ", "Ⓐⓑ", "🅰🅱", "ⅰⅱⅲ", "Ⅰ"]
ACCENTS = ["café", "cafe\u0301", "naïve", "nai\u0308ve", "résumé", "Ångström", "A\u030a", "ñ", "n\u0303",
           "e\u0301\u0301", "o\u0308\u0304", "a\u0323\u0302", "a\u0302\u0323", "q\u0307\u0323", "ṩ",
           "s\u0323\u0307", "s\u0307\u0323", "\u0301", "\u0301a", "x\u0345\u0301", "\u1100\u1161\u11a8",
           "\u1100\u1161", "\uac00\u11a8", "ᄀ\u0301ᅡ", "Z\u0335\u0321a\u0337\u0328l\u0336\u0322g\u0334o\u0338",
           "क्षि", "\u0915\u093c", "\u0958", "\u2126", "\u212b", "\u1e9b\u0323", "\u0344", "\u0f73", "\u0f75",
           "\u0b47\u0b3e", "\u0dd9\u0dcf", "\u3046\u3099", "\u304b\u3099", "\u1b05\u1b35", "\U00011099\U000110ba",
           "\U00011935\U00011930", "\U00011938", "\u07fd", "a\u0898", "\u0340\u0341", "\u0374;", "\u037e\u0387",
           "e\u0300\u0315\u0301", "i\u0307", "I\u0307", "\u0130\u0301"]
EMOJI = ["😀", "😂🤣", "❤️", "👍", "👍🏽", "👋🏿", "🧑‍🚀", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵🇫🇷",
         "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "👩🏻‍❤️‍💋‍👨🏼", "🐱", "🐈‍⬛", "🔥🔥🔥", "✨", "⭐️", "☕", "🎨🖌️", "1️⃣", "#️⃣", "©️",
         "🫠", "🥹", "🪿", "\U0001FAE8", "🤷‍♀️", "💁🏾‍♂️", "🙂\u200d🙃", "\ufe0f", "\u200d"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2003", "\u3000", "\u2028",
          "\u2029", "\u0085", "\u1680", "\u202f", "\u205f", "\u200b", "\ufeff", "\u180e", "\x1c", "\x1d",
          "\x1e", "\x1f", " \t\n ", "\u2000\u2001\u200a"]
CONTROLS = ["\x00", "\x01", "\x07", "\x08", "\x1b[31m", "\x7f", "\x80", "\x9f", "\u00ad", "\u200e", "\u202e",
            "\u2066", "\ue000", "\U000f0000", "\U0010ffff", "\ufffd", "\ufffe", "\uffff", "\U000e0001",
            "\U000e0061", "\u034f", "\u061c"]
INVALID = [b"\xff", b"\xfe\xff", b"\x80", b"\xc0\xaf", b"\xc1\xbf", b"\xc3", b"\xc3(", b"\xe2\x82",
           b"\xe2\x82(", b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf",
           b"\xf0\x9f\x98", b"\xf0\x9f", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80",
           b"\xfc\x84\x80\x80\x80\x80", b"\xc3\xa9\xa9", b"\x80\x80\x80", b"\xed\x9f\xbf", b"\xef\xbb\xbf"]


def rand_codepoint(rng):
  # Mostly assigned characters, biased towards the planes prompts use, plus anything at all.
  r = rng.random()
  if r < 0.5:
    c = rng.randrange(0x80, 0x3000)
  elif r < 0.75:
    c = rng.randrange(0x3000, 0x10000)
  elif r < 0.95:
    c = rng.randrange(0x10000, 0x20000)
  else:
    c = rng.randrange(0x20000, 0x110000)
  if 0xD800 <= c <= 0xDFFF:
    c = 0xFFFD
  return chr(c)


def random_prompt(rng):
  pools = [WORDS] * 8 + [UPPER_WORDS, CONTRACTIONS, A1111, A1111, SPECIALS, PUNCT, PUNCT, NUMBERS, HTML,
                         SCRIPTS, SCRIPTS, ACCENTS, EMOJI, EMOJI]
  n = rng.randint(1, 40)
  parts = []
  for _ in range(n):
    pool = rng.choice(pools)
    s = rng.choice(pool)
    if pool is WORDS and rng.random() < 0.15:
      s = s.upper() if rng.random() < 0.5 else s.capitalize()
    parts.append(s)
  seps = [" ", " ", " ", ", ", ",", "", " ", "\n", "\t", "  ", ". ", " | ", ":"]
  out = parts[0]
  for p in parts[1:]:
    out += rng.choice(seps) + p
  if rng.random() < 0.1:
    out = rng.choice(SPACES) + out + rng.choice(SPACES)
  if rng.random() < 0.05:
    i = rng.randrange(len(out) + 1)
    out = out[:i] + rng.choice(CONTROLS) + out[i:]
  return out.encode("utf-8")


def fixed_items():
  items = [b"", b" ", b"   ", b"\t", b"\n", b"\r\n", b"\t\n \r", " \u3000\u00a0 ".encode()]
  items += [b"a photo of a cat", b"A Photo Of A Cat", b"a photograph of an astronaut riding a horse",
            b"hello world", b"HELLO WORLD", b"hello, world!", b"it's", b"don't stop", b"THEY'RE HERE"]
  for pool in (WORDS, UPPER_WORDS, CONTRACTIONS, A1111, SPECIALS, PUNCT, NUMBERS, HTML, SCRIPTS, ACCENTS,
               EMOJI, SPACES, CONTROLS):
    items += [s.encode("utf-8") for s in pool]
  items += [b"a" + s.encode("utf-8") + b"b" for s in SPACES + CONTROLS]
  items += INVALID
  items += [b"ok " + x + b" ok" for x in INVALID]
  items += ["σ σς ΣΑΣ Σ. ΌΣΟΣ! ς".encode(), "İstanbul'da İ İ̇".encode(), "ß ẞ ss SS".encode(),
            "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ".encode(), "ǅ ǆ Ǆ ǈ ǋ".encode(), "Ｈｅｌｌｏ，ｗｏｒｌｄ！".encode()]
  items += [b"<lora:detail:0.5> (masterpiece:1.2), best quality, [blurry] BREAK a cat sitting on a sofa",
            b"score_9, score_8_up, rating_safe, 1girl, solo, looking at viewer",
            b"a\\(b\\)c \\ \\\\ (a:1.1) (a: 1.1) (a :1.1) [a:b:10] [a:b:0.25] [a|b|c]"]
  return items


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tokenizer", "corpus.b64.gz"))
  args = ap.parse_args()
  rng = random.Random(SEED)
  items = fixed_items()
  for _ in range(1500):
    items.append(random_prompt(rng))
  # Unicode sweeps: random code points from everywhere, with and without spaces and upper case mixed.
  for i in range(300):
    n = rng.randint(1, 60)
    s = "".join(rand_codepoint(rng) + (" " if rng.random() < 0.3 else "") for _ in range(n))
    if i % 3 == 0:
      s = s.upper()
    items.append(s.encode("utf-8"))
  # Random mark soups over base letters (exercise NFC ordering and composition).
  marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0591", "\u05b0", "\u0951", "\u093c", "\u0e48",
                                                   "\u1dc0", "\u20d0", "\u302a", "\u3099", "\u0345", "\u0f71"]
  for _ in range(150):
    s = ""
    for _ in range(rng.randint(1, 12)):
      s += rng.choice("aeiouAEIOUnsczyαωιυЕеИ\u1100\u1161\u11a8\uac00") + "".join(
          rng.choice(marks) for _ in range(rng.randint(0, 4)))
    items.append(s.encode("utf-8"))
  # Random bytes, including invalid UTF-8.
  for _ in range(150):
    n = rng.randint(1, 40)
    b = bytearray()
    for _ in range(n):
      r = rng.random()
      if r < 0.4:
        b += bytes([rng.randrange(0x20, 0x7F)])
      elif r < 0.7:
        b += bytes([rng.randrange(0x80, 0x100)])
      else:
        b += rng.choice(INVALID + [rand_codepoint(rng).encode("utf-8")])
    items.append(bytes(b))
  # Long texts (> 1000 tokens).
  for k in range(4):
    words = [rng.choice(WORDS + SCRIPTS[:10] + PUNCT[:10]) for _ in range(600 + 300 * k)]
    items.append(" ".join(words).encode("utf-8"))
  items.append(("a" * 5000).encode())
  items.append(("😀" * 400).encode())
  items.append(("!" * 3000).encode())
  items.append("supercalifragilisticexpialidocious".encode() * 50)
  text = "".join(base64.b64encode(it).decode("ascii") + "\n" for it in items)
  with open(args.out, "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
      f.write(text.encode("ascii"))
  print(f"wrote {len(items)} items to {args.out}")


if __name__ == "__main__":
  main()
