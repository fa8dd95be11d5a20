#!/usr/bin/env python3
"""Read and write safetensors files with numpy only (no torch, no `safetensors` package).

Layout (https://github.com/huggingface/safetensors): an unsigned little-endian 64-bit header size N, N bytes
of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the raw
little-endian tensor bytes; offsets are relative to the end of the header.

    import safetensors_np as st
    tensors, metadata = st.load("weights.safetensors")      # dict name -> np.ndarray (file order), dict
    st.save("out.safetensors", {"w": np.zeros((2, 3), np.float32)}, {"note": "made by numpy"})

BF16 has no numpy dtype: it is read as float32 (exact) and cannot be written.
"""
import json
import os
import struct

import numpy as np

_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U8": "u1", "BOOL": "?",
}


def _dtype_name(a):
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    for k, v in _DTYPES.items():
        if np.dtype(v) == dt:
            return k
    raise ValueError(f"safetensors_np: unsupported dtype {a.dtype}")


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header size {n} exceeds the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    spans = []
    for name, e in header.items():
        b, end = e["data_offsets"]
        shape = tuple(e["shape"])
        raw = data[base + b:base + end]
        if base + end > len(data):
            raise ValueError(f"{path}: tensor {name} extends past the end of the file")
        if e["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32).reshape(shape)
        else:
            if e["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {e['dtype']}")
            dt = np.dtype(_DTYPES[e["dtype"]])
            if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                raise ValueError(f"{path}: tensor {name}: {len(raw)} bytes do not match shape {shape}")
            arr = np.frombuffer(raw, dtype=dt).reshape(shape)
        spans.append((b, end, name))
        out[name] = arr.copy()
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {n0} and {n1} overlap")
    return out, metadata


def save(path, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        raw = a.tobytes()
        header[name] = {"dtype": _dtype_name(a), "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
