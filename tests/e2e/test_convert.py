"""`sdserve convert IN.pth OUT.safetensors`: PyTorch checkpoints to safetensors, never running pickle code."""
import os

from conftest import FIXTURES, one_error_line, read_safetensors

TORCH = FIXTURES / "torch"
MARKER = "/tmp/sdserve-torch-hostile-marker"  # what the hostile fixtures would write if executed


def test_help_lists_convert(run):
    p = run("--help")
    assert p.returncode == 0
    assert "convert" in p.stdout.decode()


def test_convert_matches_torch(run, tmp_path):
    for name in ("esrgan_params_ema.pth", "dtypes.pth", "views.pth", "legacy.pth", "lightning.ckpt",
                 "embedding_a1111.pt", "deflated.pth", "zip64.pth"):
        out = tmp_path / (name + ".safetensors")
        p = run("convert", TORCH / name, out)
        assert p.returncode == 0, p.stderr
        got, meta = read_safetensors(out)
        want, _ = read_safetensors(TORCH / (name.rsplit(".", 1)[0] + ".expected.safetensors"))
        assert got == want, name
        assert meta == {}
        assert f"{len(want)} tensors" in p.stderr.decode()
    got, _ = read_safetensors(tmp_path / "esrgan_params_ema.pth.safetensors")
    assert "params_ema.conv_first.weight" in got


def test_convert_reports_skipped_dtypes(run, tmp_path):
    p = run("convert", TORCH / "v3_dtypes.pt", tmp_path / "v3.safetensors")
    assert p.returncode == 0, p.stderr
    assert "skipped 1 tensors" in p.stderr.decode()
    got, _ = read_safetensors(tmp_path / "v3.safetensors")
    assert "c64" not in got and got["u16"][0] == "U16"


def test_hostile_checkpoint_is_refused_and_never_runs(run, tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    for name in ("hostile_reduce.pth", "hostile_raw.pkl", "hostile_eval.pt"):
        out = tmp_path / "out.safetensors"
        p = run("convert", TORCH / name, out)
        line = one_error_line(p)
        assert p.returncode == 5, line
        assert "refusing to load global" in line and name in line
        assert not out.exists()
    assert not os.path.exists(MARKER)


def test_corrupt_and_missing_inputs(run, tmp_path):
    for name in ("truncated.pth", "legacy_truncated.pth"):
        p = run("convert", TORCH / name, tmp_path / "out.safetensors")
        line = one_error_line(p)
        assert p.returncode == 4 and name in line, line
    p = run("convert", tmp_path / "missing.pth", tmp_path / "out.safetensors")
    one_error_line(p)
    assert p.returncode == 3
    p = run("convert", TORCH / "dtypes.pth")
    assert p.returncode == 2
