"""Where the original full matrices live while a model is pruned: never a second copy in memory.

When the model was loaded from a safetensors checkpoint, the untouched rows already live in that
file: we memory-map them back at restore. Otherwise they are offloaded, to CPU RAM when the
tensor sits on an accelerator and to a temporary safetensors file when it sits on the CPU.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vocabprune.core.checkpoint import (
    CheckpointError,
    candidate_keys,
    checkpoint_files,
    read_tensor,
)
from vocabprune.core.errors import MismatchError
from vocabprune.core.files import Claim, clean_stale


class RowStore(Protocol):
    """The original full tensor, readable again at restore."""

    description: str

    def full(self) -> torch.Tensor:
        """A fresh CPU tensor holding the original full matrix."""
        ...

    def close(self) -> None:
        """Release whatever the store holds (temporary files)."""
        ...


class CheckpointRows:
    """Rows read back from the model's own safetensors checkpoint, memory-mapped."""

    def __init__(self, path: Path, key: str, dtype: torch.dtype) -> None:
        self.path = path
        self.key = key
        self.dtype = dtype
        self.description = f"checkpoint {path.name}:{key}"
        self._identity = _file_identity(path)

    def full(self) -> torch.Tensor:
        if not self.path.exists():
            raise MismatchError(
                f"checkpoint {self.path} that held the original rows of {self.key!r} is gone"
            )
        if _file_identity(self.path) != self._identity:
            raise MismatchError(
                f"checkpoint {self.path} that held the original rows of {self.key!r} was "
                "rewritten while the model was pruned; its rows are no longer the originals"
            )
        return read_tensor(self.path, self.key).to(self.dtype)

    def close(self) -> None:
        return None


def _file_identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def move_out_of(store: RowStore, folder: str | os.PathLike[str]) -> RowStore:
    """`store`, or an offloaded copy of it when it reads from a checkpoint inside `folder`
    (about to be overwritten by a save into that folder)."""
    if not isinstance(store, CheckpointRows):
        return store
    try:
        inside = store.path.resolve().parent == Path(folder).resolve()
    except OSError:
        return store
    if not inside:
        return store
    moved = offload(store.full())
    store.close()
    return moved


class MemoryRows:
    """Rows kept in CPU RAM: used when the model trains on an accelerator."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor.detach().to("cpu", copy=True)
        self.description = "CPU memory"

    def full(self) -> torch.Tensor:
        return self._tensor.clone()

    def close(self) -> None:
        self._tensor = torch.empty(0)


class TempFileRows:
    """Rows written to a temporary safetensors file: used when the model trains on the CPU."""

    def __init__(self, tensor: torch.Tensor, directory: str | None = None) -> None:
        folder = Path(directory or tempfile.gettempdir())
        clean_stale(folder)
        claim = Claim(folder / "rows")  # the writer's lock: no other run removes the file
        self.path = claim.path("rows-", ".safetensors")
        self._finalizer = weakref.finalize(self, claim.release)
        save_file({"rows": tensor.detach().contiguous().cpu()}, str(self.path))
        self.dtype = tensor.dtype
        self.description = f"temporary file {self.path}"

    def full(self) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor("rows")

    def close(self) -> None:
        self._finalizer()


def _equal_to_stored(tensor: torch.Tensor, sl: object, chunk_elements: int = 1 << 24) -> bool:
    """Every row of `tensor` bitwise equal to the checkpoint slice (read in chunks of rows)."""
    live = tensor.detach()
    n = live.shape[0]
    per_row = max(1, live[0].numel()) if n else 1
    step = max(1, chunk_elements // per_row)
    for start in range(0, n, step):
        stop = min(n, start + step)
        stored = sl[start:stop].to(tensor.dtype)  # type: ignore[index]
        if not torch.equal(live[start:stop].cpu(), stored):
            return False
    return True


def find_checkpoint_rows(
    folder: str | os.PathLike[str] | None,
    qualnames: list[str],
    tensor: torch.Tensor,
    base_prefix: str | None,
) -> CheckpointRows | None:
    """The checkpoint tensor equal to `tensor`, if the model was loaded from one and is unchanged.

    Equality is checked on every row (bitwise, after casting to the live dtype, in chunks), so a
    matrix the user changed after loading, even in one row, is offloaded instead of read back
    wrong.
    """
    if not folder:
        return None
    root = Path(folder)
    if not root.is_dir():
        return None
    try:
        files = checkpoint_files(root)
    except CheckpointError:
        return None  # an unreadable checkpoint cannot hold the originals: offload instead
    for qualname in qualnames:
        for key in candidate_keys(qualname, base_prefix):
            path = files.get(key)
            if path is None:
                continue
            with safe_open(str(path), framework="pt") as f:
                sl = f.get_slice(key)
                if tuple(sl.get_shape()) == tuple(tensor.shape) and _equal_to_stored(tensor, sl):
                    return CheckpointRows(path, key, tensor.dtype)
    return None


def offload(tensor: torch.Tensor, *, directory: str | None = None) -> RowStore:
    """Keep the original tensor out of the memory being saved: CPU RAM or a temporary file."""
    if tensor.device.type == "cpu":
        return TempFileRows(tensor, directory)
    return MemoryRows(tensor)
