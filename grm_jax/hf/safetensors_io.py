"""Reading and writing safetensors files without torch.

Reading memory-maps each file and hands out zero-copy views, so loading touches only the bytes
each device needs. bfloat16 comes through `ml_dtypes`. The format: an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw tensor bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

from grm_jax.hf.paths import member

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file is malformed; the message names the file."""


class SafetensorsFile:
    """A memory-mapped safetensors file: `names()`, `shape(name)`, `get(name)` (a view)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{self.path}: truncated (no header length)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, _MAX_HEADER):
                raise SafetensorsError(f"{self.path}: corrupt header length {header_len} "
                                       f"(file has {size} bytes)")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + header_len
        data_size = size - self._data_start
        self._entries = {}
        for name, e in header.items():
            try:
                dtype = _DTYPES[e["dtype"]]
                shape = tuple(int(s) for s in e["shape"])
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: tensor {name!r}: bad header entry {e!r}") from None
            if end - begin != int(np.prod(shape)) * dtype.itemsize or begin < 0:
                raise SafetensorsError(f"{self.path}: tensor {name!r}: byte range {begin}..{end} does "
                                       f"not hold shape {shape} of {e['dtype']}")
            if end > data_size:
                raise SafetensorsError(f"{self.path}: tensor {name!r} ends at byte {end} but the data "
                                       f"section has {data_size} bytes (file truncated?)")
            self._entries[name] = (dtype, shape, begin, end)
        self._map = None

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        """A read-only view of tensor `name`; bytes are read from disk only when touched."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        dtype, shape, begin, end = self._entries[name]
        start = self._data_start + begin
        return self._map[start:start + (end - begin)].view(dtype).reshape(shape)


def open_checkpoint(directory: str | Path) -> dict[str, SafetensorsFile]:
    """HF tensor name -> the file holding it, for `model.safetensors` or a sharded index."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(member(directory, index.name).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SafetensorsError(f"{index}: not a valid safetensors index ({e})") from None
        if not isinstance(weight_map, dict):
            raise SafetensorsError(f"{index}: weight_map is not an object")
        files = {f: SafetensorsFile(member(directory, f, what="shard"))
                 for f in sorted(set(weight_map.values()), key=str)}
        out = {}
        for name, fname in weight_map.items():
            if name not in files[fname]._entries:
                raise SafetensorsError(f"{index}: lists {name!r} in {fname}, which does not hold it")
            out[name] = files[fname]
        return out
    if single.exists():
        f = SafetensorsFile(member(directory, single.name))
        return {name: f for name in f.names()}
    found = sorted(p.name for p in directory.glob("*"))[:10] if directory.is_dir() else []
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                            f"(found: {found}); only safetensors checkpoints are supported")


def plan_shards(entries: Iterable[tuple[str, tuple[int, ...], np.dtype]], max_bytes: int) -> list[list]:
    """Groups (name, shape, dtype) entries, in order, into shards of at most `max_bytes`."""
    shards, current, used = [], [], 0
    for entry in entries:
        n = int(np.prod(entry[1])) * np.dtype(entry[2]).itemsize
        if current and used + n > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(entry)
        used += n
    if current:
        shards.append(current)
    return shards


def write_file(path: str | Path, entries: list[tuple[str, tuple[int, ...], np.dtype]],
               tensors: Iterator[np.ndarray], metadata: dict | None = None) -> int:
    """Writes a safetensors file whose header is known up front, pulling tensors one at a time.

    Returns the number of data bytes written.
    """
    header, offset = {}, 0
    for name, shape, dtype in entries:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise ValueError(f"cannot write {name!r}: dtype {dtype} has no safetensors name")
        n = int(np.prod(shape)) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, shape, dtype), arr in zip(entries, tensors, strict=True):
            arr = np.ascontiguousarray(arr, dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: got shape {arr.shape}, planned {tuple(shape)}")
            arr.tofile(f)
    return offset
