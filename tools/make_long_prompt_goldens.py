#!/usr/bin/env python3
"""Golden prompt embeddings for A1111's long-prompt method, for tests/unit/test_long_prompt.cc.

The reference below follows AUTOMATIC1111/stable-diffusion-webui (v1.10)
modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWordsBase with its default options
(emphasis "Original", comma_padding_backtrack 20), written out here with transformers' CLIP:

  1. parse_prompt_attention (tools/make_prompt_goldens.py, itself A1111's parser);
  2. each parsed piece is tokenized on its own, without BOS/EOS;
  3. tokens go into chunks of 75; a BREAK piece closes the chunk; when a chunk is full and a
     comma came within its last 20 tokens, the tokens after that comma move to the next chunk;
  4. every chunk is padded to 75, wrapped as [BOS] + 75 + [EOS] (multiplier 1 for all three
     kinds of filler) and every position after its first EOS is set to the tokenizer's pad id
     (A1111: id_end for OpenAI CLIP, 0 for OpenCLIP; the tiny models' tokenizers say the same);
  5. each chunk goes through the text encoder (last_hidden_state, as diffusers' pipeline uses
     it); z *= multipliers; z *= mean(z before) / mean(z after) (means in float64 here);
  6. the chunks are concatenated along the token axis.

Writes tests/fixtures/golden/prompt/long_<model>.safetensors: "cond_<i>" float32 [1, 77*k, D]
for each case i; metadata "cases" = JSON [{"prompt", "chunks", "kappa": [per chunk]}] and the model name.
Needs torch and transformers (tools/setup_venv.sh).  Run: python tools/make_long_prompt_goldens.py
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_prompt_goldens as mpg  # noqa: E402
import st_io  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "tests" / "fixtures" / "models"
OUT = REPO / "tests" / "fixtures" / "golden" / "prompt"
CHUNK = 75
BACKTRACK = 20


def chunks_for(tok: CLIPTokenizer, prompt: str, embeddings: dict | None = None):
    """A1111's tokenize_line. `embeddings`: name -> [n, D] tensor (textual inversion); returns
    chunks of (ids, multipliers, fixes) with fixes = [(offset in the chunk's tokens, name)]."""
    embeddings = embeddings or {}
    lookup = {}  # first token id -> [(name ids, name)], longest first (A1111's ids_lookup)
    for name in embeddings:
        ids = tok([name], add_special_tokens=False)["input_ids"][0]
        lookup.setdefault(ids[0], []).append((ids, name))
    for v in lookup.values():
        v.sort(key=lambda x: len(x[0]), reverse=True)
    parsed = mpg.parse_prompt_attention(prompt)
    tokenized = tok([t for t, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    comma = tok.get_vocab().get(",</w>")
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    chunks, cur_t, cur_m, cur_f = [], [], [], []
    state = {"last_comma": -1, "count": 0}

    def next_chunk(is_last=False):
        nonlocal cur_t, cur_m, cur_f
        state["count"] += len(cur_t) if is_last else CHUNK
        ids = [bos] + cur_t + [eos] * (CHUNK - len(cur_t)) + [eos]
        mult = [1.0] + cur_m + [1.0] * (CHUNK - len(cur_m)) + [1.0]
        first_eos = ids.index(eos)
        ids = ids[: first_eos + 1] + [pad] * (len(ids) - first_eos - 1)
        chunks.append((ids, mult, cur_f))
        state["last_comma"] = -1
        cur_t, cur_m, cur_f = [], [], []

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        pos = 0
        while pos < len(tokens):
            t = tokens[pos]
            if t == comma:
                state["last_comma"] = len(cur_t)
            elif (len(cur_t) == CHUNK and state["last_comma"] != -1
                  and len(cur_t) - state["last_comma"] <= BACKTRACK):
                cut = state["last_comma"] + 1
                rt, rm = cur_t[cut:], cur_m[cut:]
                # A1111 leaves the fixes of the moved tokens behind (their vectors then land in
                # the old chunk's padding); they move with their tokens here, as in sdserve.
                rf = [(o - cut, n) for o, n in cur_f if o >= cut]
                kf = [(o, n) for o, n in cur_f if o < cut]
                cur_t, cur_m, cur_f = cur_t[:cut], cur_m[:cut], kf
                next_chunk()
                cur_t, cur_m, cur_f = rt, rm, rf
            if len(cur_t) == CHUNK:
                next_chunk()
            match = None
            for ids, name in lookup.get(t, []):
                if tokens[pos:pos + len(ids)] == ids:
                    match = (ids, name)
                    break
            if match is None:
                cur_t.append(t)
                cur_m.append(float(weight))
                pos += 1
                continue
            n_vec = embeddings[match[1]].shape[0]
            if len(cur_t) + n_vec > CHUNK:
                next_chunk()
            cur_f.append((len(cur_t), match[1]))
            cur_t += [0] * n_vec
            cur_m += [float(weight)] * n_vec
            pos += len(match[0])
    if cur_t or not chunks:
        next_chunk(is_last=True)
    return chunks, state["count"]


class EmbeddingsWithFixes(torch.nn.Module):
    """A1111's EmbeddingsWithFixes: token-embedding rows replaced by textual-inversion vectors."""

    def __init__(self, wrapped: torch.nn.Embedding):
        super().__init__()
        self.wrapped = wrapped
        self.fixes = []  # [(offset, vectors)] for batch row 0; offset excludes BOS

    def forward(self, input_ids):
        x = self.wrapped(input_ids)
        for offset, vec in self.fixes:
            n = min(x.shape[1] - offset - 1, vec.shape[0])
            x = torch.cat([x[:, :offset + 1], vec[:n].unsqueeze(0).to(x.dtype), x[:, offset + 1 + n:]], dim=1)
        return x


@torch.no_grad()
def encode(model: CLIPTextModel, chunks, embeddings: dict | None = None):
    """The conditioning, and per chunk the condition number of the emphasis rescale:
    kappa = mean |z * m| / |mean(z * m)|. The rescale divides by that mean, so where it is near
    zero (kappa large: the tiny random models have chunks with kappa ~ 1e4) float32 rounding in
    any implementation is amplified ~kappa times; test_long_prompt.cc widens its tolerance by it."""
    zs, kappas = [], []
    emb = model.text_model.embeddings if hasattr(model, "text_model") else model.embeddings
    if not isinstance(emb.token_embedding, EmbeddingsWithFixes):
        emb.token_embedding = EmbeddingsWithFixes(emb.token_embedding)
    for ids, mult, fixes in chunks:
        emb.token_embedding.fixes = [(o, embeddings[n]) for o, n in fixes]
        z = model(torch.tensor([ids])).last_hidden_state
        m = torch.tensor([mult], dtype=torch.float32)
        # A1111 takes both means in the model's dtype; here in float64, the exact value of the
        # same formula.
        before = z.double().mean()
        z = z * m.reshape(m.shape + (1,)).expand(z.shape)
        after = z.double().mean()
        kappas.append(float(z.double().abs().mean() / after.abs()))
        zs.append(z * (before / after).float())
    return torch.hstack(zs), kappas


def words_for(tok: CLIPTokenizer, n_tokens: int, rng: random.Random, weights: bool, breaks: bool, commas: bool):
    """A prompt of exactly n_tokens tokens once parsed (whole words of the tiny vocabulary are one
    token each, a comma is one more; brackets, weights and BREAK add none)."""
    vocab = sorted(w[:-4] for w in tok.get_vocab() if w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha() and len(w) > 6)
    parts, count = [], 0
    while count < n_tokens:
        w = rng.choice(vocab)
        r = rng.random()
        if weights and r < 0.15:
            w = f"({w}:{rng.choice(['0.5', '1.3', '1.1', '2'])})"
        elif weights and r < 0.22:
            w = f"[{w}]"
        elif weights and r < 0.28:
            w = f"(({w}))"
        count += 1
        if commas and count < n_tokens and rng.random() < 0.2:
            w += ","
            count += 1
        if breaks and rng.random() < 0.01:
            w += " BREAK"
        parts.append(w)
    prompt = " ".join(parts)
    parsed = mpg.parse_prompt_attention(prompt)
    got = sum(len(t) for t in tok([p for p, w in parsed if not (p == "BREAK" and w == -1)],
                                  add_special_tokens=False)["input_ids"])
    assert got == n_tokens, (got, n_tokens, prompt)
    return prompt


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("sd1-tiny", "sd2-tiny"):
        tok = CLIPTokenizer.from_pretrained(MODELS / name / "tokenizer")
        model = CLIPTextModel.from_pretrained(MODELS / name / "text_encoder").eval()
        rng = random.Random(20261126)
        prompts = ["", "a photograph of an astronaut riding a horse",
                   "a (red:1.3) car, [blurry] ((sharp)) BREAK second chunk", "BREAK", "x BREAK BREAK y"]
        for n in (10, 76, 77, 150, 400):
            prompts.append(words_for(tok, n, rng, weights=False, breaks=False, commas=n >= 150))
            prompts.append(words_for(tok, n, rng, weights=True, breaks=n >= 150, commas=True))
        for _ in range(4):  # fresh random configurations, not tuned on
            prompts.append(words_for(tok, rng.randint(20, 260), rng, weights=True, breaks=rng.random() < 0.5,
                                     commas=rng.random() < 0.7))
        tensors, cases = {}, []
        for i, p in enumerate(prompts):
            chunks, _ = chunks_for(tok, p)
            cond, kappas = encode(model, chunks, {})
            tensors[f"cond_{i}"] = cond.contiguous()
            cases.append({"prompt": p, "chunks": len(chunks), "kappa": kappas})
            print(f"{name} case {i}: {len(chunks)} chunks")
        path = OUT / f"long_{name}.safetensors"
        st_io.save_file_sorted(tensors, path, metadata={"model": name, "cases": json.dumps(cases)})
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    main_ti()


def make_embeddings(name: str, hidden: int) -> dict:
    """Textual-inversion fixtures in tests/fixtures/embeddings/<model>/ (seeded random vectors):
    'tinystyle' (emb_params, 3 vectors), 'hero' (a lone clip_l-style key, 1 vector) and
    'wideone' (clip_l/clip_g of another width, which the model must skip)."""
    from safetensors.torch import save_file
    d = REPO / "tests" / "fixtures" / "embeddings" / name
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(77)
    style = torch.randn(3, hidden, generator=g)
    hero = torch.randn(1, hidden, generator=g)
    save_file({"emb_params": style}, d / "tinystyle.safetensors")
    save_file({"clip_l": hero}, d / "hero.safetensors")
    save_file({"clip_l": torch.randn(2, hidden + 8, generator=g), "clip_g": torch.randn(2, hidden + 16, generator=g)},
              d / "wideone.safetensors")
    return {"tinystyle": style, "hero": hero}


def main_ti():
    name = "sd1-tiny"
    tok = CLIPTokenizer.from_pretrained(MODELS / name / "tokenizer")
    model = CLIPTextModel.from_pretrained(MODELS / name / "text_encoder").eval()
    embeddings = make_embeddings(name, model.config.hidden_size)
    filler = " ".join(["photo"] * 73)
    prompts = ["a tinystyle horse", "(tinystyle:1.3) hero, [hero] BREAK tinystyle", "tinystylehero hero hero",
               filler + " tinystyle", filler + ", hero tinystyle horse", "wideone horse", "a horse"]
    tensors, cases = {}, []
    for i, p in enumerate(prompts):
        chunks, _ = chunks_for(tok, p, embeddings)
        cond, kappas = encode(model, chunks, embeddings)
        tensors[f"cond_{i}"] = cond.contiguous()
        cases.append({"prompt": p, "chunks": len(chunks), "kappa": kappas,
                      "fixes": sum(len(c[2]) for c in chunks)})
        print(f"ti case {i}: {len(chunks)} chunks, {cases[-1]['fixes']} embedding insertions")
    path = OUT / f"ti_{name}.safetensors"
    st_io.save_file_sorted(tensors, path, metadata={"model": name, "cases": json.dumps(cases)})
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
