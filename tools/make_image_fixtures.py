#!/usr/bin/env python3
"""Fixtures for tests/unit/test_image.cc: what Pillow and OpenCV make of images, as A1111 uses them.

Writes tests/fixtures/images/ (and a few tiny seeds into fuzz/corpus/image/):

- decode parity: JPEG (4:2:0, 4:2:2, 4:4:4, progressive, grayscale, CMYK), WebP (lossy, lossy with
  alpha, lossless), PNG and 1x1 images, each with `<name>.pil.png` holding Pillow's decode
  (`Image.open(f).convert("RGB" or "RGBA")`);
- EXIF orientations 1-8 (JPEG APP1), PNG eXIf, WebP EXIF and XMP-only orientation, each with
  `ImageOps.exif_transpose(Image.open(f))` as `<name>.pil.png`;
- headers claiming 20000x20000 pixels (PNG, JPEG, WebP VP8X) and a 16383x16383 VP8L header;
- an animated WebP (refused);
- alpha flatten as A1111's images.flatten, grayscale as convert("L");
- Image.resize for NEAREST, BILINEAR, BICUBIC, LANCZOS (and BOX, HAMMING) on L, RGB and RGBA
  sources, up and down, odd sizes;
- A1111's inpainting mask blur (cv2.GaussianBlur with (k, 1) then (1, k)) and plain GaussianBlur.

manifest.json lists every case, so the C++ test needs no list of its own.

Usage: /root/.venvs/sdtools/bin/python tools/make_image_fixtures.py
Needs Pillow and opencv-python-headless (pip install pillow opencv-python-headless); the committed
files were made with Pillow 13.0.0 (libjpeg-turbo 3.2.0, libwebp 1.6.0), OpenCV 5.0.0, numpy 2.4.6.
Reruns with the same versions are byte-identical.
"""
import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, features

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "images"
FUZZ = REPO / "fuzz" / "corpus" / "image"


