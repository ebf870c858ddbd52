"""The forward hooks through which a pruned model speaks original ids.

With `ids="original"` (the default) nothing outside the model changes: every front-end (Trainer,
sentence-transformers, TRL, pipelines, a plain loop) hands the model tokenizer output.

- The input embedding (every nn.Embedding holding the pruned matrix) remaps the ids it is given
  with one vectorized lookup, just before its own forward: the module, its class, padding_idx and
  any scaling stay, and everything else in the model (position ids counted from the pad id,
  last-token pooling, eos masks) still sees original ids and original config ids.
- With a pruned output head, the model remaps its labels (and shift_labels) before its forward,
  so its own loss is the cross-entropy over the kept vocabulary; an encoder-decoder first
  derives its decoder inputs from the ORIGINAL labels (shift right + decoder_start_token_id),
  as it would unpruned.
- The logits of a pruned head come out over the kept columns only where that is the saving:
  while training with a loss the model computes itself (labels given, gradients on). Anywhere
  else — generate(), pipelines, evaluation, a loss computed outside the model — they are spread
  over the original vocabulary (column = token id; dropped ids get the dtype's lowest value,
  probability 0), so every consumer reads them by token id. `logits="kept"` or `"full"` fixes
  one of the two.

With `output="frozen"` the head keeps the full softmax: the head module's output is spread over
the original vocabulary with the dropped ids scored by the frozen dropped rows (no gradient; times
the tracked weight-decay factor, as full fine-tuning would have decayed them), so the model's own
loss, generate(), pipelines and any loss computed from the logits are those of the full model at
the same weights (generate() until it emits an id the pruned input embedding cannot read). Labels
stay original ids (checked to be kept ids, as inputs are). TRL's fused LM head
(`fused_lm_head=True`), which scores tokens from the head weight alone, is answered from those
logits instead. It is the default: prune(output="auto") resolves to it for a vocabulary-sized head
(core/surgery.py resolve_output).

With `ids="kept"` the model reads ids already remapped by RemapCollator / remap_dataset; its
embedding only checks they are kept ids, and its logits are the kept columns.

The hooks are closures over the pruned state (never bound methods: a module deep-copied by a
wrapper, PEFT's modules_to_save, shares them), and go inert once the state is restored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vocabprune.core.configs import config_tree
from vocabprune.core.errors import UnknownTokenError, VocabPruneError
from vocabprune.core.ids import IGNORE_INDEX, spread_logits
from vocabprune.core.state import PrunedState, get_state

LOGITS_MODES = ("auto", "kept", "full")
IDS_MODES = ("original", "kept")
LABEL_KWARGS = ("labels", "shift_labels")
FUSED_KWARG = "fused_lm_head"  # TRL: score labels from the head weight (kept rows only)
FUSED_CALL = "fused_call"  # state.extras key: the labels of a fused call in progress
FROZEN_GENERATE_HINT = (
    "the frozen head (the default of output='auto') scores every id, so generate() while pruned "
    "can emit ids outside the kept vocabulary: generate after vocabprune.restore(model), or "
    "prune with output='prune' to generate over the kept ids"
)


def input_modules(state: PrunedState) -> list[nn.Embedding]:
    """Every nn.Embedding that holds a pruned matrix (each once): the input embedding and any
    other that reads ids, such as a decoder embedding that owns the head weight (Marian with
    share_encoder_decoder_embeddings=False). All of them read original ids."""
    found: dict[int, nn.Embedding] = {}
    for tensor in state.tensors:
        for module, attr, _ in tensor.owners:
            if isinstance(module, nn.Embedding) and attr == "weight" and tensor.axis == 0:
                found.setdefault(id(module), module)
    return list(found.values())


def _ids_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | int, Any]:
    if args:
        return 0, args[0]
    for key in ("input", "input_ids"):
        if key in kwargs:
            return key, kwargs[key]
    return 0, None


def _with(args: tuple[Any, ...], kwargs: dict[str, Any], where: str | int, value: Any) -> Any:
    if isinstance(where, int):
        return (value, *args[1:]), kwargs
    return args, {**kwargs, where: value}


def _embedding_remap(state: PrunedState) -> Callable[..., Any]:
    """Original ids -> kept ids, in front of the embedding."""
    remapper = state.remapper
    assert remapper is not None

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not state.active or state.over_kept:  # generate() over the kept ids gives kept ids
            return None
        where, ids = _ids_argument(args, kwargs)
        if not isinstance(ids, torch.Tensor):
            return None
        try:
            return _with(args, kwargs, where, remapper.to_new(ids, inputs=True))
        except UnknownTokenError as exc:
            if not state.frozen_head:
                raise
            raise UnknownTokenError(f"{exc} ({FROZEN_GENERATE_HINT})") from None

    return hook


def _embedding_check(state: PrunedState) -> Callable[..., Any]:
    """ids='kept': the ids must already be kept ids; anything else is a clear error."""
    size = state.kept.size

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not state.active:
            return None
        _, ids = _ids_argument(args, kwargs)
        if isinstance(ids, torch.Tensor) and ids.numel():
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= size:
                raise UnknownTokenError(
                    f"id {low if low < 0 else high} is not a kept id (0..{size - 1}): this model "
                    "was pruned with ids='kept' and reads ids remapped by RemapCollator or "
                    "remap_dataset; remap the data, or prune with the default ids='original'"
                )
        return None

    return hook


def _labels_position(model: nn.Module) -> int | None:
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return None
    return names.index("labels") if "labels" in names else None


def _config_value(model: nn.Module, attr: str) -> Any:
    """The first value of `attr` among the model's configs (sub-configs, generation config)."""
    for cfg in config_tree(model):
        value = getattr(cfg, attr, None)
        if value is not None:
            return value
    return None


