"""The public CLI contract: `inspect`, `tokenize`, errors as one line and a non-zero exit."""
import json
import os

from conftest import FIXTURES, one_error_line, write_safetensors

MODELS = FIXTURES / "models"


def test_help_lists_subcommands(run):
    p = run("--help")
    assert p.returncode == 0
    out = p.stdout.decode()
    for sub in ("inspect", "tokenize", "encode", "serve"):
        assert sub in out


def test_unknown_flag_is_one_line(run):
    line = one_error_line(run("inspect", "--bogus"))
    assert "--help" in line


def test_inspect_diffusers_and_single_file(run, tmp_path):
    # An inpainting checkpoint is told apart by its UNet's 9 input channels.
    inpaint_file = tmp_path / "sd1-tiny-inpaint.safetensors"
    write_safetensors(inpaint_file, {
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ("F16", (8, 4)),
        "model.diffusion_model.input_blocks.0.0.weight": ("F16", (8, 9, 3, 3)),
        "first_stage_model.decoder.conv_in.weight": ("F16", (8, 4, 3, 3)),
    })
    expect = {
        "sd1-tiny": ("SD1.x", "diffusers", False),
        "sd1-tiny.safetensors": ("SD1.x", "single-file", False),
        "sd2-tiny": ("SD2.x", "diffusers", False),
        "sd2-tiny.safetensors": ("SD2.x", "single-file", False),
        "odd-tiny": ("SD1.x", "diffusers", False),
        "odd-tiny.safetensors": ("SD1.x", "single-file", False),
        "sd1-tiny-inpaint.safetensors": ("SD1.x", "single-file", True),
    }
    counts = {}
    for name, (family, layout, inpaint) in expect.items():
        path = inpaint_file if name == inpaint_file.name else MODELS / name
        p = run("inspect", "--json", path)
        assert p.returncode == 0, p.stderr
        info = json.loads(p.stdout)
        assert (info["family"], info["layout"], info["inpaint"]) == (family, layout, inpaint), name
        assert info["tensors"] > 0
        assert {"text_encoder", "unet", "vae"} <= set(info["components"]), name
        counts[name] = info["tensors"]
        human = run("inspect", path).stdout.decode()
        assert f"family:     {family}" in human and f"tensors:    {info['tensors']}" in human


def test_inspect_missing_file(run, tmp_path):
    line = one_error_line(run("inspect", tmp_path / "nope.safetensors"))
    assert "nope.safetensors" in line


def test_inspect_refuses_pickle(run, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")
    p = run("inspect", ckpt)
    line = one_error_line(p)
    assert "safetensors" in line and "model.ckpt" in line


def test_inspect_corrupt_file(run, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((100).to_bytes(8, "little") + b'{"a": ')
    line = one_error_line(run("inspect", bad))
    assert "bad.safetensors" in line


def test_inspect_truncated_checkpoint(run, tmp_path):
    data = (MODELS / "sd1-tiny.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    line = one_error_line(run("inspect", cut))
    assert "cut.safetensors" in line


def test_serve_needs_a_model_and_a_free_port(run, tmp_path):
    """`serve` itself is tested in test_server.py; here its argument errors are one line."""
    # Without --model, serve takes the default hub model from the cache; offline with an empty cache that
    # is one line that points at --model demo (test_pull.py covers the pull itself).
    saved = {k: os.environ.pop(k, None) for k in ("SDSERVE_MODEL", "HF_HUB_OFFLINE", "SDSERVE_CACHE_DIR")}
    os.environ.update(HF_HUB_OFFLINE="1", SDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    try:
        p = run("serve")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    assert p.returncode == 3 and "--model demo" in one_error_line(p), p.stderr
    p = run("serve", "--model", tmp_path / "m", "--queue-size", "0")
    assert p.returncode == 2 and "--queue-size" in p.stderr.decode(), p.stderr
    p = run("serve", "--model", tmp_path / "m", "--api-key", "short")
    assert p.returncode == 2 and "API keys" in p.stderr.decode(), p.stderr
