"""`sdserve serve --models-dir`: models listed (A1111 sd-models and GET /v1/models), switched at run
time (A1111 options, POST /v1/models/load, a job's `model`, A1111 override_settings), each model's
image equal to the CLI's for it; a model that cannot load fails its switch cleanly and the server
keeps serving; LRU eviction under --models-memory-mb; names are never paths."""
import hashlib
import os
import shutil

import pytest

from conftest import FIXTURES
from test_server import assert_error, pixels, server  # noqa: F401 (fixture)

MODELS = FIXTURES / "models"


@pytest.fixture
def models_dir(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    os.symlink(MODELS / "sd1-tiny", d / "sd1-tiny")
    shutil.copytree(MODELS / "sd2-tiny", d / "sd2-tiny")
    # A single file that opens but does not load with the default options (tiny head counts).
    shutil.copy(MODELS / "sd1-tiny.safetensors", d / "sd1-single.safetensors")
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    (d / "notes.txt").write_text("not a model")
    return d


BODY = {"prompt": "a small house by a lake", "negative_prompt": "blurry", "width": 32, "height": 32, "steps": 3,
        "seed": 42, "sampler": "Euler", "cfg_scale": 6}


def cli_image(run, tmp_path, model):
    out = tmp_path / f"cli-{model}.png"
    p = run("generate", "--model", MODELS / model, "--prompt", BODY["prompt"], "--negative-prompt",
            BODY["negative_prompt"], "--width", 32, "--height", 32, "--steps", 3, "--seed", 42, "--sampler", "Euler",
            "--cfg-scale", 6, "--rng", "cpu", "--output", out)
    assert p.returncode == 0, p.stderr
    return pixels(out.read_bytes(), tmp_path)[3]


def job_pixels(s, tmp_path, body):
    status, j = s.json("POST", "/v1/jobs", body)
    assert status == 202, j
    j = s.wait_job(j["id"])
    assert j["status"] == "succeeded", j
    return pixels(s.request("GET", j["images"][0])[2], tmp_path)[3], j


def metric(s, name):
    for line in s.request("GET", "/metrics")[2].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def test_list_switch_and_images_per_model(server, models_dir, run, tmp_path):
    s = server("--models-dir", models_dir, "--model", "sd1-tiny", model=None)
    assert any("skipped a model" in line and "corrupt.safetensors" in line for line in s.log), s.log
    # A1111's list: every usable entry, with hashes of single files.
    status, listed = s.json("GET", "/sdapi/v1/sd-models")
    assert status == 200
    by_name = {m["model_name"]: m for m in listed}
    assert set(by_name) == {"sd1-single", "sd1-tiny", "sd2-tiny"}, listed
    sha = hashlib.sha256((models_dir / "sd1-single.safetensors").read_bytes()).hexdigest()
    assert by_name["sd1-single"]["sha256"] == sha and by_name["sd1-single"]["hash"] == sha[:10]
    assert by_name["sd1-single"]["title"] == f"sd1-single [{sha[:10]}]"
    assert by_name["sd1-tiny"]["title"] == "sd1-tiny" and by_name["sd1-tiny"]["hash"] is None
    assert set(by_name["sd1-tiny"]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    status, native = s.json("GET", "/v1/models")
    assert native["current"] == "sd1-tiny" and native["loaded"] == ["sd1-tiny"]
    assert {m["name"]: m["family"] for m in native["models"]} == {"sd1-single": "SD1.x", "sd1-tiny": "SD1.x",
                                                                   "sd2-tiny": "SD2.x"}
    assert s.json("GET", "/sdapi/v1/options")[1]["sd_model_checkpoint"] == "sd1-tiny"

    want1, want2 = cli_image(run, tmp_path, "sd1-tiny"), cli_image(run, tmp_path, "sd2-tiny")
    assert want1 != want2
    got1, j1 = job_pixels(s, tmp_path, BODY)
    assert got1 == want1 and "Model: sd1-tiny" in j1["infotexts"][0]
    # A job that names another model; the current one stays.
    got2, j2 = job_pixels(s, tmp_path, dict(BODY, model="sd2-tiny"))
    assert got2 == want2 and "Model: sd2-tiny" in j2["infotexts"][0]
    assert s.json("GET", "/v1/models")[1]["current"] == "sd1-tiny"
    # A1111's override_settings.
    got2b, _ = job_pixels(s, tmp_path, dict(BODY, override_settings={"sd_model_checkpoint": "sd2-tiny"}))
    assert got2b == want2
    # Switching through A1111's options, then the native route.
    status, body = s.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "sd2-tiny"})
    assert status == 200, body
    assert s.json("GET", "/sdapi/v1/options")[1]["sd_model_checkpoint"] == "sd2-tiny"
    assert job_pixels(s, tmp_path, BODY)[0] == want2
    status, body = s.json("POST", "/v1/models/load", {"name": "sd1-tiny"})
    assert status == 200 and body["current"] == "sd1-tiny", body
    assert job_pixels(s, tmp_path, BODY)[0] == want1
    # Default budget: one model in memory at a time.
    assert metric(s, "sdserve_models_loaded") == 1
    assert metric(s, "sdserve_model_evictions_total") == 2  # sd1 out for sd2, then sd2 out for sd1


