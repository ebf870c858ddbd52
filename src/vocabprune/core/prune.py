"""Pruning: swap vocabulary-sized Parameters for their kept rows, in place.

The surgery plan (surgery.py) decides what changes; this module supplies the rows: the live
tensor sliced to the kept ids, and a store for the originals (the checkpoint the model was loaded
from when its rows are unchanged, else an offloaded copy). `restore` puts everything back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vocabprune.core.restore import restore
from vocabprune.core.rowstore import RowStore, find_checkpoint_rows, offload
from vocabprune.core.state import PrunedState, PrunedTensor, get_state
from vocabprune.core.surgery import OutputMode, perform, plan
from vocabprune.core.vocab import KeptVocab


def prune(
    model: nn.Module,
    kept: KeptVocab,
    *,
    output: OutputMode = "auto",
    offload_dir: str | None = None,
) -> PrunedState:
    """Swap the model's vocabulary-sized tensors for their kept rows, in place.

    Prune before creating the optimizer (or Trainer) so it holds the small Parameters.
    output: "auto"/"prune" prune a vocabulary-sized output head too (tied heads stay tied);
    "keep" leaves an untied head full (inputs-only pruning, exact full softmax).
    Returns the state that `restore` consumes (also reachable as vocabprune.get_state(model)).
    """
    surgery = plan(model, kept, output=output)
    folder = getattr(model, "name_or_path", None)
    prefix = getattr(model, "base_model_prefix", None)

    def rows(tensor: PrunedTensor, index: torch.Tensor) -> tuple[torch.Tensor, RowStore]:
        live = tensor.live()
        store = find_checkpoint_rows(folder, tensor.names, live, prefix) or offload(
            live, directory=offload_dir
        )
        return live.detach().index_select(tensor.axis, index), store

    return perform(surgery, rows)


@contextlib.contextmanager
def pruned(model: nn.Module, kept: KeptVocab, **kwargs: Any) -> Iterator[PrunedState]:
    """Prune for the duration of a block and restore on the way out, even after an error."""
    state = prune(model, kept, **kwargs)
    try:
        yield state
    finally:
        if get_state(model) is not None:
            restore(model)
