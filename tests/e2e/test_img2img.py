"""`sdserve generate --init-image/--mask/--outpaint` end to end: img2img output matches diffusers'
StableDiffusionImg2ImgPipeline (goldens from tools/make_img2img_goldens.py) within 2/255; inpaint
matches StableDiffusionInpaintPipeline inside the mask and keeps the original outside it (A1111's
overlay); bad images and options fail with one line."""
import pytest

from conftest import FIXTURES, decode_png, encode_png, one_error_line, read_safetensors

MODELS = FIXTURES / "models"
GOLDEN = FIXTURES / "golden" / "img2img"


def golden(model):
    tensors, meta = read_safetensors(GOLDEN / f"{model}.safetensors")
    return tensors, meta


def base_args(model, meta, out, **over):
    args = {"--model": MODELS / model, "--prompt": meta["prompt"], "--negative-prompt": meta["negative_prompt"],
            "--steps": meta["steps"], "--cfg-scale": meta["cfg"], "--seed": meta["seed"], "--rng": "cpu",
            "--width": meta["width"], "--height": meta["height"], "--output": out}
    args.update(over)
    return ["generate"] + [str(x) for kv in args.items() for x in kv]


def write_inputs(tmp_path, tensors, meta):
    w, h = int(meta["width"]), int(meta["height"])
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    encode_png(init, w, h, 3, tensors["init"][2])
    encode_png(mask, w, h, 1, tensors["mask"][2])
    return init, mask


@pytest.mark.parametrize("model, case", [("sd1-tiny", "img2img|Euler a|Automatic|0.6|1"),
                                         ("sd2-tiny", "img2img|DPM++ 2M|Karras|0.6|1"),
                                         ("odd-tiny", "img2img|DDIM|Automatic|0.6|1")])
def test_img2img_matches_diffusers(run, tmp_path, model, case):
    tensors, meta = golden(model)
    init, _ = write_inputs(tmp_path, tensors, meta)
    _, sampler, schedule, strength, _ = case.split("|")
    out = tmp_path / "out.png"
    p = run(*base_args(model, meta, out, **{"--init-image": init, "--strength": strength, "--sampler": sampler,
                                             "--scheduler": schedule}))
    assert p.returncode == 0, p.stderr
    w, h, ch, got, text = decode_png(out)
    want = tensors[case][2]
    assert len(got) == len(want)
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= 2, f"{model} {case}: max |diff| {worst}/255"
    assert f"Denoising strength: {strength}" in text["parameters"], text["parameters"]


@pytest.mark.parametrize("model", ["sd1-tiny", "sd2-tiny"])
def test_inpaint_matches_diffusers_inside_and_keeps_outside(run, tmp_path, model):
    tensors, meta = golden(model)
    init, mask = write_inputs(tmp_path, tensors, meta)
    case = "inpaint|DPM++ 2M|Automatic|0.7|1"
    out = tmp_path / "out.png"
    p = run(*base_args(model, meta, out, **{"--init-image": init, "--mask": mask, "--mask-blur": 0,
                                             "--strength": 0.7, "--sampler": "DPM++ 2M"}))
    assert p.returncode == 0, p.stderr
    _, _, _, got, text = decode_png(out)
    want, orig, m = tensors[case][2], tensors["init"][2], tensors["mask"][2]
    inside = [i for i in range(len(got)) if m[i // 3] >= 128]
    outside = [i for i in range(len(got)) if m[i // 3] == 0]
    assert inside and outside
    assert max(abs(got[i] - want[i]) for i in inside) <= 2
    assert all(got[i] == orig[i] for i in outside)
    assert "Mask blur: 0" in text["parameters"]


def test_outpaint_and_only_masked(run, tmp_path):
    tensors, meta = golden("sd1-tiny")
    init, mask = write_inputs(tmp_path, tensors, meta)
    out = tmp_path / "out.png"
    p = run(*base_args("sd1-tiny", meta, out, **{"--init-image": init, "--outpaint": "8,8,0,16",
                                                  "--width": 48, "--height": 48}))
    assert p.returncode == 0, p.stderr
    w, h, _, _, _ = decode_png(out)
    assert (w, h) == (48, 48)
    args = base_args("sd1-tiny", meta, out, **{"--init-image": init, "--mask": mask, "--width": 16, "--height": 16})
    p = run(*args, "--only-masked", "--only-masked-padding", "4")
    assert p.returncode == 0, p.stderr
    w, h, _, got, _ = decode_png(out)
    assert (w, h) == (32, 32)  # pasted back into the full image


def test_bad_images_fail_with_one_line(run, tmp_path):
    tensors, meta = golden("sd1-tiny")
    init, mask = write_inputs(tmp_path, tensors, meta)
    out = tmp_path / "out.png"
    huge = tmp_path / "huge.png"
    encode_png(huge, 1, 1, 3, b"\0\0\0", ihdr_size=(20000, 20000))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(init.read_bytes()[:60])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    tiny = tmp_path / "tiny.png"
    encode_png(tiny, 1, 1, 3, b"\x10\x20\x30")
    cases = [
        ({"--init-image": huge}, "20000"),
        ({"--init-image": trunc}, "trunc.png"),
        ({"--init-image": text}, "PNG, JPEG"),
        ({"--init-image": tmp_path / "missing.png"}, "cannot read"),
        ({"--mask": mask}, "need --init-image"),
        ({"--init-image": init, "--outpaint": "1,2"}, "LEFT,RIGHT,TOP,BOTTOM"),
        ({"--init-image": init, "--strength": "1.5"}, "strength"),
        ({"--init-image": init, "--resize-mode": "stretch"}, "resize mode"),
        ({"--init-image": init, "--inpaint-fill": "blue"}, "--inpaint-fill"),
    ]
    for over, needle in cases:
        line = one_error_line(run(*base_args("sd1-tiny", meta, out, **over)))
        assert needle in line, (over, line)
    # A 1x1 init image works (resized to the request size), as in A1111.
    p = run(*base_args("sd1-tiny", meta, out, **{"--init-image": tiny, "--steps": 2}))
    assert p.returncode == 0, p.stderr


def test_hires_fix(run, tmp_path):
    _, meta = golden("sd1-tiny")
    out = tmp_path / "out.png"
    p = run(*base_args("sd1-tiny", meta, out, **{"--width": 16, "--height": 16, "--steps": 4, "--hires-scale": 2,
                                                  "--hires-steps": 4, "--hires-denoise": 0.5}))
    assert p.returncode == 0, p.stderr
    w, h, _, _, text = decode_png(out)
    assert (w, h) == (32, 32)
    params = text["parameters"]
    assert "Size: 16x16" in params and "Hires upscale: 2" in params and "Hires upscaler: Latent" in params, params
    assert "Denoising strength: 0.5" in params, params
    line = one_error_line(run(*base_args("sd1-tiny", meta, out, **{"--hires-upscaler": "4x-Bogus"})))
    assert "Lanczos" in line, line
