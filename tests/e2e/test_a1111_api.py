"""A1111's /sdapi/v1 API through the `webuiapi` client from PyPI (pinned in requirements-test.txt),
unchanged: the same calls scripts written for A1111 make."""
import threading
import time

import pytest
import webuiapi  # requirements-test.txt

from conftest import read_safetensors
from test_server import FIXTURES, GOLDEN, LORAS, ServerProcess

IMG2IMG_GOLDEN = FIXTURES / "golden" / "img2img" / "sd1-tiny.safetensors"


@pytest.fixture
def a1111(sdserve_bin):
    s = ServerProcess(sdserve_bin, "--lora-dir", LORAS, "--api-key", "webui-pass-123")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port, username="user", password="webui-pass-123")
    yield s, api
    s.stop()


def test_txt2img_matches_diffusers_and_reads_back(a1111):
    s, api = a1111
    tensors, meta = read_safetensors(GOLDEN)
    r = api.txt2img(prompt=meta["prompt"], negative_prompt=meta["negative_prompt"], seed=int(meta["seed"]),
                    steps=int(meta["steps"]), cfg_scale=float(meta["cfg"]), width=int(meta["width"]),
                    height=int(meta["height"]), sampler_name="Euler", scheduler="automatic")
    assert len(r.images) == 1
    img = r.images[0].convert("RGB")
    assert img.size == (int(meta["width"]), int(meta["height"]))
    want = tensors["Euler|Automatic"][2]
    assert max(abs(a - b) for a, b in zip(img.tobytes(), want)) <= 2
    assert isinstance(r.info, dict) and r.info["all_seeds"] == [1234] and "Seed: 1234" in r.info["infotexts"][0]
    assert r.parameters["prompt"] == meta["prompt"]
    # png-info on what came back
    info = api.png_info(r.images[0])
    assert "Seed: 1234" in info.info and info.json["parameters"]["Seed"] == "1234", info.json
    assert info.json["parameters"]["Prompt"] == meta["prompt"] and info.json["parameters"]["Size-1"] == meta["width"]


def test_batches_loras_and_lists(a1111):
    s, api = a1111
    r = api.txt2img(prompt="a cat <lora:a_kohya:0.5>", seed=5, steps=2, width=32, height=32, batch_size=2, n_iter=2)
    assert len(r.images) == 4 and r.info["all_seeds"] == [5, 6, 7, 8]
    assert "Lora hashes" in r.info["infotexts"][0]
    names = {x["name"] for x in api.get_loras()}
    assert {"a_kohya", "b_peft", "loha", "lokr"} <= names
    samplers = api.util_get_sampler_names()
    assert "Euler a" in samplers and "DPM++ 2M" in samplers
    assert "karras" in api.util_get_scheduler_names()
    models = api.get_sd_models()
    assert models and models[0]["model_name"] == "sd1-tiny"
    assert api.util_get_current_model() == models[0]["title"]
    api.util_set_model("sd1-tiny")  # the loaded model: accepted
    assert api.get_options()["sd_model_checkpoint"] == models[0]["title"]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert api.get_memory()["ram"]["total"] > 0
    assert api.refresh_checkpoints() is None
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0


def test_interrupt_and_errors(a1111):
    s, api = a1111
    out = {}

    def long_job():
        try:
            api.txt2img(prompt="long", steps=150, width=128, height=128)
        except RuntimeError as e:
            out["error"] = e.args

    t = threading.Thread(target=long_job)
    t.start()
    deadline = time.time() + 60
    while api.get_progress()["state"]["sampling_step"] < 1:
        assert time.time() < deadline
        time.sleep(0.02)
    assert api.get_progress()["progress"] > 0
    assert api.interrupt() == {}
    t.join(60)
    assert out["error"][0] == 409, out
    with pytest.raises(RuntimeError) as e:
        api.txt2img(prompt="x", sampler_name="Bogus")
    assert e.value.args[0] == 400 and "Euler a" in e.value.args[1]
    with pytest.raises(RuntimeError) as e:
        api.img2img(images=[], prompt="x")
    assert e.value.args[0] == 400 and "init_images" in e.value.args[1]
    bad = webuiapi.WebUIApi(host="127.0.0.1", port=s.port, username="user", password="wrong-pass-000")
    with pytest.raises(RuntimeError) as e:
        bad.txt2img(prompt="x", steps=1)
    assert e.value.args[0] == 401


def test_img2img_and_inpaint_match_diffusers(a1111):
    """img2img matches diffusers' pipeline; inpaint matches it inside the mask and keeps the original
    outside it (A1111's overlay)."""
    from PIL import Image
    s, api = a1111
    tensors, meta = read_safetensors(IMG2IMG_GOLDEN)
    w, h = int(meta["width"]), int(meta["height"])
    init = Image.frombytes("RGB", (w, h), tensors["init"][2])
    mask = Image.frombytes("L", (w, h), tensors["mask"][2])
    common = dict(prompt=meta["prompt"], negative_prompt=meta["negative_prompt"], seed=int(meta["seed"]),
                  steps=int(meta["steps"]), cfg_scale=float(meta["cfg"]), width=w, height=h)
    r = api.img2img(images=[init], denoising_strength=0.6, sampler_name="Euler a", **common)
    got = r.images[0].convert("RGB").tobytes()
    assert max(abs(a - b) for a, b in zip(got, tensors["img2img|Euler a|Automatic|0.6|1"][2])) <= 2
    assert r.info["denoising_strength"] == 0.6 and "Denoising strength: 0.6" in r.info["infotexts"][0]
    r = api.img2img(images=[init], mask_image=mask, mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
                    denoising_strength=0.7, sampler_name="DPM++ 2M", **common)
    got = r.images[0].convert("RGB").tobytes()
    want, orig, m = tensors["inpaint|DPM++ 2M|Automatic|0.7|1"][2], tensors["init"][2], tensors["mask"][2]
    assert max(abs(got[i] - want[i]) for i in range(len(got)) if m[i // 3] >= 128) <= 2
    assert all(got[i] == orig[i] for i in range(len(got)) if m[i // 3] == 0)
    assert "Mask blur: 0" in r.info["infotexts"][0] and "Denoising strength: 0.7" in r.info["infotexts"][0]
    # webuiapi's defaults: only masked (padding 0) with "fill"; the result has the init image's size.
    r = api.img2img(images=[init], mask_image=mask, prompt="x", steps=2, width=16, height=16)
    assert r.images[0].size == (w, h)
    assert "Mask blur: 4" in r.info["infotexts"][0]  # A1111's default, written as A1111 writes it
    r = api.img2img(images=[init], prompt="x", steps=2, width=16, height=16)
    assert "Mask blur" not in r.info["infotexts"][0]  # no mask
    # Hires fix through txt2img.
    r = api.txt2img(prompt="x", steps=2, width=16, height=16, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                    denoising_strength=0.5, hr_second_pass_steps=2)
    assert r.images[0].size == (32, 32) and "Hires upscale: 2" in r.info["infotexts"][0]