def _decoder_inputs_from(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How an encoder-decoder derives its decoder inputs from labels when given none (BART, T5,
    Marian, Whisper, ... all do it inside forward): its own prepare_decoder_input_ids_from_labels,
    else the rule they all share (shift right, decoder_start_token_id first, -100 -> pad).
    None for a model that is not an encoder-decoder."""
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:
        return lambda labels: prepare(labels=labels)  # type: ignore[no-any-return]
    start = _config_value(model, "decoder_start_token_id")
    pad = _config_value(model, "pad_token_id")

    def shift_right(labels: torch.Tensor) -> torch.Tensor:
        if start is None or pad is None:
            missing = "decoder_start_token_id" if start is None else "pad_token_id"
            raise VocabPruneError(
                f"model {type(model).__name__} has no {missing} to derive its decoder inputs "
                "from the labels: pass decoder_input_ids"
            )
        out = labels.new_full(labels.shape, int(start))
        out[..., 1:] = labels[..., :-1]
        return out.masked_fill_(out == IGNORE_INDEX, int(pad))

    return shift_right


def _label_remap(state: PrunedState, model: nn.Module) -> Callable[..., Any]:
    """Labels in original ids -> kept ids, before the model computes its loss over the kept
    vocabulary (-100 stays -100). An encoder-decoder first gets its decoder inputs derived from
    the ORIGINAL labels (its embedding remaps them, once), as it would derive them unpruned."""
    remapper = state.remapper
    assert remapper is not None
    position = _labels_position(model)
    derive = _decoder_inputs_from(model)
    derives = derive is not None

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not state.active:
            return None
        if position is not None and len(args) > position:
            raise VocabPruneError("pass labels to a pruned model by keyword (labels=...)")
        labels = kwargs.get("labels")
        if (
            derives
            and isinstance(labels, torch.Tensor)
            and kwargs.get("decoder_input_ids") is None
            and kwargs.get("decoder_inputs_embeds") is None
        ):
            kwargs["decoder_input_ids"] = derive(labels)  # type: ignore[misc]
        for key in LABEL_KWARGS:
            if isinstance(kwargs.get(key), torch.Tensor):
                kwargs[key] = remapper.to_new(kwargs[key])
        return args, kwargs

    return hook


def _label_check(state: PrunedState) -> Callable[..., Any]:
    """A frozen head's labels stay original ids, but they must be kept ids as its inputs must
    (the unknown-id policy: an error naming the token, or UNK's id), as under the restricted
    head: a dropped id's head row is frozen and could never learn it."""
    remapper = state.remapper
    assert remapper is not None

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not state.active:
            return None
        for key in LABEL_KWARGS:
            if isinstance(kwargs.get(key), torch.Tensor):
                kwargs[key] = remapper.to_old(remapper.to_new(kwargs[key]))
        return args, kwargs

    return hook


def _logits_of(output: Any) -> tuple[Any, torch.Tensor | None, Any]:
    """(where the logits are, the logits, the loss) of a model output (ModelOutput or tuple)."""
    if isinstance(output, tuple):
        if output and isinstance(output[0], torch.Tensor) and output[0].ndim == 0:
            return 1, (output[1] if len(output) > 1 else None), output[0]
        return 0, (output[0] if output else None), None
    return "logits", getattr(output, "logits", None), getattr(output, "loss", None)


def _spread(state: PrunedState) -> Callable[..., Any]:
    """Kept-column logits -> logits over the original vocabulary, where consumers read them by
    token id (see the module docstring for the rule)."""
    size = state.kept.vocab_size

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not state.active or state.logits == "kept" or state.over_kept:
            return None
        where, logits, loss = _logits_of(output)
        if not isinstance(logits, torch.Tensor) or logits.shape[-1] != state.kept.size:
            return None
        if state.logits == "auto" and loss is not None and torch.is_grad_enabled():
            return None  # training on the model's own loss: kept columns are the saving
        full = spread_logits(logits, state.index(logits.device), size)
        if isinstance(where, int):
            return (*output[:where], full, *output[where + 1 :])
        output.logits = full
        return output

    return hook


def head_modules(state: PrunedState) -> list[nn.Linear]:
    """The nn.Linear heads holding the pruned head weight (each once)."""
    found: dict[int, nn.Linear] = {}
    for tensor in state.frozen_tensors():
        for module, attr, _ in tensor.owners:
            if isinstance(module, nn.Linear) and attr == "weight":
                found.setdefault(id(module), module)
    return list(found.values())


def frozen_parts(state: PrunedState, like: torch.Tensor) -> tuple[torch.Tensor, Any, float, float]:
    """(frozen rows, frozen bias or None, their weight-decay factors) of a frozen head, on
    `like`'s device and dtype."""
    weight, *bias = state.frozen_tensors()
    fb = bias[0].frozen_rows(like) if bias else None
    scale = state.dropped_scale.get(weight.name, 1.0)
    bias_scale = state.dropped_scale.get(bias[0].name, 1.0) if bias else 1.0
    return weight.frozen_rows(like), fb, scale, bias_scale


def _frozen_logits(state: PrunedState) -> Callable[..., Any]:
    """Kept-row logits of the head -> logits over the original vocabulary, the dropped ids
    scored by the frozen rows (constants for autograd)."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not state.active or not isinstance(output, torch.Tensor):
            return None
        x = args[0]
        weight, bias, scale, bias_scale = frozen_parts(state, module.weight)
        dropped = torch.nn.functional.linear(x, weight)  # the rows are constants: x's gradient
        if scale != 1.0:
            dropped = dropped * scale
        if bias is not None:
            dropped = dropped + (bias * bias_scale if bias_scale != 1.0 else bias)
        both = torch.cat([output, dropped.to(output.dtype)], dim=-1)
        return both.index_select(-1, state.column_order(output.device))

    return hook


def _fused_pre(state: PrunedState) -> Callable[..., Any]:
    """A frozen head under TRL's fused LM head: take the call over (see _fused_post)."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state.extras.pop(FUSED_CALL, None)  # left by a call that raised
        if not (state.active and kwargs.get(FUSED_KWARG)):
            return None
        kwargs = {k: v for k, v in kwargs.items() if k != FUSED_KWARG}
        shift = kwargs.get("shift_labels")
        labels = kwargs.get("labels")
        if shift is None and labels is None:
            raise VocabPruneError("fused_lm_head=True scores labels: pass labels=...")
        targets = shift if shift is not None else labels[:, 1:]
        state.extras[FUSED_CALL] = (targets, shift is None, kwargs.get("num_items_in_batch"))
        return args, kwargs

    return hook


def _fused_post(state: PrunedState) -> Callable[..., Any]:
    """TRL's fused outputs (per-token log-probabilities, entropy, top-1, label mask, loss) over
    the full vocabulary, from the model's logits or the per-token statistics a tiled loss left."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        call = state.extras.pop(FUSED_CALL, None)
        if call is None or not state.active:
            return None
        targets, shifted, items = call
        stats = getattr(output, "token_stats", None)
        if stats is None:
            logits = output.logits[:, :-1] if shifted else output.logits
            stats = token_stats(logits, targets)
        log_probs, entropy, top1, mask = stats
        count = mask.sum().clamp(min=1) if items is None else items
        return FusedOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy,
            is_top1=top1,
            label_mask=mask,
        )

    return hook


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per token: log-probability of the target (differentiable), entropy and whether the target
    is the top-1 (no gradient), label mask; 0 / False where the target is -100."""
    mask = targets != -100
    logp = logits.float().log_softmax(-1)
    log_probs = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1) * mask
        top1 = (logits.argmax(-1) == targets) & mask
    return log_probs, entropy, top1, mask


class FusedOutput(dict):  # type: ignore[type-arg]
    """The fields of TRL's FusedCausalLMOutput a trainer reads, by attribute and by key."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(fields)
        self.__dict__.update(fields)
        self.__dict__.setdefault("aux_loss", None)


def install(model: nn.Module, state: PrunedState) -> None:
    """Register the hooks of `state.ids` mode on the model and its input embeddings."""
    for module in input_modules(state):
        hook = _embedding_remap(state) if state.ids == "original" else _embedding_check(state)
        state.forward_handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    if state.frozen_head:
        state.forward_handles.append(
            model.register_forward_pre_hook(_label_check(state), with_kwargs=True)
        )
        for head in head_modules(state):
            state.forward_handles.append(head.register_forward_hook(_frozen_logits(state)))
        state.forward_handles.append(
            model.register_forward_pre_hook(_fused_pre(state), with_kwargs=True)
        )
        state.forward_handles.append(model.register_forward_hook(_fused_post(state)))
    elif state.ids == "original" and state.output_pruned:
        state.forward_handles.append(
            model.register_forward_pre_hook(_label_remap(state, model), with_kwargs=True)
        )
        state.forward_handles.append(model.register_forward_hook(_spread(state)))


def column_ids(model: Any) -> torch.Tensor:
    """The original token id of each logits column of a pruned head (kept columns), as a
    LongTensor: column j of kept-column logits scores token `column_ids(model)[j]`."""
    state = get_state(model)
    if state is None:
        raise VocabPruneError("model is not pruned: its logits columns are the token ids")
    if state.frozen_head:  # its logits are over the whole vocabulary, column = token id
        return torch.arange(state.kept.vocab_size)
    return state.index("cpu").clone()
