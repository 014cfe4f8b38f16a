"""The rest of the HTTP surface: A1111's extras (upscaling) routes, native upscale jobs, image output
formats, live latent previews in the event stream, the OpenAI-style /v1/images/generations route and
/openapi.json. Upscales through HTTP are compared with `sdserve upscale` on the same input, pixel for
pixel."""
import base64
import http.client
import io
import json
import pathlib
import re
import time

import pytest
import webuiapi  # requirements-test.txt
from PIL import Image  # webuiapi depends on Pillow

from conftest import FIXTURES, ROOT, decode_png, png_bytes
from test_server import ServerProcess

UPSCALERS = FIXTURES / "upscalers"
INPUT = UPSCALERS / "input.png"  # 25 x 19 RGB


@pytest.fixture(scope="module")
def srv(sdserve_bin):
    s = ServerProcess(sdserve_bin, "--upscaler-dir", UPSCALERS)
    yield s
    s.stop()


def b64(path_or_bytes):
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else pathlib.Path(path_or_bytes).read_bytes()
    return base64.b64encode(raw).decode()


def png_pixels(raw, tmp_path, name="x.png"):
    p = tmp_path / name
    p.write_bytes(raw)
    return decode_png(p)


def cli_upscale(run, tmp_path, upscaler, scale):
    out = tmp_path / f"cli-{upscaler}-{scale}.png"
    p = run("upscale", "--upscaler", upscaler, "--upscaler-dir", UPSCALERS, "--scale", scale, INPUT, out)
    assert p.returncode == 0, p.stderr
    return decode_png(out)


@pytest.mark.parametrize("upscaler, scale", [("Lanczos", 2), ("Nearest", 1.5), ("compact-x4", 4),
                                             ("esrgan-x2-old", 1.5), ("rrdb-x4-basicsr", 2)])
def test_extra_single_image_equals_cli(srv, run, tmp_path, upscaler, scale):
    status, r = srv.json("POST", "/sdapi/v1/extra-single-image",
                         {"image": b64(INPUT), "upscaler_1": upscaler, "upscaling_resize": scale})
    assert status == 200, r
    assert set(r) == {"html_info", "image"} and not r["image"].startswith("data:")
    w, h, ch, got, text = png_pixels(base64.b64decode(r["image"]), tmp_path)
    cw, chh, cch, want, _ = cli_upscale(run, tmp_path, upscaler, scale)
    assert (w, h, ch) == (cw, chh, cch) == (int(25 * scale), int(19 * scale), 3)
    assert got == want, f"{upscaler}: HTTP and CLI pixels differ"
    assert text["postprocessing"] == f"Postprocess upscale by: {float(scale)}, Postprocess upscaler: {upscaler}"
    assert r["html_info"] == "<p>" + text["postprocessing"] + "</p>"


def test_webuiapi_extras_unchanged(srv, tmp_path):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
    src = Image.open(INPUT)
    r = api.extra_single_image(image=src, upscaler_1="Lanczos", upscaling_resize=2)
    assert r.image.size == (50, 38) and "Postprocess upscaler: Lanczos" in r.info
    # upscaler_1 "None" (A1111's default): the image as it was
    r = api.extra_single_image(image=src)
    assert r.image.size == (25, 19) and r.image.convert("RGB").tobytes() == src.convert("RGB").tobytes()
    # batch, with A1111's names
    r = api.extra_batch_images(images=[src, src.resize((10, 8))], upscaler_1="Nearest", upscaling_resize=3)
    assert [im.size for im in r.images] == [(75, 57), (30, 24)]
    # resize to a size, cropped: by max(40/25, 40/19), then centred on 40 x 40
    r = api.extra_single_image(image=src, resize_mode=1, upscaling_resize_w=40, upscaling_resize_h=40,
                               upscaler_1="Lanczos")
    assert r.image.size == (40, 40)
    full = api.extra_single_image(image=src, resize_mode=1, upscaling_resize_w=40, upscaling_resize_h=40,
                                  upscaling_crop=False, upscaler_1="Lanczos").image
    assert full.size == (52, 40)
    assert r.image.tobytes() == full.crop((6, 0, 46, 40)).tobytes()
    # two upscalers blended as PIL's Image.blend
    a = api.extra_single_image(image=src, upscaler_1="Lanczos", upscaling_resize=2).image.convert("RGB")
    b = api.extra_single_image(image=src, upscaler_1="Nearest", upscaling_resize=2).image.convert("RGB")
    r = api.extra_single_image(image=src, upscaler_1="Lanczos", upscaler_2="Nearest",
                               extras_upscaler_2_visibility=0.3, upscaling_resize=2)
    assert r.image.convert("RGB").tobytes() == Image.blend(a, b, 0.3).tobytes()
    assert "Postprocess upscaler 2: Nearest" in r.info
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "compact-x4" in names


