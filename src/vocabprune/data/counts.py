"""Count files: per-id counts saved with the tokenizer's fingerprint, so shards of a corpus can be
counted anywhere (other machines, Dask, Ray, Spark) and merged by summing.

Formats: `.safetensors` (the counts as one int64 tensor, fingerprint and vocabulary size in the
header's metadata) or `.npy` (the array; the metadata in `FILE.npy.json` beside it). Nothing is
pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.core.errors import MismatchError, ScanError
from vocabprune.core.files import atomic_file, read_json

FORMAT = "vocabprune.counts"
SUFFIXES = (".safetensors", ".npy")
MAX_VOCAB = 2**26


@dataclass(frozen=True)
class Counts:
    """Per-id counts of some data, and what they were counted with."""

    counts: np.ndarray
    tokenizer_fingerprint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.counts.size)

    def check_tokenizer(self, fingerprint: str | None, source: str) -> None:
        if fingerprint and self.tokenizer_fingerprint and fingerprint != self.tokenizer_fingerprint:
            raise MismatchError(
                f"{source} was counted with another tokenizer (fingerprint "
                f"{self.tokenizer_fingerprint}, this one has {fingerprint})"
            )


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        shown = suffix or "(none)"
        raise ScanError(f"{path}: count files are {' or '.join(SUFFIXES)}, not {shown}")
    return suffix


def save_counts(path: str | os.PathLike[str], counts: Counts) -> Path:
    """Write a count file atomically (.safetensors, or .npy with a .json beside it)."""
    target = Path(path)
    suffix = _suffix(target)
    meta = {
        "format": FORMAT,
        "vocab_size": str(counts.vocab_size),
        "tokenizer_fingerprint": counts.tokenizer_fingerprint or "",
        "meta": json.dumps(counts.meta, default=str),
    }
    array = np.ascontiguousarray(counts.counts, dtype=np.int64)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        with atomic_file(target) as tmp:
            save_file({"counts": array}, str(tmp), metadata=meta)
        return target
    # both written before either is placed: a full disk leaves neither
    sidecar = target.with_name(target.name + ".json")
    with atomic_file(target) as tmp, atomic_file(sidecar) as tmp_meta:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        tmp_meta.write_text(json.dumps(meta))
    return target


def _checked(array: Any, source: str) -> np.ndarray:
    counts = np.asarray(array)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ScanError(f"{source}: counts must be a 1-d array of integers")
    if counts.size == 0 or counts.size > MAX_VOCAB:
        raise ScanError(f"{source}: {counts.size} counts is not a vocabulary size")
    if counts.size and int(counts.min()) < 0:
        raise ScanError(f"{source}: counts must not be negative")
    return counts.astype(np.int64, copy=False)


def load_counts(path: str | os.PathLike[str]) -> Counts:
    """Read a count file; anything else (missing, truncated, another format) is one clear error."""
    source = Path(path)
    if not source.is_file():
        raise ScanError(f"count file not found: {source}")
    if _suffix(source) == ".safetensors":
        from safetensors import SafetensorError, safe_open

        from vocabprune.core.checkpoint import read_header

        read_header(source)  # complete and readable, or one clear error
        try:
            with safe_open(str(source), framework="np") as f:
                meta = dict(f.metadata() or {})
                array = f.get_tensor("counts") if "counts" in list(f.keys()) else None
        except SafetensorError as exc:
            raise ScanError(f"{source} is not a readable count file: {exc}") from exc
        if array is None:
            raise ScanError(f"{source} holds no 'counts' tensor")
    else:
        meta = read_json(source.with_name(source.name + ".json"), "count file metadata")
        try:
            array = np.load(source, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ScanError(f"{source} is not a readable .npy count file: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ScanError(f"{source} is not a vocabprune count file")
    counts = _checked(array, str(source))
    if str(meta.get("vocab_size", counts.size)) != str(counts.size):
        raise ScanError(f"{source}: {counts.size} counts but vocab_size {meta.get('vocab_size')}")
    try:
        extra = json.loads(meta.get("meta") or "{}")
    except (TypeError, ValueError):
        extra = {}
    extra = extra if isinstance(extra, dict) else {}
    return Counts(counts, meta.get("tokenizer_fingerprint") or None, extra)


def merge_counts(parts: Sequence[Counts | str | os.PathLike[str]]) -> Counts:
    """The sum of several counts (files or Counts): same vocabulary size and tokenizer."""
    if not parts:
        raise ScanError("no counts to merge")
    loaded = [p if isinstance(p, Counts) else load_counts(p) for p in parts]
    first = loaded[0]
    total = np.zeros(first.vocab_size, dtype=np.int64)
    for i, part in enumerate(loaded):
        name = str(parts[i]) if not isinstance(parts[i], Counts) else f"counts #{i + 1}"
        if part.vocab_size != first.vocab_size:
            raise MismatchError(
                f"{name} counts {part.vocab_size} ids, the first {first.vocab_size}: not the "
                "same vocabulary"
            )
        part.check_tokenizer(first.tokenizer_fingerprint, name)
        total += part.counts
    meta = {
        key: sum(int(p.meta.get(key, 1 if key == "shards" else 0)) for p in loaded)
        for key in ("shards", "examples")
    }
    return Counts(total, first.tokenizer_fingerprint, meta)


def as_counts(counts: Any, fingerprint: str | None, size: int) -> np.ndarray:
    """Counts given as a count file, `Counts` or an array, checked: the same tokenizer
    (fingerprint) and vocabulary size."""
    if isinstance(counts, (str, os.PathLike)):
        counts = load_counts(counts)
    if isinstance(counts, Counts):
        counts.check_tokenizer(fingerprint, "the counts given")
        counts = counts.counts
    array = np.asarray(counts, dtype=np.int64)
    if array.shape != (size,):
        raise ScanError(f"the counts given cover {array.size} ids, the vocabulary {size}")
    return array
