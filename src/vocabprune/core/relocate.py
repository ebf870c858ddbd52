"""Finding the pruned tensors' owners again after a wrapper moved them (PEFT).

LoRA on the transformer layers leaves the pruned embedding alone (frozen): restore works before or
after `merge_and_unload`. A trainable embedding through `modules_to_save` is different: PEFT wraps
the embedding in a ModulesToSaveWrapper holding the original module (frozen) and a trained copy
(made from the pruned module, so kept rows only), and `merge_and_unload` puts the trained copy
where the embedding was. `resolve_owners` (called by `restore`) handles both:

- unloaded: the module now at the owner's path holds a kept-rows tensor: it becomes the owner;
- wrapped: the original module stays the owner and every copy in the wrapper is expanded too
  (same dropped rows, its own trained kept rows), so `merge_and_unload` after restore is right.

Anything else at the owner's path (a tensor that is neither, a tie PEFT broke) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.state import PrunedState, PrunedTensor


@dataclass
class WrappedCopy:
    """A PEFT copy of a pruned module (ModulesToSaveWrapper.modules_to_save[name])."""

    module: nn.Module
    attr: str
    tensor: PrunedTensor
    source: nn.Module  # the pruned module it was copied from


def _is_wrapper(module: Any) -> bool:
    return hasattr(module, "original_module") and hasattr(module, "modules_to_save")


def resolve_owners(model: nn.Module, state: PrunedState) -> list[WrappedCopy]:
    copies: list[WrappedCopy] = []
    for tensor in state.tensors:
        new_owners = []
        for module, attr, qualname in tensor.owners:
            path = qualname.rsplit(".", 1)[0] if "." in qualname else ""
            try:
                current = model.get_submodule(path) if path else model
            except AttributeError as exc:
                raise VocabPruneError(
                    f"cannot restore {qualname}: the model no longer has {path!r}"
                ) from exc
            if current is module:
                new_owners.append((module, attr, qualname))
                continue
            if _is_wrapper(current) and current.original_module is module:
                new_owners.append((module, attr, qualname))
                for copy in current.modules_to_save.values():
                    value = getattr(copy, attr, None)
                    if value is None or value.shape[tensor.axis] != state.kept.size:
                        raise VocabPruneError(f"PEFT copy of {qualname} is not kept-rows sized")
                    copies.append(WrappedCopy(copy, attr, tensor, module))
                continue
            value = getattr(current, attr, None)
            if (
                isinstance(value, torch.Tensor)
                and value.ndim > tensor.axis
                and value.shape[tensor.axis] == state.kept.size
            ):  # merge_and_unload put PEFT's trained copy here
                new_owners.append((current, attr, qualname))
                for change in state.module_changes:
                    if change.obj is module:
                        change.obj = current
                continue
            raise VocabPruneError(
                f"cannot restore {qualname}: the module there was replaced by "
                f"{type(current).__name__}, which vocabprune does not know (restore before "
                "wrapping it, or merge_and_unload first)"
            )
        values = {id(getattr(m, a)) for m, a, _ in new_owners}
        if len(values) > 1:
            raise VocabPruneError(
                f"cannot restore {tensor.name}: its owners {[q for _, _, q in new_owners]} no "
                "longer share one tensor (PEFT replaced one of them); restore before merging"
            )
        tensor.owners = new_owners
    return copies


def expand_copy(copy: WrappedCopy, state: PrunedState, dropped_scale: float | None) -> torch.Tensor:
    """The full tensor for a PEFT copy: the original dropped rows with the copy's kept rows."""
    return state.expand(copy.tensor, dropped_scale, live=getattr(copy.module, copy.attr))
