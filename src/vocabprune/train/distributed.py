"""Distributed runs (torchrun, accelerate): one kept vocabulary on every rank.

Every rank must prune to the same kept ids, or the ranks would train different maps while
DDP averages their gradients row by row. `agree_counts` combines the per-rank counts (all-reduce:
"sum" when each rank scanned its own shard, "max" when every rank scanned all the data: then
counts stay those of one scan and min_count means the same), so the kept vocabulary built from
them is the same everywhere; `check_same_kept` compares a digest of the kept vocabulary across
ranks and raises on every rank if they differ (another tokenizer on one rank, say).
See docs/distributed.md for DDP, FSDP and DeepSpeed.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from vocabprune.core.errors import MismatchError, VocabPruneError
from vocabprune.core.vocab import KeptVocab


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def init_from_env() -> bool:
    """Under torchrun (WORLD_SIZE > 1), initialise the process group the way HF Trainer will
    (accelerate's PartialState: gloo on CPU, nccl on CUDA). Returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _dist().is_initialized():
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())  # CPU: gloo (MULTI_CPU)
    return is_distributed()


def _device() -> Any:
    import torch

    dist = _dist()
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_counts(counts: np.ndarray, op: Literal["sum", "max"] = "sum") -> np.ndarray:
    """Combine per-id counts across ranks (no-op in a single process)."""
    counts = np.asarray(counts, dtype=np.int64)
    if not is_distributed():
        return counts
    import torch

    dist = _dist()
    sizes: list[Any] = [None] * world_size()
    dist.all_gather_object(sizes, int(counts.shape[0]))
    if len(set(sizes)) != 1:
        raise MismatchError(f"ranks count different vocabulary sizes: {sizes}")
    tensor = torch.from_numpy(counts.copy()).to(_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.cpu().numpy().astype(np.int64)


def check_same_kept(kept: KeptVocab) -> list[str]:
    """Every rank's kept digest (one entry in a single process); raise on every rank if any
    rank's kept vocabulary differs, before any training step uses it."""
    mine = kept.digest
    if not is_distributed():
        return [mine]
    digests: list[Any] = [None] * world_size()
    _dist().all_gather_object(digests, mine)
    if len(set(digests)) != 1:
        listing = ", ".join(f"rank {i}: {d}" for i, d in enumerate(digests))
        raise MismatchError(
            f"ranks built different kept vocabularies ({listing}); combine their counts with "
            "vocabprune.distributed.agree_counts before building the kept vocabulary"
        )
    return [str(d) for d in digests]


def broadcast_object(value: Any, src: int = 0) -> Any:
    """`value` from rank `src` on every rank (no-op in a single process)."""
    if not is_distributed():
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


def require_same(value: Any, what: str) -> None:
    """Raise on every rank unless every rank passes the same (picklable) value."""
    if not is_distributed():
        return
    values: list[Any] = [None] * world_size()
    _dist().all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise VocabPruneError(f"ranks disagree on {what}: {values}")


def full_state_dict(model: Any, *, cpu_offload: bool = True) -> dict[str, Any]:
    """The full state dict of a model sharded with FSDP2 (or not), gathered on every rank; for a
    pruned model it is the restored, full-vocabulary one (the pruned state's hooks expand it), so
    `AutoModel.from_config(config).load_state_dict(sd)` or save_pretrained(state_dict=sd) writes
    the model full fine-tuning would have written. A collective: call it on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)
    return dict(get_model_state_dict(model, options=options))
