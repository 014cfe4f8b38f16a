#!/usr/bin/env python3
"""Golden outputs of A1111's prompt attention parser, for tests/unit/test_prompt.cc.

The reference below follows AUTOMATIC1111/stable-diffusion-webui modules/prompt_parser.py
`parse_prompt_attention` (v1.10): the same token regex, bracket stacks, multipliers, BREAK
split and merging of equal-weight runs. One deliberate difference: a weighted close such as
"(a:1.2.3)" whose number float() rejects makes A1111 raise ValueError (the request fails);
here, as in sdserve, that token is kept as literal text.

Writes tests/fixtures/golden/prompt/attention.json: [{"text": ..., "want": [[text, weight], ...]}].
Needs only the Python standard library.  Run: python3 tools/make_prompt_goldens.py
"""
from __future__ import annotations

import json
import pathlib
import random
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "golden" / "prompt" / "attention.json"

re_attention = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        tok = m.group(0)
        weight = m.group(1)
        number = None
        if weight is not None:
            try:
                number = float(weight)
            except ValueError:
                number = None
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_brackets.append(len(res))
        elif tok == "[":
            square_brackets.append(len(res))
        elif number is not None and round_brackets:
            multiply_range(round_brackets.pop(), number)
        elif tok == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif tok == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(re.split(re_break, tok)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


HAND = [
    "", "normal text", "an (important) word", "a (more (important)) word", "a [less] important word",
    "(((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "a (cat:1.5) in the garden", "\\(literal\\) \\[x\\] \\\\",
    "a BREAK b", "aBREAK b", "a BREAKb", "BREAK", " BREAK ", "a\nBREAK\tb", "(a BREAK b:1.3)", "unbalanced (open",
    "unbalanced close)", "unbalanced [open", "close]", "((a)", "(a:1.2", "a:1.2)", "(a:1.2.3)", "(a:.)", "(a: 1.5 )",
    "(a:-1)", "(a:+2)", "(a:1.)", "(a:.5)", "[a:1.2]", "(a:1.2:1.3)", "\\", "a\\", "\\a", "((((((((((x))))))))))",
    "[[[[[[y]]]]]]", "(a[b]c)", "[(a)b]", "(a)(b)", "<lora:name:0.8> a photo", "émoji 🐱 (ünïcödé:1.1)",
    "BREAKBREAK", "a BREAK BREAK b", "a\u00a0BREAK\u00a0b", "x_BREAK_y", "1BREAK2", "::", "(:)", "(:1)", "()", "[]",
]

ALPHABET = ["(", ")", "[", "]", ":", "\\", " ", "a", "b", "cat", "1", "0.5", "1.2", ".", "-", "+", "BREAK", "\n",
            "é", "🐱", "_", ",", "<lora:x:0.5>", "\t", ":1.3)", "(("]


def main() -> None:
    rng = random.Random(20261126)
    cases = list(HAND)
    for _ in range(600):
        n = rng.randint(1, 24)
        cases.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    out = [{"text": t, "want": parse_prompt_attention(t)} for t in cases]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(out)} cases, {OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
