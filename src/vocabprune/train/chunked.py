"""The training loss of a pruned causal LM in tiles of tokens (train/tiled_ce.py).

With long sequences the [tokens x kept] logits, their float32 copy, log-softmax and gradient are a
large part of a pruned step's peak memory, even over the kept columns. Here the model's forward,
while it trains on its own loss, runs the backbone and gives the last hidden states and the head
weight to a tiled cross-entropy instead: at most one tile of logits (default about 8M values,
32 MB in float32) lives at a time, forward and backward. The loss is the model's own (kept-column
cross-entropy, mean over labelled tokens or over `num_items_in_batch`) to float rounding.

    vp.prune(model, kept)
    vp.chunked_loss(model)        # while training with labels; generate(), evaluation unchanged
    ...train...
    vp.restore(model)             # also takes the chunked forward off

With a frozen head (prune(output="frozen")) the tiles cover the whole vocabulary: the dropped
ids' columns come from the frozen rows (tiled_ce's frozen columns), so the loss and every
gradient are the full softmax's, still without holding the [tokens x vocabulary] logits.

Only a plain linear head is tiled. Its soft-capping and logit scale are read from the config, and
on attaching, the tiled head's logits are checked against the model's own on a few tokens, so a
model that computes its logits another way is refused instead of trained on a different loss.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError
from vocabprune.core.hooks import FUSED_CALL, frozen_parts
from vocabprune.core.model import model_name, output_head, state_owner
from vocabprune.core.state import PrunedState, get_state
from vocabprune.train.tiled_ce import IGNORE, tile_logits, tiled_cross_entropy, tiled_token_stats

EXTRA_KEY = "chunked_loss"
TILE_VALUES = 1 << 23  # logits per tile by default: 32 MB in float32
# Arguments of a causal LM's forward that its backbone does not take.
_HEAD_ONLY = ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep", "return_dict")


class _ChunkedForward:
    """What `chunked_loss` added to a model, removed again at restore."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def detach(self) -> None:
        self.model.__dict__.pop("forward", None)


