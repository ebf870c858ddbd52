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
        if not state.active:
            return None
        where, ids = _ids_argument(args, kwargs)
        if not isinstance(ids, torch.Tensor):
            return None
        return _with(args, kwargs, where, remapper.to_new(ids, inputs=True))

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
        if not state.active or state.logits == "kept":
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


def install(model: nn.Module, state: PrunedState) -> None:
    """Register the hooks of `state.ids` mode on the model and its input embeddings."""
    for module in input_modules(state):
        hook = _embedding_remap(state) if state.ids == "original" else _embedding_check(state)
        state.forward_handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    if state.ids == "original" and state.output_pruned:
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
    return state.index("cpu").clone()
