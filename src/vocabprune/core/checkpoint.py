"""Safetensors checkpoints, read by hand where we need more than `safe_open`: the header (with
one clear error for a truncated or corrupt file), the tensor -> file index of a model folder,
positioned reads of selected rows, and a cheap fingerprint of a file.

This is the only place that parses a safetensors header.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vocabprune.core.errors import VocabPruneError

ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100 * 2**20
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(VocabPruneError):
    """A checkpoint file is missing, truncated or corrupt."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of its data in the file
    end: int

    @property
    def row_bytes(self) -> int:
        return (self.end - self.begin) // max(self.shape[0], 1) if self.shape else 0


@dataclass(frozen=True)
class Header:
    """The parsed header of a safetensors file."""

    path: Path
    raw: bytes
    tensors: dict[str, TensorInfo]
    size: int  # the file's length in bytes

    @property
    def sha256(self) -> str:
        """Fingerprint of the header (names, shapes, dtypes, offsets): cheap file identity."""
        return hashlib.sha256(self.raw).hexdigest()[:16]


def read_header(path: str | os.PathLike[str], *, complete: bool = True) -> Header:
    """Parse a safetensors header; with `complete`, also check the file holds every byte the
    header describes. A missing, truncated or corrupt file is one CheckpointError naming it."""
    source = Path(path)
    try:
        size = source.stat().st_size
        with open(source, "rb") as f:
            raw8 = f.read(8)
            n = struct.unpack("<Q", raw8)[0] if len(raw8) == 8 else -1
            raw = f.read(n) if 0 < n <= min(size - 8, MAX_HEADER) else b""
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint file not found: {source}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source}: {exc.strerror or exc}") from exc
    if n <= 0 or len(raw) != n:
        raise CheckpointError(f"{source} is not a valid safetensors file (truncated header)")
    try:
        table = json.loads(raw)
        table.pop("__metadata__", None)
        tensors = {
            str(key): TensorInfo(
                ST_DTYPES[info["dtype"]],
                tuple(int(s) for s in info["shape"]),
                8 + n + int(info["data_offsets"][0]),
                8 + n + int(info["data_offsets"][1]),
            )
            for key, info in table.items()
        }
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{source} is not a valid safetensors file (corrupt header)") from exc
    end = max((t.end for t in tensors.values()), default=8 + n)
    if complete and end != size:
        raise CheckpointError(
            f"{source} is truncated or corrupt: {size:,} bytes, the header describes {end:,}"
        )
    return Header(source, raw, tensors, size)


def header_sha256(path: str | os.PathLike[str]) -> str:
    """Fingerprint of a safetensors file's header."""
    return read_header(path, complete=False).sha256


def checkpoint_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Map tensor name -> safetensors file for a Hugging Face folder (single or sharded); empty
    when the folder holds no safetensors checkpoint."""
    root = Path(folder)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return {str(k): root / str(v) for k, v in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a valid checkpoint index") from exc
    single = root / SINGLE_FILE
    if single.is_file():
        return dict.fromkeys(read_header(single).tensors, single)
    return {}


def candidate_keys(qualname: str, prefix: str | None) -> list[str]:
    """Checkpoint keys a model parameter may be stored under: as named, without the base-model
    prefix (a base checkpoint loaded into a head model), or with it (the reverse)."""
    keys = [qualname]
    head, _, rest = qualname.partition(".")
    if prefix and head == prefix and rest:
        keys.append(rest)
    if prefix and head != prefix:
        keys.append(f"{prefix}.{qualname}")
    return keys


def stored_keys(files: dict[str, Path], qualnames: list[str], prefix: str | None) -> list[str]:
    """Every checkpoint key that holds one of `qualnames` (a tied tensor may be stored under
    each of its names), in the order of `qualnames`."""
    found: list[str] = []
    for qualname in qualnames:
        for key in candidate_keys(qualname, prefix):
            if key in files and key not in found:
                found.append(key)
    return found


def find_key(files: dict[str, Path], qualnames: list[str], prefix: str | None) -> str | None:
    """The checkpoint key holding one of `qualnames` (tied names: the first stored), or None."""
    keys = stored_keys(files, qualnames, prefix)
    return keys[0] if keys else None


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids -> (start id, length) of each run of consecutive ids."""
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [ids.size]))
    return ids[starts], ends - starts


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(f"{path} ended early while reading rows (truncated)")
        done += n


def read_rows(path: str | os.PathLike[str], key: str, ids: np.ndarray | None) -> torch.Tensor:
    """Rows `ids` (sorted, unique; None = all) of a tensor in a safetensors file.

    Positioned reads straight into the result, one per run of consecutive ids: the file is never
    memory-mapped, so only the result's own bytes are ever read or held.
    """
    header = read_header(path)
    info = header.tensors.get(key)
    if info is None:
        raise CheckpointError(f"{header.path} holds no tensor {key!r}")
    rows = info.shape[0] if ids is None else int(ids.size)
    out = torch.empty([rows, *info.shape[1:]], dtype=info.dtype)
    if out.numel() == 0:
        return out
    flat = memoryview(out.view(-1).view(torch.uint8).numpy()).cast("B")
    fd = os.open(header.path, os.O_RDONLY)
    try:
        if ids is None:
            _pread_into(fd, flat, info.begin, header.path)
            return out
        starts, lengths = _runs(np.asarray(ids, dtype=np.int64))
        dst = 0
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            nbytes = length * info.row_bytes
            _pread_into(
                fd, flat[dst : dst + nbytes], info.begin + start * info.row_bytes, header.path
            )
            dst += nbytes
    finally:
        os.close(fd)
    return out


def read_tensor(path: str | os.PathLike[str], key: str) -> torch.Tensor:
    """One whole tensor of a safetensors file (through safetensors, memory-mapped)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {key!r} from {path}: {exc}") from exc
