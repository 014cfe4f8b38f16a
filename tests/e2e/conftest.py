"""Black-box tests: they run the real `sdserve` binary (path in $SDSERVE_BIN)."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


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
