#!/usr/bin/env python3
"""PyTorch checkpoint fixtures for the safe .pth/.pt/.ckpt reader (src/io/torch_checkpoint.h).

Writes to tests/fixtures/torch/ (and a few small seeds to fuzz/corpus/torch_checkpoint/):

  <name>.pth/.pt/.ckpt            written by torch.save (torch 2.15), or repacked from such a file
  <name>.expected.safetensors     the tensors sdserve must read from it: nested dicts flattened with
                                  ".", ParameterDicts by their parameter names, non-tensors dropped,
                                  every tensor a contiguous copy (safetensors.torch.save_file)

Valid files:
  dtypes.pth            f32 f16 bf16 f64 i64 i32 i16 i8 u8 bool, a 0-d and an empty tensor, special
                        float values, plus non-tensor leaves (str, int, float, tuple, None)
  esrgan_params_ema.pth {"params_ema": OrderedDict(...)} as BasicSR/Real-ESRGAN save upscalers
  module_state_dict.pt  an nn.Module's state_dict() (OrderedDict with _metadata, so BUILD),
                        pickle protocol 4 (FRAME, STACK_GLOBAL, MEMOIZE, SHORT_BINUNICODE)
  views.pth             transposed, sliced, strided, offset, expanded (stride 0) and 0-d views sharing
                        one f32 storage, and a permuted f16 view of another
  parameters.pt         nn.Parameter values (_rebuild_parameter), requires_grad both ways
  embedding_a1111.pt    an A1111 textual-inversion file: string_to_param is an nn.ParameterDict
  lightning.ckpt        {"state_dict": ..., "global_step", "epoch", "optimizer_states": [...]}
  inert_extras.ckpt     a state dict beside numpy scalars and arrays, torch.device/Size/dtype, a
                        set, bytes (globals the reader keeps as opaque values)
  v3_dtypes.pt          uint16/uint32/uint64/float8 (_rebuild_tensor_v3 + UntypedStorage) and a
                        complex64 tensor (no sdserve dtype: skipped, listed in `skipped`)
  deflated.pth          dtypes.pth repacked with zip deflate (torch.load reads it too)
  zip64.pth             views.pth repacked with ZIP64 records everywhere (torch.load reads it too)
  legacy.pth            _use_new_zipfile_serialization=False (the pre-1.6 pickle-stream format)

Files that must be refused:
  hostile_reduce.pth    torch.save of an object whose __reduce__ is os.system: data.pkl holds
                        GLOBAL 'posix system' + REDUCE (written, never executed)
  hostile_raw.pkl       the same object as a bare protocol-2 pickle
  hostile_eval.pt       a zip whose data.pkl calls builtins.eval through STACK_GLOBAL
  truncated.pth         the first half of dtypes.pth
  legacy_truncated.pth  legacy.pth without its last 6 bytes

Run with the tools venv:  /root/.venvs/sdtools/bin/python tools/make_torch_fixtures.py
Deterministic: a second run rewrites the same bytes (torch.save's zip has fixed timestamps and a
content-derived serialization id; the tensors come from a seeded generator).
"""
import collections
import io
import os
import pathlib
import pickle
import pickletools
import re
import struct
import sys
import zipfile
import zlib

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "torch"
SEEDS = ROOT / "fuzz" / "corpus" / "torch_checkpoint"
MARKER = "/tmp/sdserve-torch-hostile-marker"


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed)).to(dtype)


def save_bytes(obj, **kw):
    b = io.BytesIO()
    torch.save(obj, b, **kw)
    return b.getvalue()


def flatten(obj, prefix=""):
    """What the C++ reader returns: {name: tensor}."""
    out = {}
    if isinstance(obj, torch.nn.ParameterDict):
        obj = dict(obj.items())
    for k, v in obj.items():
        if isinstance(k, bool) or not isinstance(k, (str, int)):
            continue
        name = prefix + str(k)
        if isinstance(v, torch.Tensor):
            out[name] = v
        elif isinstance(v, (dict, torch.nn.ParameterDict)):
            out.update(flatten(v, name + "."))
    return out


