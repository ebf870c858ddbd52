"""Restore: write the trained rows back into the full matrices; the model is ordinary again.

The untouched rows come back from the row store (the model's own checkpoint, memory-mapped, or
the offloaded copy). `dropped_scale` multiplies the rows that were not kept: it is how decoupled
weight decay, which full fine-tuning applies to rows that never get a gradient, is reproduced.
"""

from __future__ import annotations

from torch import nn

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.model import state_owner
from vocabprune.core.relocate import expand_copy, resolve_owners
from vocabprune.core.state import detach, get_state, is_sharded, zero3_managed


def restore(model: nn.Module, *, dropped_scale: float | None = None) -> nn.Module:
    """Put the full-vocabulary tensors back (trained rows included) and undo every change.

    The dropped rows are multiplied by `dropped_scale` when given, else by the factor a
    `vocabprune.track_weight_decay` tracker (or the Trainer callback) recorded for each tensor.
    """
    state = get_state(model)
    if state is None:
        raise VocabPruneError("model is not pruned: nothing to restore")
    owner = state_owner(model)
    assert owner is not None
    if any(is_sharded(t.live()) or zero3_managed(t.live()) for t in state.tensors):
        raise VocabPruneError(
            "the pruned model is sharded (FSDP2 DTensors or DeepSpeed ZeRO-3 partitions): its "
            "full state dict (FSDP2: vocabprune.train.distributed.full_state_dict(model); ZeRO-3: "
            "model.state_dict() inside deepspeed.zero.GatheredParameters) is already the "
            "restored full-vocabulary one; load it into an unsharded model"
        )
    copies = resolve_owners(owner, state)  # PEFT: unloaded or wrapped (modules_to_save) owners
    expanded = []
    for tensor in state.tensors:
        expanded.append((tensor, state.expand(tensor, dropped_scale), tensor.live().requires_grad))
    copy_full = [(c, expand_copy(c, state, dropped_scale)) for c in copies]
    # Every read succeeded: only now change the model.
    for tensor, full, requires_grad in expanded:
        tensor.set(nn.Parameter(full, requires_grad=requires_grad) if tensor.is_parameter else full)
        tensor.store.close()
    for copy, full in copy_full:  # trained copies inside PEFT wrappers (modules_to_save)
        old = getattr(copy.module, copy.attr)
        setattr(copy.module, copy.attr, nn.Parameter(full, requires_grad=old.requires_grad))
        for change in state.module_changes:
            if change.obj is copy.source:
                setattr(copy.module, change.attr, change.old)
    for change in state.module_changes + state.config_changes:
        change.revert()
    for extra in state.extras.values():  # e.g. a weight-decay tracker's optimizer hooks
        getattr(extra, "detach", lambda: None)()
    detach(owner, state)
    return model
