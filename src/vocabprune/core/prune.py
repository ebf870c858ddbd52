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

from vocabprune.core.ids import IdRemapper, UnknownPolicy
from vocabprune.core.loaders import folder_tokenizer
from vocabprune.core.model import prune_target, wrapper_tokenizer
from vocabprune.core.restore import restore
from vocabprune.core.rowstore import RowStore, find_checkpoint_rows, offload
from vocabprune.core.state import PrunedState, PrunedTensor, get_state
from vocabprune.core.surgery import IdsMode, LogitsMode, OutputMode, perform, plan
from vocabprune.core.vocab import KeptVocab


def remapper_for(
    model: nn.Module, kept: KeptVocab, tokenizer: Any, unknown: UnknownPolicy
) -> IdRemapper:
    """The pruned model's remapper: the tokenizer given (checked against the kept vocabulary)
    names tokens in errors, else the one in the model's folder, loaded only if one is needed."""
    loader = None if tokenizer is not None else folder_tokenizer(model, kept)
    return IdRemapper(kept, tokenizer=tokenizer, unknown=unknown, tokenizer_loader=loader)


def prune(
    model: nn.Module,
    kept: KeptVocab,
    *,
    ids: IdsMode = "original",
    output: OutputMode = "auto",
    unknown: UnknownPolicy = "error",
    logits: LogitsMode = "auto",
    tokenizer: Any = None,
    offload_dir: str | None = None,
) -> PrunedState:
    """Swap the model's vocabulary-sized tensors for their kept rows, in place.

    Prune before creating the optimizer (or Trainer) so it holds the small Parameters. `model`
    may be a transformers model or a wrapper holding one (a SentenceTransformer).

    ids: "original" (default): the model keeps reading the tokenizer's ids and remaps them
    inside, at its input embedding; nothing in your data path changes. "kept": the model reads
    ids you remap yourself with RemapCollator / remap_dataset (which then require this mode).
    output: how a vocabulary-sized output head (tied or untied; tied heads stay tied) is pruned.
    "auto" (default) = "frozen": the full softmax, the dropped rows held once, frozen (no
    gradient, no optimizer state); logits and the model's own loss are over the whole vocabulary,
    and training gives every trained parameter full fine-tuning's gradient (`chunked_loss(model)`
    tiles that loss for causal LMs). "prune": the restricted head, softmax over the kept ids only
    (cheaper; its loss is over the kept columns, not full fine-tuning's). "auto" means "prune"
    when logits="kept" is asked for, and (with a warning) with ids="kept": both need the
    restricted head; with no output head "auto" prunes the input embedding alone. "keep" leaves
    an untied head full (inputs-only pruning, exact full softmax). generate() while pruned: the
    frozen head can emit ids outside the kept vocabulary, which the pruned embedding cannot read
    back (an error that says so): generate after `restore`, or use "prune".
    unknown: an id outside the kept vocabulary is an error naming the token ("error"), or UNK.
    logits: how a restricted head's logits come out: "auto" (kept columns while training on the
    model's own loss, over the original vocabulary otherwise), "kept" or "full" always (a frozen
    head's are always over the original vocabulary).
    tokenizer: names tokens in errors and is checked against the kept vocabulary (default: the
    wrapper's tokenizer, else the one saved beside the model).
    Returns the state that `restore` consumes (also reachable as vocabprune.get_state(model)).
    """
    target = prune_target(model)
    tokenizer = tokenizer if tokenizer is not None else wrapper_tokenizer(model)
    surgery = plan(target, kept, output=output, ids=ids, logits=logits)
    remapper = remapper_for(target, kept, tokenizer, unknown)
    folder = getattr(target, "name_or_path", None)
    prefix = getattr(target, "base_model_prefix", None)

    def rows(tensor: PrunedTensor, index: torch.Tensor) -> tuple[torch.Tensor, RowStore]:
        live = tensor.live()
        store = find_checkpoint_rows(folder, tensor.names, live, prefix) or offload(
            live, directory=offload_dir
        )
        return live.detach().index_select(tensor.axis, index), store

    return perform(surgery, rows, remapper=remapper, logits=logits)


@contextlib.contextmanager
def pruned(model: nn.Module, kept: KeptVocab, **kwargs: Any) -> Iterator[PrunedState]:
    """Prune for the duration of a block and restore on the way out, even after an error."""
    state = prune(model, kept, **kwargs)
    try:
        yield state
    finally:
        if get_state(model) is not None:
            restore(model)
