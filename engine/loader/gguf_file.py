"""A GGUF file's scalar metadata and its tensors, read in one pass over the header.

`gguf.GGUFReader` builds a numpy view for every element of every metadata array: a file with a
262k-token vocabulary (Gemma 3) takes it ~40 s on two cores before the first weight, though the
weights need none of those arrays. Here arrays are skipped (their elements' lengths are read,
nothing is decoded) and scalars are decoded; tensors are numpy views of a memory map of the file,
shaped as `gguf.GGUFReader` shapes them (quantized types as rows of bytes), so
`gguf.quants.dequantize` takes them as they are.

Layout (GGUF v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, metadata count
u64; each metadata entry a string key, a u32 value type and the value (arrays: u32 element type,
u64 count, the elements; strings: u64 length, UTF-8 bytes); each tensor info a string name, u32
dimension count, u64 dimensions (fastest first), u32 ggml type, u64 offset; the data from the
next multiple of `general.alignment` (32 unless set).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_SIZES = {t: struct.calcsize(f) for t, f in _SCALARS.items()}
# ggml types stored as plain values (not blocks), and their numpy dtypes
_PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
          28: np.float64}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: int                # a gguf.GGMLQuantizationType value
    shape: tuple[int, ...]          # GGUF order: fastest dimension first
    data: np.ndarray                # read-only view of the file


class GGUFFile:
    def __init__(self, path: str):
        self.path = path
        self._map = np.memmap(path, mode="r")
        buf = memoryview(self._map)
        if bytes(buf[:4]) != _MAGIC:
            raise ValueError(f"'{path}' is not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"'{path}': GGUF version {version} is not supported")
        self.version = version
        off = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, off = _string(buf, off)
            (vtype,) = struct.unpack_from("<I", buf, off)
            value, off = _value(buf, off + 4, vtype)
            self.metadata[key] = value
        infos = []
        for _ in range(n_tensors):
            name, off = _string(buf, off)
            (n_dims,) = struct.unpack_from("<I", buf, off)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
            ttype, toff = struct.unpack_from("<IQ", buf, off + 4 + 8 * n_dims)
            off += 4 + 8 * n_dims + 12
            infos.append((name, ttype, tuple(int(d) for d in dims), toff))
        align = int(self.metadata.get("general.alignment", 32))
        start = -(-off // align) * align
        self.tensors = [GGUFTensor(name, ttype, dims, self._data(start + toff, ttype, dims))
                        for name, ttype, dims, toff in infos]

    def _data(self, offset: int, ttype: int, dims: tuple[int, ...]) -> np.ndarray:
        rows = tuple(reversed(dims))  # row-major: slowest first
        n = int(np.prod(dims))
        if ttype in _PLAIN:
            dtype = np.dtype(_PLAIN[ttype])
            return self._map[offset:offset + n * dtype.itemsize].view(dtype).reshape(rows)
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        if dims[0] % block:
            raise ValueError(f"'{self.path}': a row of {dims[0]} values is not whole blocks of "
                             f"{block}")
        n_bytes = n // block * size
        return self._map[offset:offset + n_bytes].reshape(*rows[:-1], dims[0] // block * size)


def _string(buf: memoryview, off: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, off)
    return bytes(buf[off + 8:off + 8 + n]).decode("utf-8"), off + 8 + n


def _value(buf: memoryview, off: int, vtype: int) -> tuple[Any, int]:
    """(value, offset past it); arrays are skipped and read as None."""
    if vtype in _SCALARS:
        return struct.unpack_from(_SCALARS[vtype], buf, off)[0], off + _SIZES[vtype]
    if vtype == _STRING:
        return _string(buf, off)
    if vtype == _ARRAY:
        etype, count = struct.unpack_from("<IQ", buf, off)
        off += 12
        if etype in _SIZES:
            return None, off + count * _SIZES[etype]
        if etype == _STRING:
            unpack = struct.Struct("<Q").unpack_from
            for _ in range(count):
                off += 8 + unpack(buf, off)[0]
            return None, off
        for _ in range(count):  # arrays of arrays: not written by llama.cpp, but well-formed
            _, off = _value(buf, off, etype)
        return None, off
    raise ValueError(f"unknown GGUF value type {vtype}")