def chunked_loss(model: Any, *, tile_tokens: int | None = None) -> Any:
    """Compute the pruned causal LM's training loss `tile_tokens` tokens at a time (default: about
    8M logits per tile); returns the model.

    Forward calls that train on the model's own loss (labels given, gradients enabled, training
    mode) return the loss without logits; everything else (generation, evaluation) is unchanged.
    """
    owner = state_owner(model)
    state = get_state(model)
    if owner is None or state is None:
        raise VocabPruneError("chunked_loss needs a pruned model: prune it first")
    name = model_name(owner)
    causal = getattr(owner, "can_generate", lambda: False)() and not getattr(
        owner.config, "is_encoder_decoder", False
    )
    if not state.output_pruned or not causal:
        raise UnsupportedModelError(
            f"chunked_loss is for causal language models with a pruned head; {name!r} is not one"
        )
    if tile_tokens is not None and (isinstance(tile_tokens, bool) or int(tile_tokens) < 1):
        raise VocabPruneError(f"chunked_loss: tile_tokens must be >= 1, got {tile_tokens!r}")
    if EXTRA_KEY in state.extras:
        return model
    text = owner.config.get_text_config()
    if getattr(text, "output_router_logits", False):
        raise UnsupportedModelError(
            f"chunked_loss does not add the router loss of mixture-of-experts {name!r}"
        )
    if "forward" in owner.__dict__:
        raise UnsupportedModelError(
            f"{name!r} already has its own forward on the instance (another fused head?); "
            "chunked_loss would replace it"
        )
    columns = state.kept.vocab_size if state.frozen_head else state.kept.size
    tile = int(tile_tokens) if tile_tokens is not None else max(1, TILE_VALUES // columns)
    head = _head_math(text)
    _check_head(owner, state, head)
    original = owner.forward
    params = [
        p.name
        for p in inspect.signature(original).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    @functools.wraps(original)  # generate() and the Trainer read the signature
    def forward(*args: Any, **kwargs: Any) -> Any:
        training = owner.training and torch.is_grad_enabled()
        if not (state.active and training and kwargs.get("labels") is not None):
            return original(*args, **kwargs)
        if len(args) > len(params):
            raise VocabPruneError(f"{name!r} takes at most {len(params)} positional arguments")
        kwargs.update(zip(params, args, strict=False))
        return _tiled_forward(owner, state, tile, head, kwargs)

    owner.forward = forward
    state.extras[EXTRA_KEY] = _ChunkedForward(owner)
    return model


def _head_math(text: Any) -> tuple[float, float | None]:
    """(logit scale, soft-cap) of a causal LM's head, from its text config."""
    scale = getattr(text, "logit_scale", None)  # Cohere multiplies its logits
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = 1.0 / text.logits_scaling  # Granite divides them
    return float(1.0 if scale is None else scale), getattr(text, "final_logit_softcapping", None)


def _plain_head(owner: nn.Module) -> nn.Linear:
    """The LM head, which must be an nn.Linear (not a PEFT-wrapped or custom layer)."""
    head = output_head(owner)
    if not isinstance(head, nn.Linear):
        raise UnsupportedModelError(
            f"chunked_loss needs an nn.Linear head; {model_name(owner)!r} has "
            f"{type(head).__name__} (apply PEFT after chunked_loss, and not to the head)"
        )
    return head


def _frozen(state: PrunedState, weight: torch.Tensor) -> dict[str, Any]:
    """The frozen columns of a frozen head (scaled by their weight-decay factor), else none."""
    if not state.frozen_head:
        return {}
    rows, bias, scale, bias_scale = frozen_parts(state, weight)
    return {
        "frozen": rows,  # scaled inside the tiles: no copy of the frozen rows per step
        "frozen_scale": scale,
        "frozen_bias": bias if bias is None or bias_scale == 1.0 else bias * bias_scale,
    }


def _all_columns(
    state: PrunedState, hidden: torch.Tensor, linear: nn.Linear, head: tuple[float, float | None]
) -> torch.Tensor:
    """The tiles' logits of `hidden` in the model's column order (a frozen head's: token ids)."""
    weight, bias = _weights(linear)
    got = tile_logits(hidden, weight, bias, *head)
    extra = _frozen(state, weight)
    if not extra:
        return got
    frozen = tile_logits(
        hidden, extra["frozen"], extra["frozen_bias"], *head, weight_scale=extra["frozen_scale"]
    )
    return torch.cat([got, frozen], dim=-1).index_select(-1, state.column_order(got.device))


def _weights(head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head's weight and bias as plain tensors (FSDP2 shards are gathered)."""
    weight, bias = head.weight, head.bias
    if hasattr(weight, "full_tensor"):  # a DTensor
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    return weight, bias


def _check_head(owner: nn.Module, state: PrunedState, head: tuple[float, float | None]) -> None:
    """Refuse a model whose logits are not what the tiles compute from its last hidden states."""
    linear = _plain_head(owner)
    kept = state.kept.kept_ids[: min(4, state.kept.size)]
    ids = kept if state.ids == "original" else range(len(kept))
    probe = torch.as_tensor([list(ids)], dtype=torch.long, device=linear.weight.device)
    was_training = owner.training
    owner.eval()
    try:
        with torch.no_grad():
            want = type(owner).forward(owner, input_ids=probe, use_cache=False).logits.float()
            hidden = owner.base_model(input_ids=probe, use_cache=False).last_hidden_state
            got = _all_columns(state, hidden[0], linear, head).float()
    finally:
        owner.train(was_training)
    tol = 1e-3 * (1.0 + float(want.abs().max()))
    if got.shape != want[0].shape or not torch.allclose(got, want[0], rtol=1e-3, atol=tol):
        raise UnsupportedModelError(
            f"chunked_loss: {model_name(owner)!r} computes its logits other than as its head of "
            "the last hidden states (scaled, soft-capped); its loss cannot be tiled"
        )


def _tiled_forward(
    owner: nn.Module,
    state: PrunedState,
    tile: int,
    head: tuple[float, float | None],
    kwargs: dict[str, Any],
) -> Any:
    """The model's training forward with the loss in tiles: backbone, then tiled cross-entropy."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    labels, shift_labels = kwargs.get("labels"), kwargs.get("shift_labels")
    items = kwargs.get("num_items_in_batch")
    return_dict = kwargs.get("return_dict")
    backbone = {k: v for k, v in kwargs.items() if k not in _HEAD_ONLY}
    backbone["use_cache"] = False
    out = owner.base_model(**backbone)
    hidden = out.last_hidden_state
    if shift_labels is None:  # tokens < n predict n, as transformers' ForCausalLMLoss
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    weight, bias = _weights(_plain_head(owner))
    shape = targets.shape
    targets = targets.to(weight.device).reshape(-1)
    extra = _frozen(state, weight)
    if extra:  # labels are token ids: their columns among [kept, frozen]
        order = state.column_order(targets.device)
        targets = torch.where(targets == IGNORE, IGNORE, order[targets.clamp(min=0)])
    flat = hidden.to(weight.device).reshape(-1, hidden.shape[-1])
    math = {"tile": tile, "scale": head[0], "softcap": head[1], **extra}
    if items is None:  # the mean over labelled tokens (0/0 is NaN, as in cross_entropy)
        items = (targets != IGNORE).sum()
    elif torch.is_tensor(items):
        items = items.to(targets.device)
    count = float(items)
    # each token's gradient is 1/items: computed while the tiles' logits are at hand
    nll = tiled_cross_entropy(
        flat, weight, bias, targets, upstream=1.0 / count if count else None, **math
    )
    loss = nll.sum() / items
    output = CausalLMOutputWithPast(
        loss=loss, hidden_states=out.hidden_states, attentions=out.attentions
    )
    if FUSED_CALL in state.extras:  # TRL's fused head (core/hooks.py): per-token statistics
        entropy, top1 = tiled_token_stats(flat, weight, bias, targets, **math)
        mask = (targets != IGNORE).reshape(shape)
        output.token_stats = (
            -nll.reshape(shape),
            entropy.reshape(shape),
            top1.reshape(shape),
            mask,
        )
    return output.to_tuple() if return_dict is False else output