def test_bad_models_and_names_fail_cleanly(server, models_dir, tmp_path):
    s = server("--models-dir", models_dir, "--model", "sd1-tiny", model=None)
    # A file that the scan skipped: the reason is given.
    status, body = s.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "corrupt"})
    assert status in (400, 422) and set(body) == {"error", "detail"} and "corrupt" in body["detail"], body
    # Path-like names are refused; names outside the folder are not found.
    for name in ("../sd1-tiny", "/etc/passwd", "sub/sd1-tiny", "..", "sd1-tiny\\x"):
        assert_error(*s.json("POST", "/v1/models/load", {"name": name}), 400, "not paths")
    assert_error(*s.json("POST", "/v1/models/load", {"name": "nope"}), 404, "sd2-tiny")
    assert_error(*s.json("POST", "/v1/jobs", dict(BODY, model="../sd2-tiny")), 400, "not paths")
    # A file that is listed but fails to load: the switch fails, the previous model stays usable.
    s.json("POST", "/v1/models/load", {"name": "sd1-tiny"})
    status, body = s.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "sd1-single"})
    assert status >= 400 and set(body) == {"error", "detail"} and body["detail"], body
    assert s.request("GET", "/health")[0] == 200
    assert s.json("GET", "/v1/models")[1]["current"] == "sd1-tiny"
    assert job_pixels(s, tmp_path, BODY)[1]["status"] == "succeeded"
    # A job naming it fails with the reason; the server goes on.
    status, j = s.json("POST", "/v1/jobs", dict(BODY, model="sd1-single"))
    assert status == 202
    j = s.wait_job(j["id"])
    assert j["status"] == "failed" and j["error"]["detail"], j
    assert job_pixels(s, tmp_path, BODY)[1]["status"] == "succeeded"
    assert metric(s, "sdserve_model_load_failures_total") >= 2


def test_lru_eviction_within_the_memory_budget(server, models_dir, tmp_path):
    # Both tiny models fit in 64 MiB: both stay loaded.
    s = server("--models-dir", models_dir, "--model", "sd1-tiny", "--models-memory-mb", "64", model=None)
    job_pixels(s, tmp_path, dict(BODY, model="sd2-tiny"))
    assert metric(s, "sdserve_models_loaded") == 2
    assert s.json("GET", "/v1/models")[1]["loaded"] == ["sd2-tiny", "sd1-tiny"]  # most recent first
    assert metric(s, "sdserve_model_evictions_total") == 0
    # 1 MiB holds one of them: the least recently used goes.
    t = server("--models-dir", models_dir, "--model", "sd1-tiny", "--models-memory-mb", "1", model=None)
    job_pixels(t, tmp_path, dict(BODY, model="sd2-tiny"))
    assert metric(t, "sdserve_models_loaded") == 1
    assert t.json("GET", "/v1/models")[1]["loaded"] == ["sd2-tiny"]
    assert metric(t, "sdserve_model_evictions_total") == 1
    assert any("model evicted" in line and "sd1-tiny" in line for line in t.log), t.log
