"""`sdserve generate` end to end: the PNG it writes matches diffusers' image (goldens from
tools/make_txt2img_goldens.py) within 2/255, carries A1111 parameters, and bad input fails fast."""
import pytest

from conftest import FIXTURES, decode_png, one_error_line, read_safetensors

MODELS = FIXTURES / "models"
GOLDEN = FIXTURES / "golden" / "txt2img"
LORA = FIXTURES / "lora"
LORA_GOLDEN = FIXTURES / "golden" / "lora"
CASES = ["Euler a|Automatic", "DPM++ 2M|Karras", "DDIM|Automatic", "UniPC|SGM Uniform"]


def generate_args(model, out, meta, sampler="Euler", schedule="Automatic", **over):
    args = {"--model": MODELS / model, "--prompt": meta["prompt"], "--negative-prompt": meta["negative_prompt"],
            "--steps": meta["steps"], "--cfg-scale": meta["cfg"], "--seed": meta["seed"], "--rng": "cpu",
            "--width": meta["width"], "--height": meta["height"], "--sampler": sampler, "--scheduler": schedule,
            "--output": out}
    args.update(over)
    return ["generate"] + [x for kv in args.items() for x in kv]


@pytest.mark.parametrize("model", ["sd1-tiny", "sd2-tiny", "odd-tiny"])
@pytest.mark.parametrize("case", CASES)
def test_generate_matches_diffusers(run, tmp_path, model, case):
    tensors, meta = read_safetensors(GOLDEN / f"{model}.safetensors")
    dtype, shape, want = tensors[case]
    assert dtype == "U8" and len(shape) == 3
    sampler, schedule = case.split("|")
    out = tmp_path / "out.png"
    p = run(*generate_args(model, out, meta, sampler, schedule))
    assert p.returncode == 0, p.stderr
    w, h, ch, got, text = decode_png(out)
    assert (h, w, ch) == shape
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= 2, f"{model} {case}: max |diff| {worst}/255"
    params = text["parameters"]
    assert "Steps: 5" in params and f"Sampler: {sampler}" in params and "Seed: 1234" in params, params
    if schedule != "Automatic":
        assert schedule in params, params


@pytest.mark.parametrize("over, needle", [
    ({"--width": "33"}, "width"),
    ({"--steps": "0"}, "steps"),
    ({"--sampler": "Bogus"}, "DPM++ 2M"),  # the message lists the valid names
    ({"--prediction-type": "sample"}, "v_prediction"),
    ({"--scheduler-config": "/no/such/scheduler_config.json"}, "scheduler config not found"),
    ({"--prompt": "a cat <lora:film:0.8>"}, "--lora-dir"),  # a tag needs a LoRA folder
    ({"--prompt": "a cat <lora:film:0.8>", "--lora-dir": LORA / "sd1-tiny"}, "available in"),
    ({"--prompt": "a cat <lora:film:abc>"}, "not a number"),
    ({"--lora-dir": "/no/such/loras"}, "LoRA directory not found"),
    ({"--lora": "/no/such/lora.safetensors:0.5"}, "no file /no/such/lora.safetensors"),
    ({"--lora": LORA / "sd2-tiny" / "a_kohya.safetensors"}, "does not fit"),  # SD2 LoRA on an SD1 model
    ({"--lora": MODELS / "sd1-tiny" / "unet" / "config.json"}, "config.json"),  # not a safetensors file
    ({"--device": "cuda:3"}, "cuda:3"),
    ({"--dtype": "int8"}, "int8"),
    ({"--embeddings-dir": "/no/such/embeddings"}, "embeddings directory not found"),
])
def test_generate_bad_input(run, tmp_path, over, needle):
    _, meta = read_safetensors(GOLDEN / "sd1-tiny.safetensors")
    out = tmp_path / "out.png"
    line = one_error_line(run(*generate_args("sd1-tiny", out, meta, **over)))
    assert needle in line, line
    if "--sampler" in over:
        for name in ("Euler a", "DDIM", "UniPC"):
            assert name in line, line
    assert not out.exists()


