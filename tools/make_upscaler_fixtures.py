#!/usr/bin/env python3
"""Tiny ESRGAN-family upscaler fixtures and spandrel goldens for tests/unit/test_upscale.cc.

Installs spandrel into the running Python on demand (`pip install spandrel`; torch must be there
already, e.g. /root/.venvs/sdtools/bin/python tools/make_upscaler_fixtures.py), then builds tiny
random-weight networks with spandrel's own architecture classes and writes to
tests/fixtures/upscalers/ (or --out DIR):

  rrdb-x4-basicsr.safetensors   RRDBNet, BasicSR/Real-ESRGAN key names (conv_first, body.N.rdbR.convC,
                                conv_body, conv_up1, conv_up2, conv_hr, conv_last); nf 8, nb 2, gc 4,
                                x4, float32
  rrdb-x2-realesrgan.safetensors
                                RealESRGAN_x2plus style: in_nc 12 (pixel-unshuffle 2 on the input), net
                                x4, so x2; nf 8, nb 1, gc 4; every key under "params_ema." plus a
                                "params." copy with other values (BasicSR's checkpoint layout, flattened);
                                float16
  rrdb-x1-realesrgan.safetensors
                                in_nc 48 (pixel-unshuffle 4), net x4, so x1; nf 8, nb 1, gc 4; float16
  esrgan-x4-old.safetensors     RRDBNet, original ESRGAN key names (model.0, model.1.sub.N.RDBR.convC.0,
                                model.1.sub.NB, model.3, model.6, model.8, model.10); nf 8, nb 1, gc 4;
                                float16
  esrgan-x2-old.safetensors     the same layout with one upsampling stage (model.3, model.5, model.7);
                                nf 8, nb 1, gc 4; float32
  compact-x4.safetensors        SRVGGNetCompact (Real-ESRGAN compact): num_feat 8, num_conv 3, PReLU,
                                upscale 4; float32
  compact-x4.pth                the same weights as Real-ESRGAN ships them: torch.save({"params": state
                                dict}) (read by io/torch_checkpoint without executing the pickle)
  input.png                     25 x 19 RGB test image (odd sizes exercise the unshuffle padding)
  golden.safetensors            per model <stem>: uint8 [H*s, W*s, 3], spandrel's untiled output of
                                input.png as float32 RGB in [0, 1], then clamp(0, 1) * 255, rounded
                                half to even (torch.round), cast to uint8. __metadata__["models"]: JSON
                                {stem: {arch, scale, in_nc, out_nc, nf, nb, gc, shuffle}}

Goldens come from spandrel's loader itself (ModelLoader.load_from_state_dict on the state dict read
back from the written file, after unwrapping "params_ema."): its detection, old/new-layout
conversion, pixel-unshuffle padding (reflect) and cropping. One change to spandrel: its RRDBNet hard-
codes the growth width gc = 32 (true of every released model), which would make the fixtures ~1 MB
each; the script wraps spandrel's RRDB block so that gc is 4. Deterministic: torch runs on one
thread with deterministic algorithms, weights are seeded per model, files are written with sorted
headers (st_io.save_file_sorted) and the PNG by Pillow with fixed options.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

GC = 4
W, H = 25, 19


def ensure_spandrel():
    try:
        import spandrel  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "spandrel"])
    import spandrel
    return spandrel


def make_input():
    """A 25 x 19 RGB image with gradients, a hard edge and a little texture (uint8 [H, W, 3])."""
    import numpy as np
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 255 * x / (W - 1)
    g = 255 * y / (H - 1)
    b = 128 + 100 * np.sin(x * 0.9) * np.cos(y * 0.7)
    img = np.stack([r, g, b], axis=-1)
    img[(x - 12) ** 2 + (y - 9) ** 2 < 25] = (240, 30, 60)  # a disc with hard edges
    img += ((x * 7 + y * 13) % 5 - 2)[..., None] * 6  # fixed texture
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def old_to_new(sd: dict, nb: int) -> dict:
    """Original-ESRGAN names (spandrel's own) -> BasicSR RRDBNet names (x4: two conv_up layers)."""
    import re
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
            continue
        m = re.fullmatch(r"model\.(\d+)(?:\.sub\.(\d+))?\.(weight|bias)", k)
        assert m, k
        idx, sub, kind = int(m[1]), m[2], m[3]
        if idx == 1:
            assert int(sub) == nb, k
            out[f"conv_body.{kind}"] = v
        else:
            name = {0: "conv_first", 3: "conv_up1", 6: "conv_up2", 8: "conv_hr", 10: "conv_last"}[idx]
            out[f"{name}.{kind}"] = v
    return out


def patch_gc(spandrel_pkg):
    """Makes spandrel's RRDBNet build its RRDB blocks with growth width GC (see the docstring)."""
    block = importlib.import_module("spandrel.architectures.__arch_helpers.block")
    orig = block.RRDB
    if getattr(orig, "_sdserve_gc", None) == GC:
        return

    class RRDBWithGC(orig):
        _sdserve_gc = GC

        def __init__(self, *args, **kwargs):
            kwargs["gc"] = GC
            super().__init__(*args, **kwargs)

    block.RRDB = RRDBWithGC


def randomize(model, seed: int):
    """Seeded weights: PyTorch's default init, then the last conv scaled so the output spans a
    useful part of [0, 1] (mean 0.5, std ~0.2) instead of clamping everywhere."""
    import torch
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for name, p in model.named_parameters():
        if p.dim() == 1 and "body" in name and p.shape[0] > 1 and name.endswith("weight"):  # PReLU slopes
            with torch.no_grad():
                p.uniform_(0.05, 0.45)


def calibrate_last(model, last_conv, x, residual: bool):
    """Scales `last_conv` so the output has std ~0.2 and (without a residual) mean 0.5."""
    import torch
    with torch.no_grad():
        y = model(x)
        base = torch.nn.functional.interpolate(x, size=y.shape[-2:], mode="nearest") if residual else 0
        r = y - base
        s = 0.2 / max(float(r.std()), 1e-6) if not residual else 0.08 / max(float(r.std()), 1e-6)
        last_conv.weight.mul_(s)
        last_conv.bias.mul_(s)
        if not residual:
            y = model(x)
            last_conv.bias.add_(0.5 - float(y.mean()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "upscalers")
    args = ap.parse_args(argv)

    spandrel = ensure_spandrel()
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from spandrel import ModelLoader
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from st_io import save_file_sorted

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    patch_gc(spandrel)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    img = make_input()
    Image.fromarray(img, "RGB").save(out / "input.png", optimize=False, compress_level=9)
    x = torch.from_numpy(np.array(Image.open(out / "input.png").convert("RGB"))).permute(2, 0, 1)
    x = (x.float() / 255.0).unsqueeze(0).contiguous()

    goldens, meta = {}, {}

    def finish(stem: str, model, tensors: dict, dtype, prefix: str = "", extra: dict | None = None):
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
        file_tensors = {prefix + k: v for k, v in tensors.items()}
        if extra:
            file_tensors.update(extra)
        path = out / f"{stem}.safetensors"
        save_file_sorted(file_tensors, path)
        # Goldens from the file as written, through spandrel's loader.
        sd = load_file(str(path))
        if prefix:
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        desc = ModelLoader().load_from_state_dict({k: v.float() for k, v in sd.items()})
        net = desc.model.eval()
        with torch.no_grad():
            y = net(x)
        assert y.shape[-2:] == (H * desc.scale, W * desc.scale), (stem, y.shape)
        u8 = (y.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).contiguous()
        goldens[stem] = u8
        hp = net.hyperparameters if hasattr(net, "hyperparameters") else {}
        info = {"arch": desc.architecture.id, "scale": desc.scale, "in_nc": desc.input_channels,
                "out_nc": desc.output_channels}
        if desc.architecture.id == "ESRGAN":
            info.update(nf=hp["num_filters"], nb=hp["num_blocks"], gc=GC, shuffle=hp["shuffle_factor"] or 1)
        else:
            info.update(nf=hp["num_feat"], nb=hp["num_conv"], gc=0, shuffle=1)
        meta[stem] = info
        clipped = float(((y < 0) | (y > 1)).float().mean())
        print(f"{stem}: {info}, output {tuple(u8.shape)}, {clipped:.1%} clamped, {path.stat().st_size} bytes")

    # RRDBNet x4, BasicSR names.
    m = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4)
    randomize(m, 1)
    calibrate_last(m, m.model[10], x, residual=False)
    finish("rrdb-x4-basicsr", m, old_to_new(m.state_dict(), 2), torch.float32)

    # Real-ESRGAN x2plus style (pixel-unshuffle 2), BasicSR names under params_ema. (+ params.).
    m = ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2)
    randomize(m, 2)
    calibrate_last(m, m.model[10], x, residual=False)
    new = old_to_new(m.state_dict(), 1)
    decoy = {"params." + k: torch.full_like(v, 0.01).to(torch.float16) for k, v in new.items()}
    finish("rrdb-x2-realesrgan", m, new, torch.float16, prefix="params_ema.", extra=decoy)

    # Real-ESRGAN x1 style (pixel-unshuffle 4).
    m = ESRGAN(in_nc=48, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=4)
    randomize(m, 3)
    calibrate_last(m, m.model[10], x, residual=False)
    finish("rrdb-x1-realesrgan", m, old_to_new(m.state_dict(), 1), torch.float16)

    # Original ESRGAN names, x4 and x2.
    m = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    randomize(m, 4)
    calibrate_last(m, m.model[10], x, residual=False)
    finish("esrgan-x4-old", m, m.state_dict(), torch.float16)
    m = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    randomize(m, 5)
    calibrate_last(m, m.model[7], x, residual=False)
    finish("esrgan-x2-old", m, m.state_dict(), torch.float32)

    # SRVGGNetCompact x4.
    m = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=4)
    randomize(m, 6)
    calibrate_last(m, m.body[-1], x, residual=True)
    finish("compact-x4", m, m.state_dict(), torch.float32)
    torch.save({"params": {k: v.detach().clone() for k, v in m.state_dict().items()}}, out / "compact-x4.pth")

    save_file_sorted(goldens, out / "golden.safetensors",
                     metadata={"models": json.dumps(meta, sort_keys=True), "width": str(W), "height": str(H),
                               "spandrel": spandrel.__version__, "torch": torch.__version__})
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"total {total} bytes in {out}")
    assert total < 500_000, total
    return 0


if __name__ == "__main__":
    sys.exit(main())