def write(name, data):
    (OUT / name).write_bytes(data)


def write_expected(name, obj, skip=()):
    flat = {k: v.detach().clone().contiguous() for k, v in flatten(obj).items() if k not in skip}
    stem = name.rsplit(".", 1)[0]
    path = OUT / f"{stem}.expected.safetensors"
    save_file(flat, str(path))
    path.chmod(0o644)  # safetensors creates files 0600


def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def check_loads(data, obj_flat):
    """torch.load itself reads the file and finds the same tensors, bit for bit."""
    back = flatten(torch.load(io.BytesIO(data), weights_only=False))
    assert back.keys() == obj_flat.keys(), (back.keys(), obj_flat.keys())
    for k, v in obj_flat.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert raw(back[k]) == raw(v), k


def repack(data, compress_type):
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = compress_type
            dst.writestr(zi, src.read(info.filename))
    return out.getvalue()


def zip64(data):
    """Repacks a zip with ZIP64 extra fields (every size and offset saturated in the 32-bit fields)
    and a ZIP64 end-of-central-directory record and locator, as large (> 4 GiB) checkpoints have."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = bytearray()
    central = bytearray()
    for info in src.infolist():
        body = src.read(info.filename)
        name = info.filename.encode()
        crc = zlib.crc32(body)
        offset = len(out)
        local_extra = struct.pack("<HHQQ", 1, 16, len(body), len(body))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(name), len(local_extra)) + name + local_extra + body
        extra = struct.pack("<HHQQQ", 1, 24, len(body), len(body), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + name + extra
    cd_offset = len(out)
    out += central
    n = len(src.infolist())
    eocd64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def stable_legacy_keys(data):
    """The legacy format names storages by memory address (str(storage._cdata)) and stores them in the
    order of those names; this renames them 0, 1, ... in order of first use and stores them in that
    order, so that the file is the same on every run (torch.load is checked to read it)."""
    f = io.BytesIO(data)
    ends = []
    for _ in range(4):  # magic, protocol version, sys_info, the object
        for op, _arg, _pos in pickletools.genops(f):
            if op.name == "STOP":
                break
        ends.append(f.tell())
    sizes = {}  # old key -> element size, from the object pickle's persistent ids

    class Scan(pickle.Unpickler):
        def find_class(self, module, name):
            if name.endswith("Storage"):
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            return lambda *a, **k: None

        def persistent_load(self, pid):
            sizes[pid[2]] = {"FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8}[pid[1]]

    Scan(io.BytesIO(data[ends[2]:ends[3]])).load()
    old_keys = pickle.load(f)
    blocks = {}
    for key in old_keys:
        (numel,) = struct.unpack("<q", f.read(8))
        blocks[key] = struct.pack("<q", numel) + f.read(numel * sizes[key])
    assert f.read() == b""
    order = {}

    def rename(m):
        key = m.group(2).decode()
        if struct.unpack("<I", m.group(1))[0] != len(key) or key not in sizes:
            return m.group(0)
        new = order.setdefault(key, str(len(order))).encode()
        return b"X" + struct.pack("<I", len(new)) + new

    head = re.sub(rb"X(.{4})(\d{1,20})", rename, data[:ends[3]], flags=re.S)
    by_new = sorted(order, key=lambda k: int(order[k]))
    return head + pickle.dumps([order[k] for k in by_new], protocol=2) + b"".join(blocks[k] for k in by_new)


class Evil:
    """Pickles as os.system(...): never unpickle hostile_* files with pickle."""

    def __reduce__(self):
        return (os.system, (f"echo pwned > {MARKER}",))


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    SEEDS.mkdir(parents=True, exist_ok=True)

    # --- dtypes -------------------------------------------------------------------------------
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-8, 65504.0, -2.5])
    dtypes = {
        "f32": randn(2, 3, seed=1),
        "f16": torch.cat([randn(4, seed=2), special]).half(),
        "bf16": torch.cat([randn(3, seed=3), special]).bfloat16(),
        "f64": randn(2, 2, seed=4, dtype=torch.float64),
        "i64": torch.tensor([-(2**62), -1, 0, 2**40 + 3], dtype=torch.int64),
        "i32": torch.tensor([-7, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 254, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        "note": "not a tensor",
        "count": 7,
        "ratio": 0.5,
        "pair": (1, 2),
        "none": None,
    }
    data = save_bytes(dtypes)
    check_loads(data, flatten(dtypes))
    write("dtypes.pth", data)
    write_expected("dtypes.pth", dtypes)
    write("truncated.pth", data[: len(data) // 2])

    deflated = repack(data, zipfile.ZIP_DEFLATED)
    check_loads(deflated, flatten(dtypes))
    write("deflated.pth", deflated)
    write_expected("deflated.pth", dtypes)

    # --- ESRGAN-style nested state dict ---------------------------------------------------------
    ema = collections.OrderedDict()
    ema["conv_first.weight"] = randn(4, 3, 3, 3, seed=10)
    ema["conv_first.bias"] = randn(4, seed=11)
    ema["body.0.rdb1.conv1.weight"] = randn(2, 4, 3, 3, seed=12)
    ema["body.0.rdb1.conv1.bias"] = randn(2, seed=13)
    ema["conv_last.weight"] = randn(3, 4, 3, 3, seed=14)
    esrgan = {"params_ema": ema}
    data = save_bytes(esrgan)
    check_loads(data, flatten(esrgan))
    write("esrgan_params_ema.pth", data)
    write_expected("esrgan_params_ema.pth", esrgan)

    # --- nn.Module state_dict, protocol 4 --------------------------------------------------------
    torch.manual_seed(20)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                                 torch.nn.Linear(3, 2))
    sd = module.state_dict()
    data = save_bytes(sd, pickle_protocol=4)
    check_loads(data, flatten(sd))
    write("module_state_dict.pt", data)
    write_expected("module_state_dict.pt", sd)

    # --- views sharing a storage ----------------------------------------------------------------
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) * 0.5 - 3
    h = (torch.arange(24, dtype=torch.float32) / 7).half().reshape(2, 3, 4)
    views = {
        "base": base,
        "t": base.t(),
        "rows": base[2:4],
        "cols": base[:, 3:6],
        "strided": base[::2, ::3],
        "flat_offset": base.view(-1)[5:17],
        "expand": base[1:2, 2:3].expand(3, 4),
        "elem": base[4, 5],
        "nested": {"again": base[1:, 1:]},
        "half_permuted": h.permute(2, 0, 1),
        "half_base": h,
    }
    data = save_bytes(views)
    check_loads(data, flatten(views))
    write("views.pth", data)
    write_expected("views.pth", views)
    data64 = zip64(data)
    check_loads(data64, flatten(views))
    write("zip64.pth", data64)
    write_expected("zip64.pth", views)

    # --- nn.Parameter and ParameterDict ---------------------------------------------------------
    params = {
        "weight": torch.nn.Parameter(randn(3, 2, seed=30)),
        "bias": torch.nn.Parameter(randn(3, seed=31), requires_grad=False),
        "buffer": randn(2, seed=32),
    }
    data = save_bytes(params)
    check_loads(data, flatten(params))
    write("parameters.pt", data)
    write_expected("parameters.pt", params)

    emb = {
        "string_to_token": {"*": 265},
        "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(randn(2, 8, seed=40))}),
        "name": "tiny-embedding",
        "step": 100,
        "sd_checkpoint": "0123abcd",
        "sd_checkpoint_name": "sd1-tiny",
    }
    data = save_bytes(emb)
    check_loads(data, flatten(emb))
    write("embedding_a1111.pt", data)
    write_expected("embedding_a1111.pt", emb)

    # --- Lightning-style .ckpt ------------------------------------------------------------------
    ckpt = {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": collections.OrderedDict([
            ("model.diffusion_model.input_blocks.0.0.weight", randn(4, 4, 3, 3, seed=50, dtype=torch.float16)),
            ("model.diffusion_model.input_blocks.0.0.bias", randn(4, seed=51, dtype=torch.float16)),
            ("first_stage_model.decoder.conv_in.weight", randn(2, 4, 1, 1, seed=52)),
        ]),
        "optimizer_states": [{"state": {0: {"exp_avg": randn(4, seed=53)}}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [],
    }
    data = save_bytes(ckpt)
    check_loads(data, flatten(ckpt))
    write("lightning.ckpt", data)
    write_expected("lightning.ckpt", ckpt)

    # --- inert non-tensor values: numpy scalars/arrays, torch.device/Size/dtype, set, bytes ---------
    import numpy as np
    extras = {
        "state_dict": {"w": randn(2, seed=55)},
        "np_float": np.float64(1.5),
        "np_int": np.int64(3),
        "np_array": np.arange(3),
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "set": {1, 2},
        "bytes": b"xx",
        "hparams": {"lr": 1e-3, "betas": (0.9, 0.999)},
    }
    data = save_bytes(extras)
    check_loads(data, flatten(extras))
    write("inert_extras.ckpt", data)
    write_expected("inert_extras.ckpt", extras)

    # --- dtypes only _rebuild_tensor_v3 carries --------------------------------------------------
    v3 = {
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([0, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([0, 2**63 + 5], dtype=torch.uint64),
        "f8e4m3": randn(5, seed=60).to(torch.float8_e4m3fn),
        "f8e5m2": randn(5, seed=61).to(torch.float8_e5m2),
        "c64": torch.complex(randn(2, seed=62), randn(2, seed=63)),
        "f32": randn(2, seed=64),
    }
    data = save_bytes(v3)
    check_loads(data, flatten(v3))
    write("v3_dtypes.pt", data)
    write_expected("v3_dtypes.pt", v3, skip=("c64",))

    # --- legacy (pre-1.6) format -----------------------------------------------------------------
    lbase = randn(3, 4, seed=70)
    legacy = {
        "params": collections.OrderedDict([("w", lbase), ("b", randn(4, seed=71, dtype=torch.float16))]),
        "t": lbase.t(),
        "i": torch.tensor([5, -6], dtype=torch.int64),
        "iter": 3,
    }
    data = stable_legacy_keys(save_bytes(legacy, _use_new_zipfile_serialization=False))
    check_loads(data, flatten(legacy))
    write("legacy.pth", data)
    write_expected("legacy.pth", legacy)
    write("legacy_truncated.pth", data[:-6])

    # --- hostile files ---------------------------------------------------------------------------
    write("hostile_reduce.pth", save_bytes({"w": torch.ones(2), "evil": Evil()}))
    write("hostile_raw.pkl", pickle.dumps(Evil(), protocol=2))
    evil_pkl = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0e__import__('os')\x85R."
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        for n, body in (("archive/data.pkl", evil_pkl), ("archive/byteorder", b"little"), ("archive/version", b"3\n")):
            zf.writestr(zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0)), body)
    write("hostile_eval.pt", z.getvalue())

    # --- fuzz seeds: the small files ---------------------------------------------------------------
    for name in ("dtypes.pth", "views.pth", "deflated.pth", "zip64.pth", "legacy.pth", "parameters.pt",
                 "module_state_dict.pt", "embedding_a1111.pt", "v3_dtypes.pt", "hostile_reduce.pth",
                 "hostile_eval.pt", "truncated.pth"):
        (SEEDS / name).write_bytes((OUT / name).read_bytes())

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
