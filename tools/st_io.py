"""Byte-deterministic safetensors writing.

safetensors' Rust serializer keeps __metadata__ in a HashMap, so with more than
one metadata key the header order (and thus the file bytes) changes from run to
run.  save_file_sorted() writes the same format with a canonical header:
__metadata__ first with sorted keys, then the tensors in safetensors' own order.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path


def save_file_sorted(tensors: dict, path, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    data = blob[8 + n :]
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    items = sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0]))
    ordered.update(items)
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data)
