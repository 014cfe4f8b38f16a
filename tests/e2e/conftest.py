"""Black-box tests: they run the real `sdserve` binary (path in $SDSERVE_BIN)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))  # tests/testlib


@pytest.fixture(scope="session")
def sdserve_bin() -> str:
    path = os.environ.get("SDSERVE_BIN", str(ROOT / "build" / "release" / "sdserve"))
    if not os.path.exists(path):
        pytest.fail(f"sdserve binary not found at {path}; build it or set SDSERVE_BIN")
    return path


@pytest.fixture
def run(sdserve_bin):
    def _run(*args, input=None, timeout=120):
        return subprocess.run([sdserve_bin, *map(str, args)], input=input, capture_output=True,
                              timeout=timeout)
    return _run


def one_error_line(proc):
    """The CLI's failure contract: non-zero exit and exactly one line "sdserve: error: ..." on stderr."""
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sdserve: error: ")
    return lines[0]


def write_safetensors(path, tensors, metadata=None):
    """Writes a safetensors file from {name: (dtype, shape)} with zero data (test stand-ins)."""
    import json
    import struct
    sizes = {"F16": 2, "F32": 4, "I64": 8}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def read_safetensors(path):
    """Pure-Python safetensors reader: ({name: (dtype, shape, bytes)}, metadata)."""
    import json
    import struct
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
           for k, v in header.items()}
    return out, meta


def decode_png(path):
    """Decodes an 8-bit non-interlaced PNG: (width, height, channels, pixel bytes, {text key: value})."""
    import struct
    import zlib
    raw = pathlib.Path(path).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, text, ihdr = 8, b"", {}, None
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])[0], kind
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            k, v = body.split(b"\0", 1)
            text[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"iTXt":
            k, rest = body.split(b"\0", 1)
            flag, _method, rest = rest[0], rest[1], rest[2:]
            _lang, _tkey, v = rest.split(b"\0", 2)
            text[k.decode("latin-1")] = (zlib.decompress(v) if flag else v).decode("utf-8")
        elif kind == b"IEND":
            break
    w, h, depth, color, _comp, _filt, interlace = ihdr
    assert depth == 8 and interlace == 0 and color in (0, 2, 4, 6), ihdr
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    stride = w * ch
    data = zlib.decompress(idat)
    out, prev = bytearray(), bytearray(stride)
    for y in range(h):
        ftype, line = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b, c = prev[i], (prev[i - ch] if i >= ch else 0)
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            else:
                assert ftype == 0, ftype
        out += line
        prev = line
    return w, h, ch, bytes(out), text


def png_bytes(width, height, channels, pixels, ihdr_size=None):
    """An 8-bit PNG (channels 1, 3 or 4; filter 0). `ihdr_size` overrides the size the header claims
    (for hostile-header tests)."""
    import struct
    import zlib
    color = {1: 0, 3: 2, 4: 6}[channels]
    stride = width * channels
    raw = b"".join(b"\0" + bytes(pixels[y * stride:(y + 1) * stride]) for y in range(height))
    w, h = ihdr_size or (width, height)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def encode_png(path, width, height, channels, pixels, ihdr_size=None):
    """Writes png_bytes(...) to `path`."""
    pathlib.Path(path).write_bytes(png_bytes(width, height, channels, pixels, ihdr_size))
