"""`sdserve upscale` end to end: the PNG it writes matches spandrel's output (goldens from
tools/make_upscaler_fixtures.py) within 1/255, tiling and --scale work, and bad input is one error
line with a non-zero exit."""
import pytest

from conftest import FIXTURES, decode_png, one_error_line, read_safetensors

UPSCALERS = FIXTURES / "upscalers"
INPUT = UPSCALERS / "input.png"


@pytest.fixture(scope="module")
def goldens():
    tensors, _meta = read_safetensors(UPSCALERS / "golden.safetensors")
    return tensors


@pytest.mark.parametrize("model, golden", [
    ("compact-x4.safetensors", "compact-x4"),
    ("esrgan-x4-old.safetensors", "esrgan-x4-old"),
    ("rrdb-x2-realesrgan.safetensors", "rrdb-x2-realesrgan"),
    ("compact-x4.pth", "compact-x4"),
])
def test_upscale_matches_spandrel(run, tmp_path, goldens, model, golden):
    out = tmp_path / "out.png"
    p = run("upscale", "--upscaler", UPSCALERS / model, INPUT, out)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stderr.decode()
    dtype, shape, want = goldens[golden]
    w, h, ch, got, _text = decode_png(out)
    assert dtype == "U8" and (h, w, ch) == shape
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= 1, f"{model}: max |diff| {worst}/255"


def test_upscale_tiled_and_scaled(run, tmp_path, goldens):
    out = tmp_path / "tiled.png"
    p = run("upscale", "--upscaler", UPSCALERS / "rrdb-x4-basicsr.safetensors", "--tile", "12",
            "--tile-overlap", "4", INPUT, out)
    assert p.returncode == 0, p.stderr
    w, h, ch, _got, _ = decode_png(out)
    assert (w, h, ch) == (100, 76, 3)
    # --scale other than the model's: the network, then Lanczos to int(25 * 1.5) x int(19 * 1.5).
    out = tmp_path / "scaled.png"
    p = run("upscale", "--upscaler", UPSCALERS / "esrgan-x2-old.safetensors", "--scale", "1.5", INPUT, out)
    assert p.returncode == 0, p.stderr
    w, h, _ch, _got, _ = decode_png(out)
    assert (w, h) == (37, 28)


def test_upscale_bad_input(run, tmp_path):
    model = UPSCALERS / "compact-x4.safetensors"
    out = tmp_path / "out.png"
    not_image = tmp_path / "not_image.png"
    not_image.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(model.read_bytes()[:2000])
    cases = [
        (["--upscaler", model, tmp_path / "missing.png", out], 3, "missing.png"),
        (["--upscaler", model, not_image, out], 2, "not_image.png"),
        (["--upscaler", tmp_path / "none.safetensors", INPUT, out], 3, "none.safetensors"),
        (["--upscaler", truncated, INPUT, out], 4, "truncated.safetensors"),
        (["--upscaler", FIXTURES / "models" / "sd1-tiny.safetensors", INPUT, out], 5, "RRDBNet"),
        (["--upscaler", model, "--tile", "8", "--tile-overlap", "8", INPUT, out], 2, "--tile-overlap"),
        (["--upscaler", model, "--scale", "-2", INPUT, out], 2, "--scale"),
        (["--upscaler", model, INPUT, tmp_path / "out.jpg"], 2, ".png"),
        (["--upscaler", model, INPUT], 2, "OUT"),
    ]
    for args, code, needle in cases:
        p = run("upscale", *args)
        line = one_error_line(p)
        assert p.returncode == code, (args, line)
        assert needle in line, (args, line)
    assert not out.exists()


def test_model_free_upscalers_and_names(run, tmp_path):
    """Lanczos/Nearest need no model (A1111's: Image.resize by the scale); models are found by name
    in --upscaler-dir."""
    from conftest import decode_png
    src = FIXTURES / "upscalers" / "input.png"
    out = tmp_path / "out.png"
    p = run("upscale", "--upscaler", "Lanczos", "--scale", "2", src, out)
    assert p.returncode == 0, p.stderr
    w0, h0, _, _, _ = decode_png(src)
    w, h, _, _, _ = decode_png(out)
    assert (w, h) == (w0 * 2, h0 * 2)
    p = run("upscale", "--upscaler", "Nearest", "--scale", "1.5", src, out)
    assert p.returncode == 0, p.stderr
    assert decode_png(out)[:2] == (int(w0 * 1.5), int(h0 * 1.5))
    p = run("upscale", "--upscaler", "compact-x4", "--upscaler-dir", FIXTURES / "upscalers", src, out)
    assert p.returncode == 0, p.stderr
    assert decode_png(out)[:2] == (w0 * 4, h0 * 4)
    p = run("upscale", "--upscaler", "Lanczos", src, out)
    assert p.returncode == 2 and "--scale" in p.stderr.decode()
    p = run("upscale", "--upscaler", "Lanczos", "--scale", "1000", src, out)
    assert p.returncode == 2 and "16384" in p.stderr.decode()