def test_extras_keeps_the_input_text_and_accepts_data_uris(srv, tmp_path):
    status, r = srv.json("POST", "/v1/jobs", {"prompt": "x", "steps": 1, "width": 16, "height": 16, "seed": 3})
    assert status == 202
    srv.wait_job(r["id"])
    _, _, png = srv.request("GET", f"/v1/jobs/{r['id']}/images/0")
    status, r = srv.json("POST", "/sdapi/v1/extra-single-image",
                         {"image": "data:image/png;base64," + b64(png), "upscaler_1": "Nearest"})
    assert status == 200, r
    _, _, _, _, text = png_pixels(base64.b64decode(r["image"]), tmp_path)
    assert "Seed: 3" in text["parameters"] and "Postprocess upscaler: Nearest" in text["postprocessing"]


def test_extras_errors(srv):
    cases = [
        ({"image": "not base64 !!", "upscaler_1": "Lanczos"}, 400, "image"),
        ({"upscaler_1": "Lanczos"}, 400, "image"),
        ({"image": b64(INPUT), "upscaler_1": "4x-Nope"}, 404, "compact-x4"),
        ({"image": b64(INPUT), "upscaler_1": "../models/x"}, 404, "Lanczos"),
        ({"image": b64(INPUT), "upscaler_1": "Lanczos", "upscaler_2": "Nope",
          "extras_upscaler_2_visibility": 0.5}, 404, "upscaler_2"),
        ({"image": b64(INPUT), "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 9000,
          "upscaling_resize_h": 10}, 400, "max-image"),
        ({"image": b64(INPUT), "upscaler_1": "Lanczos", "upscaling_resize": 100}, 400, "upscaling_resize"),
        ({"image": b64(INPUT), "upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, 422, "gfpgan_visibility"),
        ({"image": b64(INPUT), "upscaler_1": "Lanczos", "codeformer_visibility": 1}, 422, "codeformer_visibility"),
        ({"image": b64(png_bytes(1, 1, 3, b"\0\0\0", ihdr_size=(20000, 20000))), "upscaler_1": "Lanczos"}, 400,
         "image"),
    ]
    for body, code, needle in cases:
        status, r = srv.json("POST", "/sdapi/v1/extra-single-image", body)
        assert status == code, (body.get("upscaler_1"), r)
        assert set(r) == {"error", "detail"} and needle in r["detail"], r
    status, r = srv.json("POST", "/sdapi/v1/extra-batch-images", {"upscaler_1": "Lanczos"})
    assert status == 400 and "imageList" in r["detail"]


def test_upscale_caps(sdserve_bin):
    """Output over --max-image-side is 400 before anything runs; so is a network whose intermediate
    image would pass 4x the pixel cap (x4 twice for a 5x target)."""
    s = ServerProcess(sdserve_bin, "--upscaler-dir", UPSCALERS, "--max-image-side", "256",
                      "--max-image-pixels", "20000")
    try:
        status, r = s.json("POST", "/sdapi/v1/extra-single-image",
                           {"image": b64(INPUT), "upscaler_1": "Lanczos", "upscaling_resize": 11})
        assert status == 400 and "256" in r["detail"], r
        status, r = s.json("POST", "/sdapi/v1/extra-single-image",
                           {"image": b64(INPUT), "upscaler_1": "compact-x4", "upscaling_resize": 5})
        assert status == 400 and "on the way" in r["detail"], r
        status, r = s.json("POST", "/sdapi/v1/extra-single-image",
                           {"image": b64(INPUT), "upscaler_1": "compact-x4", "upscaling_resize": 4})
        assert status == 200, r
    finally:
        s.stop()


def test_native_upscale_job_and_formats(srv, run, tmp_path):
    status, r = srv.json("POST", "/v1/jobs", {"type": "upscale", "image": b64(INPUT), "upscaler": "compact-x4",
                                              "scale": 4, "output_format": "webp", "quality": 90})
    assert status == 202, r
    j = srv.wait_job(r["id"])
    assert j["status"] == "succeeded" and j["type"] == "upscale" and j["output_format"] == "webp", j
    assert j["images"] == [f"/v1/jobs/{r['id']}/images/0"]
    # the job's default format
    status, hdrs, raw = srv.request("GET", j["images"][0])
    assert status == 200 and hdrs["Content-Type"] == "image/webp" and raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    assert Image.open(io.BytesIO(raw)).size == (100, 76)
    # ?format= wins; the PNG is the CLI's image exactly
    status, hdrs, raw = srv.request("GET", j["images"][0] + "?format=png")
    assert status == 200 and hdrs["Content-Type"] == "image/png"
    _, _, _, want, _ = cli_upscale(run, tmp_path, "compact-x4", 4)
    assert png_pixels(raw, tmp_path)[3] == want
    # Accept
    status, hdrs, raw = srv.request("GET", j["images"][0], headers={"Accept": "image/jpeg"})
    assert status == 200 and hdrs["Content-Type"] == "image/jpeg" and raw[:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(raw)).size == (100, 76)
    status, r2 = srv.json("GET", j["images"][0] + "?format=gif")
    assert status == 400 and "format" in r2["detail"]
    status, r2 = srv.json("GET", j["images"][0] + "?format=jpeg&quality=0")
    assert status == 400 and "quality" in r2["detail"]
    # width/height: to a size, cropped
    status, r = srv.json("POST", "/v1/jobs", {"type": "upscale", "image": b64(INPUT), "upscaler": "Lanczos",
                                              "width": 40, "height": 30})
    assert status == 202, r
    j = srv.wait_job(r["id"])
    _, _, raw = srv.request("GET", j["images"][0])
    assert Image.open(io.BytesIO(raw)).size == (40, 30)
    for body, code in [({"type": "upscale", "image": b64(INPUT)}, 400),
                       ({"type": "upscale", "image": b64(INPUT), "upscaler": "Nope"}, 404),
                       ({"type": "upscale", "image": b64(INPUT), "upscaler": "Lanczos", "width": 40}, 400),
                       ({"type": "upscale", "image": b64(INPUT), "upscaler": "Lanczos", "output_format": "gif"}, 400)]:
        status, r = srv.json("POST", "/v1/jobs", body)
        assert status == code, (body, r)


def test_generation_formats_carry_the_infotext(srv, tmp_path):
    status, r = srv.json("POST", "/v1/jobs", {"prompt": "a red cube", "steps": 2, "width": 32, "height": 32,
                                              "seed": 11, "output_format": "jpeg", "quality": 95})
    assert status == 202, r
    j = srv.wait_job(r["id"])
    url = j["images"][0]
    status, hdrs, raw = srv.request("GET", url)
    assert hdrs["Content-Type"] == "image/jpeg"
    comment = Image.open(io.BytesIO(raw)).getexif().get_ifd(0x8769)[0x9286]
    assert comment[:8] == b"UNICODE\0" and "Seed: 11" in comment[8:].decode("utf-16-be")
    status, hdrs, raw = srv.request("GET", url + "?format=webp")
    assert hdrs["Content-Type"] == "image/webp"
    comment = Image.open(io.BytesIO(raw)).getexif().get_ifd(0x8769)[0x9286]
    assert "a red cube" in comment[8:].decode("utf-16-be")
    status, hdrs, raw = srv.request("GET", url + "?format=png")
    assert "Seed: 11" in png_pixels(raw, tmp_path)[4]["parameters"]
    # the seed route honours output_format too
    status, hdrs, raw = srv.request("POST", "/txt2img", {"prompt": "x", "steps": 1, "width": 16, "height": 16,
                                                         "output_format": "webp"})
    assert status == 200 and hdrs["Content-Type"] == "image/webp" and raw[8:12] == b"WEBP"


def read_events(port, job_id, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", f"/v1/jobs/{job_id}/events")
    r = conn.getresponse()
    events, name = [], None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            if name in ("done", "failed", "canceled"):
                break
    conn.close()
    return events


def test_previews_every_n_steps(srv, tmp_path):
    # The tiny model's VAE scales by 2: a 48 x 32 image has 24 x 16 latents.
    status, r = srv.json("POST", "/v1/jobs", {"prompt": "preview", "steps": 12, "width": 48, "height": 32,
                                              "preview_every": 3, "seed": 1})
    assert status == 202, r
    events = read_events(srv.port, r["id"])
    assert events[-1][0] == "done"
    previews = [(e["preview_step"], e["preview"]) for name, e in events if name == "progress" and "preview" in e]
    assert previews, [e for _, e in events]
    for step, data in previews:
        assert step % 3 == 0 and 3 <= step <= 12
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        assert im.format == "PNG" and im.size == (24, 16) and im.mode == "RGB"
    assert [s for s, _ in previews] == sorted({s for s, _ in previews})  # each preview sent once, in order
    # off by default; capped
    status, r = srv.json("POST", "/v1/jobs", {"prompt": "no preview", "steps": 3, "width": 16, "height": 16})
    assert not any("preview" in e for _, e in read_events(srv.port, r["id"]))
    status, r = srv.json("POST", "/v1/jobs", {"prompt": "x", "preview_every": 5000})
    assert status == 400 and "preview_every" in r["detail"]


def test_progress_current_image(srv):
    """/sdapi/v1/progress shows the running job's latest preview as current_image."""
    status, r = srv.json("POST", "/v1/jobs", {"prompt": "long", "steps": 150, "width": 128, "height": 128,
                                              "preview_every": 1})
    assert status == 202
    deadline = time.time() + 60
    while True:
        status, p = srv.json("GET", "/sdapi/v1/progress")
        if p["current_image"]:
            break
        assert time.time() < deadline, p
        time.sleep(0.05)
    assert Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).size == (64, 64)
    srv.request("POST", f"/v1/jobs/{r['id']}/cancel")
    srv.wait_job(r["id"])


def test_openai_images_generations(srv, tmp_path):
    status, r = srv.json("POST", "/v1/images/generations", {"prompt": "a cat", "n": 2, "size": "32x16",
                                                            "model": "dall-e-3", "quality": "hd", "seed": 4,
                                                            "steps": 2})
    assert status == 200, r
    assert isinstance(r["created"], int) and len(r["data"]) == 2
    for d in r["data"]:
        w, h, _, _, text = png_pixels(base64.b64decode(d["b64_json"]), tmp_path)
        assert (w, h) == (32, 16) and "a cat" in text["parameters"]
    status, r = srv.json("POST", "/v1/images/generations", {"prompt": "a dog", "size": "16x16", "steps": 1,
                                                            "response_format": "url"})
    assert status == 200, r
    url = r["data"][0]["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1/jobs/[0-9a-f]{32}/images/0", url), url
    status, hdrs, raw = srv.request("GET", url.split(str(srv.port), 1)[1])
    assert status == 200 and raw[:8] == b"\x89PNG\r\n\x1a\n"
    status, r = srv.json("POST", "/v1/images/generations", {"prompt": "x", "size": "16x16", "steps": 1,
                                                            "output_format": "webp"})
    assert base64.b64decode(r["data"][0]["b64_json"])[8:12] == b"WEBP"
    for body, needle in [({"prompt": "x", "size": "big"}, "size"), ({"prompt": "x", "response_format": "png"},
                                                                    "response_format"),
                         ({"prompt": "x", "n": 99}, "n"), ({"size": "16x16"}, "prompt")]:
        status, r = srv.json("POST", "/v1/images/generations", body)
        assert status == 400 and set(r) == {"error", "detail"} and needle in r["detail"], (body, r)


def registered_routes():
    """(method, path) of every route the server registers, read from its sources: srv.Get/Post literals
    (regex groups become {id}/{n}) and the /sdapi/v1 paths registered in loops."""
    routes = set()
    for cc in (ROOT / "src" / "server").glob("*.cc"):
        text = cc.read_text()
        for m in re.finditer(r'srv\.(Get|Post)\(\s*(R"\((.*?)\)"|"([^"]+)")', text):
            path = m.group(3) or m.group(4)
            path = re.sub(r"\(\[0-9a-zA-Z\]\{1,64\}\)", "{id}", path)
            path = re.sub(r"\(\\d\{1,4\}\)", "{n}", path)
            path = re.sub(r"\(\.\*\)", "{path}", path)
            routes.add((m.group(1).lower(), path))
        for m in re.finditer(r'"(/sdapi/v1/[a-z0-9-]+)"', text):
            routes.add((None, m.group(1)))
    return routes


def test_openapi(srv):
    status, hdrs, raw = srv.request("GET", "/openapi.json")
    assert status == 200 and hdrs["Content-Type"] == "application/json"
    spec = json.loads(raw)
    assert spec["openapi"].startswith("3.") and spec == json.loads((ROOT / "docs" / "openapi.json").read_text())
    yaml = pytest.importorskip("yaml")
    assert spec == yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text()), \
        "docs/openapi.json is stale: run tools/openapi_json.py"
    routes = registered_routes()
    assert ("post", "/v1/images/generations") in routes and ("get", "/v1/jobs/{id}/images/{n}") in routes
    for method, path in routes:
        assert path in spec["paths"], f"{path} is not in docs/openapi.yaml"
        if method:
            assert method in spec["paths"][path], f"{method.upper()} {path} is not in docs/openapi.yaml"
    # every $ref resolves
    text = json.dumps(spec)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = spec
        for part in ref.split("/"):
            node = node[part]