def pattern(w, h, channels, seed=0):
    """Gradients, hard edges and a little texture: something JPEG and resampling both notice."""
    y, x = np.mgrid[0:h, 0:w]
    planes = []
    for c in range(channels):
        v = (x * (97 + 31 * c) // max(w - 1, 1) + y * (151 - 40 * c) // max(h - 1, 1)) % 256
        v = np.where((x // 5 + y // 4 + c + seed) % 3 == 0, 255 - v, v)
        v = (v + ((x * 7 + y * 13 + c * 29 + seed * 5) % 11) * 3) % 256
        planes.append(v)
    return np.stack(planes, axis=-1).astype(np.uint8)


def rgba_pattern(w, h, seed=0):
    a = pattern(w, h, 4, seed)
    y, x = np.mgrid[0:h, 0:w]
    alpha = (x * 255 // max(w - 1, 1)).astype(np.int32)
    alpha = np.where(y % 4 == 0, 0, alpha)      # fully transparent rows
    alpha = np.where(y % 4 == 1, 255, alpha)    # opaque rows
    alpha = np.where((x + y) % 7 == 0, 1, alpha)  # nearly transparent pixels
    a[..., 3] = alpha.astype(np.uint8)
    return a


def save_png(img, name):
    img.save(OUT / name, format="PNG", optimize=False, compress_level=9)
    return name


def save_bytes(data, name):
    (OUT / name).write_bytes(data)
    return name


def pil_decoded(path):
    with Image.open(path) as im:
        im.load()
        return im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB")


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    FUZZ.mkdir(parents=True, exist_ok=True)
    for f in OUT.iterdir():
        if f.is_file():
            f.unlink()
    m = {"versions": {"pillow": Image.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
                      "libwebp": features.version("webp"), "opencv": cv2.__version__, "numpy": np.__version__},
         "decode": [], "exif": [], "refuse": [], "flatten": [], "gray": [], "resize": [], "mask_blur": [],
         "gaussian": []}

    rgb = Image.fromarray(pattern(37, 23, 3))
    rgba = Image.fromarray(rgba_pattern(37, 23), "RGBA")
    save_png(rgb, "src_rgb.png")
    save_png(rgba, "src_rgba.png")

    # ---- decode parity ----
    def decode_case(name, tolerance=0):
        expected = name.replace(".", "_") + ".pil.png"
        save_png(pil_decoded(OUT / name), expected)
        m["decode"].append({"file": name, "expected": expected, "tolerance": tolerance})

    rgb.save(OUT / "jpeg_420_q90.jpg", quality=90)
    decode_case("jpeg_420_q90.jpg")
    rgb.save(OUT / "jpeg_422_q85.jpg", quality=85, subsampling=1)
    decode_case("jpeg_422_q85.jpg")
    rgb.save(OUT / "jpeg_444_q95.jpg", quality=95, subsampling=0)
    decode_case("jpeg_444_q95.jpg")
    rgb.save(OUT / "jpeg_progressive.jpg", quality=80, progressive=True)
    decode_case("jpeg_progressive.jpg")
    rgb.convert("L").save(OUT / "jpeg_gray.jpg", quality=90)
    decode_case("jpeg_gray.jpg")
    rgb.convert("CMYK").save(OUT / "jpeg_cmyk.jpg", quality=90)
    decode_case("jpeg_cmyk.jpg")
    rgb.save(OUT / "webp_lossy.webp", quality=80)
    decode_case("webp_lossy.webp")
    rgba.save(OUT / "webp_lossy_alpha.webp", quality=80)
    decode_case("webp_lossy_alpha.webp")
    rgba.save(OUT / "webp_lossless.webp", lossless=True, exact=True)
    decode_case("webp_lossless.webp")
    save_png(rgba.convert("LA"), "png_la.png")
    decode_case("png_la.png")
    one = Image.new("RGB", (1, 1), (200, 30, 90))
    one.save(OUT / "one_px.jpg", quality=95)
    decode_case("one_px.jpg")
    one.save(OUT / "one_px.webp", quality=90)
    decode_case("one_px.webp")
    Image.new("RGBA", (1, 1), (10, 250, 40, 128)).save(OUT / "one_px_lossless.webp", lossless=True)
    decode_case("one_px_lossless.webp")
    save_png(Image.new("RGBA", (1, 1), (1, 2, 3, 4)), "one_px.png")
    decode_case("one_px.png")

    # ---- EXIF orientation (ImageOps.exif_transpose) ----
    small = Image.fromarray(pattern(9, 6, 3, seed=1))

    def exif_bytes(orientation):
        e = Image.Exif()
        e[0x0112] = orientation
        e[0x010F] = "sdserve test"  # another IFD0 entry, before Orientation's slot
        return e.tobytes()

    def exif_case(name):
        expected = name.replace(".", "_") + ".pil.png"
        with Image.open(OUT / name) as im:
            ImageOps.exif_transpose(im).convert("RGB").save(OUT / expected, optimize=False, compress_level=9)
        m["exif"].append({"file": name, "expected": expected})

    for o in range(1, 9):
        small.save(OUT / f"exif_{o}.jpg", quality=95, subsampling=0, exif=exif_bytes(o))
        exif_case(f"exif_{o}.jpg")
    small.save(OUT / "exif_png_6.png", exif=exif_bytes(6))
    exif_case("exif_png_6.png")
    small.save(OUT / "exif_webp_8.webp", lossless=True, exif=exif_bytes(8))
    exif_case("exif_webp_8.webp")
    small.save(OUT / "exif_webp_5_lossy.webp", quality=90, exif=exif_bytes(5))
    exif_case("exif_webp_5_lossy.webp")
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="7"/>'
           b'</rdf:RDF></x:xmpmeta>')
    small.save(OUT / "xmp_7.jpg", quality=95, subsampling=0, xmp=xmp)
    exif_case("xmp_7.jpg")

    # ---- refused before allocation ----
    idat = zlib.compress(b"\0" * 64)
    huge_png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    m["refuse"].append({"file": save_bytes(huge_png, "huge_20000.png"), "why": "limit"})
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "JPEG", quality=50)
    j = bytearray(buf.getvalue())
    sof = j.index(b"\xff\xc0")
    struct.pack_into(">HH", j, sof + 5, 20000, 20000)
    m["refuse"].append({"file": save_bytes(bytes(j), "huge_20000.jpg"), "why": "limit"})
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "WEBP", lossless=True)
    w = buf.getvalue()
    assert w[12:16] == b"VP8L"
    vp8l = w[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + (20000 - 1).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + vp8l
    m["refuse"].append({"file": save_bytes(b"RIFF" + struct.pack("<I", len(body)) + body, "huge_20000.webp"),
                        "why": "limit"})
    # A VP8L header for 16383x16383 (14-bit fields), the largest a WebP can claim.
    bits = 0x2F.to_bytes(1, "little") + ((16383 - 1) | ((16383 - 1) << 14)).to_bytes(4, "little")
    payload = bits + w[25:]
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")
    body = b"WEBP" + chunk
    m["refuse"].append({"file": save_bytes(b"RIFF" + struct.pack("<I", len(body)) + body, "big_16383.webp"),
                        "why": "limit"})
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(OUT / "animated.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    m["refuse"].append({"file": "animated.webp", "why": "animated"})

    # ---- alpha flatten (A1111 images.flatten) and grayscale (convert("L")) ----
    for name, color in (("flatten_white.pil.png", (255, 255, 255)), ("flatten_color.pil.png", (12, 200, 77))):
        bg = Image.new("RGBA", rgba.size, color)
        bg.alpha_composite(rgba)
        save_png(bg.convert("RGB"), name)
        m["flatten"].append({"src": "src_rgba.png", "color": list(color), "expected": name})
    save_png(rgb.convert("L"), "gray_rgb.pil.png")
    m["gray"].append({"src": "src_rgb.png", "expected": "gray_rgb.pil.png"})
    save_png(rgba.convert("L"), "gray_rgba.pil.png")
    m["gray"].append({"src": "src_rgba.png", "expected": "gray_rgba.pil.png"})

    # ---- resize (Image.resize) ----
    R = Image.Resampling
    srcs = {
        1: save_png(Image.fromarray(pattern(19, 13, 1, seed=2)[..., 0], "L"), "rsrc_l.png"),
        3: save_png(Image.fromarray(pattern(19, 13, 3, seed=3)), "rsrc_rgb.png"),
        4: save_png(Image.fromarray(rgba_pattern(19, 13, seed=4), "RGBA"), "rsrc_rgba.png"),
    }
    big = save_png(Image.fromarray(pattern(67, 45, 3, seed=5)), "rsrc_big.png")
    filters = {"nearest": R.NEAREST, "bilinear": R.BILINEAR, "bicubic": R.BICUBIC, "lanczos": R.LANCZOS,
               "box": R.BOX, "hamming": R.HAMMING}
    cases = []
    for ch, src in srcs.items():
        for fname in ("nearest", "bilinear", "bicubic", "lanczos"):
            for size in ((29, 23), (7, 5), (31, 6)):
                cases.append((ch, src, fname, size))
    for fname in ("box", "hamming"):
        for size in ((29, 23), (7, 5)):
            cases.append((3, srcs[3], fname, size))
    for fname in ("nearest", "bilinear", "bicubic", "lanczos"):
        cases.append((3, big, fname, (10, 7)))
        cases.append((3, big, fname, (1, 1)))
    assert int(Image.__version__.split(".")[0]) >= 13, "the resize fixtures need Pillow 13's pass order"
    for ch, src, fname, (w_, h_) in cases:
        with Image.open(OUT / src) as im:
            im.load()
            out = im.resize((w_, h_), filters[fname])
            name = f"resize_{src[5:-4]}_{fname}_{w_}x{h_}.png"
            save_png(out, name)
            # Pillow >= 13 runs the vertical pass first when the height shrinks and the width does
            # not; Pillow <= 12 (A1111 pins 9.5.0) always runs the horizontal pass first. Where the
            # two differ, the old order is two single-pass resizes (RGBA premultiplied, as resize
            # does it), which is exactly what Pillow 9.5's one call computes.
            orders_differ = w_ >= im.width and h_ < im.height and fname != "nearest"
            m["resize"].append({"src": src, "channels": ch, "filter": fname, "width": w_, "height": h_,
                                "expected": name, "pillow": "13" if orders_differ else "any"})
            if orders_differ:
                pre = im.convert("RGBa") if im.mode == "RGBA" else im
                old = pre.resize((w_, im.height), filters[fname]).resize((w_, h_), filters[fname])
                old = old.convert("RGBA") if im.mode == "RGBA" else old
                name9 = f"resize_{src[5:-4]}_{fname}_{w_}x{h_}_pillow9.png"
                save_png(old, name9)
                m["resize"].append({"src": src, "channels": ch, "filter": fname, "width": w_, "height": h_,
                                    "expected": name9, "pillow": "9"})

    # ---- mask blur (A1111 processing.py) and GaussianBlur ----
    y, x = np.mgrid[0:29, 0:41]
    mask = np.where(((x - 14) ** 2 + (y - 12) ** 2 < 64) | ((x > 25) & (x < 37) & (y > 6) & (y < 24)), 255, 0)
    mask = mask.astype(np.uint8)
    save_png(Image.fromarray(mask, "L"), "mask.png")
    tiny = (pattern(7, 5, 1, seed=6)[..., 0] > 128).astype(np.uint8) * 255
    save_png(Image.fromarray(tiny, "L"), "mask_tiny.png")

    def a1111_mask_blur(np_mask, bx, by):
        if bx > 0:
            k = 2 * int(2.5 * bx + .5) + 1
            np_mask = cv2.GaussianBlur(np_mask, (k, 1), bx)
        if by > 0:
            k = 2 * int(2.5 * by + .5) + 1
            np_mask = cv2.GaussianBlur(np_mask, (1, k), by)
        return np_mask

    for src, arr, bx, by in (("mask.png", mask, 1, 1), ("mask.png", mask, 2, 2), ("mask.png", mask, 4, 4),
                             ("mask.png", mask, 7, 7), ("mask.png", mask, 3.5, 3.5), ("mask.png", mask, 3, 0),
                             ("mask.png", mask, 0, 5), ("mask.png", mask, 0, 0), ("mask.png", mask, 16, 16),
                             ("mask.png", mask, 64, 64), ("mask_tiny.png", tiny, 6, 6)):
        name = f"mask_blur_{src[:-4]}_{bx}_{by}.png"
        save_png(Image.fromarray(a1111_mask_blur(arr.copy(), bx, by), "L"), name)
        m["mask_blur"].append({"src": src, "blur_x": bx, "blur_y": by, "expected": name})
    for kx, ky, sx, sy in ((5, 5, 1.3, 0), (0, 0, 2.2, 0), (3, 7, 0.8, 2.5), (9, 1, 0, 0), (1, 3, 0, 0)):
        name = f"gaussian_{kx}x{ky}_{sx}_{sy}.png"
        save_png(Image.fromarray(cv2.GaussianBlur(pattern(41, 29, 1)[..., 0], (kx, ky), sx, sigmaY=sy), "L"), name)
        m["gaussian"].append({"src": "gaussian_src.png", "ksize_x": kx, "ksize_y": ky, "sigma_x": sx, "sigma_y": sy,
                              "expected": name})
    save_png(Image.fromarray(pattern(41, 29, 1)[..., 0], "L"), "gaussian_src.png")

    (OUT / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")

    # ---- fuzz seeds: tiny, one per decoder path ----
    for f in FUZZ.iterdir():
        if f.is_file():
            f.unlink()
    for name in ("one_px.jpg", "one_px.webp", "one_px_lossless.webp", "one_px.png", "exif_6.jpg",
                 "exif_png_6.png", "exif_webp_8.webp", "xmp_7.jpg", "jpeg_progressive.jpg", "jpeg_cmyk.jpg",
                 "animated.webp", "huge_20000.jpg", "huge_20000.webp"):
        (FUZZ / name).write_bytes((OUT / name).read_bytes())
    (FUZZ / "exif_orientation_6.tif").write_bytes(exif_bytes(6))  # a bare EXIF block for parse_exif
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"{len(list(OUT.iterdir()))} files, {total} bytes in {OUT}")
    print(f"fuzz seeds: {sum(f.stat().st_size for f in FUZZ.iterdir())} bytes")


if __name__ == "__main__":
    main()
