"""The training loss of a pruned causal LM in tiles, through TRL's fused LM-head kernel.

Long sequences make the logits and their gradient a large part of a pruned step's peak memory even
over the kept columns; the kernel computes the cross-entropy tile by tile from the hidden states
and the head weight (forward and recomputed backward). Its tiles are 4,096 tokens x 32,768
columns, so a pruned head fits one tile: below 4,096 tokens per step the logits are still
materialized once, and on CPU (no Triton) its torch fallback adds tile-sized temporaries; the
measured peak there is higher, not lower (benchmarks/README.md). It is for GPUs and long steps.

The kernel and its model integration are TRL's (`trl.trainer.utils.add_fused_lm_head`): with the
head pruned, the tiles span the kept columns and the labels are the kept ids the pruned model's
own hook produced. The loss equals the unchunked one (the kept-vocabulary cross-entropy) to float
rounding.

    vp.prune(model, kept)
    vp.chunked_loss(model)        # while training with labels; generate() etc. are unchanged
    ...train...
    vp.restore(model)             # also takes the chunked head off
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError
from vocabprune.core.model import model_name, state_owner
from vocabprune.core.state import get_state

EXTRA_KEY = "chunked_loss"


class _ChunkedHead:
    """What `chunked_loss` added to a model, removed again at restore."""

    def __init__(self, model: nn.Module, had_forward: bool) -> None:
        self.model = model
        self.had_forward = had_forward

    def detach(self) -> None:
        if not self.had_forward:
            self.model.__dict__.pop("forward", None)


def chunked_loss(model: Any) -> Any:
    """Compute the pruned causal LM's training loss in chunks (needs trl); returns the model.

    Only forward calls that train on the model's own loss (labels given, gradients enabled, the
    model in training mode) take the chunked path; they return the loss and per-token
    log-probabilities instead of logits. Everything else (generation, evaluation) is unchanged.
    """
    owner = state_owner(model)
    state = get_state(model)
    if owner is None or state is None:
        raise VocabPruneError("chunked_loss needs a pruned model: prune it first")
    causal = getattr(owner, "can_generate", lambda: False)() and not getattr(
        owner.config, "is_encoder_decoder", False
    )
    if not state.output_pruned or not causal:
        raise UnsupportedModelError(
            f"chunked_loss is for causal language models with a pruned head; "
            f"{model_name(owner)!r} is not one"
        )
    if EXTRA_KEY in state.extras:
        return model
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError as exc:
        raise VocabPruneError("chunked_loss needs trl: pip install 'vocabprune[trl]'") from exc
    had_forward = "forward" in owner.__dict__
    add_fused_lm_head(owner, outputs=("log_probs",))
    state.extras[EXTRA_KEY] = _ChunkedHead(owner, had_forward)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        training = module.training and torch.is_grad_enabled()
        if state.active and training and kwargs.get("labels") is not None:
            kwargs.setdefault("fused_lm_head", True)
        return args, kwargs

    state.forward_handles.append(owner.register_forward_pre_hook(hook, with_kwargs=True))
    return model