@pytest.mark.parametrize("golden, lora_args, tags", [
    ("a", ["--lora", "a_peft.safetensors"], ""),
    ("a", [], " <lora:a_kohya:1>"),
    ("a0.7+b0.4", ["--lora", "a_kohya.safetensors:0.7", "--lora", "b_peft.safetensors:0.4"], ""),
    ("a0.7+b0.4", ["--lora", "b_kohya.safetensors:0.4"], " <lora:a_peft:0.7>"),
    ("loha0.8", [], " <lora:loha:0.8>"),
    ("lokr0.8", ["--lora", "lokr.safetensors:0.8"], ""),
])
def test_generate_with_loras_matches_reference(run, tmp_path, golden, lora_args, tags):
    """--lora PATH[:WEIGHT] and <lora:NAME:WEIGHT> tags with --lora-dir: the image matches diffusers'
    load_lora_weights + set_adapters (LoHa/LoKr: tools/make_lora_fixtures.py's reference merge)."""
    tensors, meta = read_safetensors(LORA_GOLDEN / "sd1-tiny.safetensors")
    want = tensors[golden][2]
    folder = LORA / "sd1-tiny"
    extra = [str(folder / a) if a.endswith((".safetensors", ":0.7", ":0.4", ":0.8")) else a for a in lora_args]
    out = tmp_path / "out.png"
    p = run(*(generate_args("sd1-tiny", out, meta, **{"--prompt": meta["prompt"] + tags, "--lora-dir": folder})
              + extra))
    assert p.returncode == 0, p.stderr
    _, _, _, got, text = decode_png(out)
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= 2, f"{golden}: max |diff| {worst}/255"
    # A1111 infotext: every network as a tag in the prompt (--lora files too) and its short hash.
    params = text["parameters"]
    prompt, rest = params.split("\n", 1)
    stems = [a.split("/")[-1].split(".safetensors")[0] for a in extra if a != "--lora"] + \
            [t.split(":")[1] for t in tags.split()]
    assert "Lora hashes: " in rest, params
    for stem in stems:
        assert f"<lora:{stem}:" in prompt, params
        assert f"{stem}: " in rest.split("Lora hashes: ")[1], params


def test_generate_missing_model(run, tmp_path):
    _, meta = read_safetensors(GOLDEN / "sd1-tiny.safetensors")
    out = tmp_path / "out.png"
    line = one_error_line(run(*generate_args("no-such-model", out, meta)))
    assert "no-such-model" in line, line
    assert not out.exists()


def test_generate_vae_tiling(run, tmp_path):
    """--vae-tiling decodes in overlapping tiles (diffusers enable_tiling; the VAE-level parity is
    in test_unet_vae.cc): same image size, slightly different pixels than the untiled decode."""
    _, meta = read_safetensors(GOLDEN / "sd1-tiny.safetensors")
    size = {"--width": "128", "--height": "96", "--steps": "2"}  # latents 16x12 > the tiny VAE's 8-latent tile
    plain, tiled = tmp_path / "plain.png", tmp_path / "tiled.png"
    p = run(*generate_args("sd1-tiny", plain, meta, **size))
    assert p.returncode == 0, p.stderr
    p = run(*(generate_args("sd1-tiny", tiled, meta, **size) + ["--vae-tiling"]))
    assert p.returncode == 0, p.stderr
    w0, h0, _, a, _ = decode_png(plain)
    w1, h1, _, b, _ = decode_png(tiled)
    assert (w0, h0) == (w1, h1)
    assert a != b, "--vae-tiling had no effect"


def test_generate_prediction_type_override(run, tmp_path):
    """--prediction-type overrides the model's scheduler config (sd2-tiny is v-prediction)."""
    tensors, meta = read_safetensors(GOLDEN / "sd2-tiny.safetensors")
    want = tensors["Euler|Automatic"][2]
    for pred, same in (("v_prediction", True), ("epsilon", False)):
        out = tmp_path / f"{pred}.png"
        p = run(*(generate_args("sd2-tiny", out, meta) + ["--prediction-type", pred]))
        assert p.returncode == 0, p.stderr
        got = decode_png(out)[3]
        worst = max(abs(a - b) for a, b in zip(got, want))
        assert (worst <= 2) == same, f"{pred}: max |diff| {worst}"


def test_generate_long_weighted_prompt(run, tmp_path):
    """A1111 prompt syntax end to end: weights, BREAK and a prompt far past 77 tokens."""
    _, meta = read_safetensors(GOLDEN / "sd1-tiny.safetensors")
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    p = run(*generate_args("sd1-tiny", short, meta, **{"--prompt": "a (red:1.3) horse"}))
    assert p.returncode == 0, p.stderr
    text = ", ".join(["a (red:1.3) horse BREAK [blue] sky"] + ["tree house"] * 60)
    p = run(*generate_args("sd1-tiny", long, meta, **{"--prompt": text}))
    assert p.returncode == 0, p.stderr
    assert decode_png(short)[3] != decode_png(long)[3]


def test_generate_textual_inversion(run, tmp_path):
    """An embedding named in the prompt (--embeddings-dir) changes the image; unknown names are text."""
    _, meta = read_safetensors(GOLDEN / "sd1-tiny.safetensors")
    emb = str(FIXTURES / "embeddings" / "sd1-tiny")
    plain, with_emb = tmp_path / "plain.png", tmp_path / "emb.png"
    p = run(*generate_args("sd1-tiny", plain, meta, **{"--prompt": "a tinystyle horse"}))
    assert p.returncode == 0, p.stderr
    p = run(*(generate_args("sd1-tiny", with_emb, meta, **{"--prompt": "a tinystyle horse"}) + ["--embeddings-dir", emb]))
    assert p.returncode == 0, p.stderr
    assert decode_png(plain)[3] != decode_png(with_emb)[3]
