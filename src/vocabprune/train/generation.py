"""Generation with a pruned head: original ids in, original ids out.

A model whose output head is pruned can only emit kept ids. Pruned with the default
ids="original", it takes and returns original ids itself (its logits outside training are spread
over the original vocabulary: core/hooks.py), so stock `model.generate()` works. Pruned with
ids="kept", it emits kept ids: `generate` remaps the prompt (and every token id given to
`generate`), calls the model's own `generate()`, and maps the result back. No LogitsProcessor is
involved: the softmax of a pruned head is already restricted to the kept vocabulary (a choice:
restore the model, or prune with the full head kept, when generation must see the whole
vocabulary).

    with vocabprune.pruned(model, kept):
        ...train...
        out = vocabprune.generate(model, **tokenizer(prompt, return_tensors="pt"))
        tokenizer.decode(out[0])                       # original ids
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.ids import ID_KEYS, IdRemapper, map_ids
from vocabprune.core.state import PrunedState, get_state
from vocabprune.core.vocab import CONFIG_ID_ATTRS, KeptVocab

# generate() arguments / GenerationConfig fields that are token ids.
SCALAR_ID_ATTRS = CONFIG_ID_ATTRS
# Ids the model must not produce: ids outside the kept vocabulary can never be produced, so they
# are dropped from these (a bad-words sequence containing one can never be produced either).
SUPPRESS_ATTRS = ("suppress_tokens", "begin_suppress_tokens")
UNSUPPORTED_KWARGS = (
    "force_words_ids",
    "constraints",
    "prefix_allowed_tokens_fn",
    "assistant_model",
    "negative_prompt_ids",
)


class _OriginalIdStreamer:
    """Wrap a streamer so it receives original ids."""

    def __init__(self, streamer: Any, remapper: IdRemapper) -> None:
        self.streamer = streamer
        self.remapper = remapper

    def put(self, value: torch.Tensor) -> None:
        self.streamer.put(self.remapper.to_old(value))

    def end(self) -> None:
        self.streamer.end()


def _new_or_none(kept: KeptVocab, old: int) -> int | None:
    return kept.new_id(old) if old in kept else None


def _remap_required(kept: KeptVocab, value: Any, where: str) -> Any:
    """Scalar ids (and lists of them, e.g. several eos ids) that must be kept."""

    def new(old: int) -> int:
        if old not in kept:
            raise VocabPruneError(
                f"{where} = {old} is not in the kept vocabulary: the pruned head cannot emit it "
                "(keep it with extra_ids=..., or restore the model to generate)"
            )
        return kept.new_id(old)

    return map_ids(value, new)


def _remap_droppable(kept: KeptVocab, ids: Any) -> Any:
    """Ids the model must not produce: those outside the kept vocabulary never can, so they go."""
    if ids is None:
        return None
    return map_ids(list(ids), lambda old: _new_or_none(kept, old))


def _remap_bad_words(kept: KeptVocab, seqs: Any) -> Any:
    if seqs is None:
        return None
    out = [[kept.new_id(int(i)) for i in seq] for seq in seqs if all(int(i) in kept for i in seq)]
    return out or None


def _remap_sequence_bias(kept: KeptVocab, bias: Any) -> Any:
    if bias is None:
        return None
    items = bias.items() if isinstance(bias, dict) else [(tuple(k), v) for k, v in bias]
    out = {
        tuple(kept.new_id(int(i)) for i in key): value
        for key, value in items
        if all(int(i) in kept for i in key)
    }
    return out or None


def _remap_forced_decoder_ids(kept: KeptVocab, pairs: Any) -> Any:
    if pairs is None:
        return None
    return [[pos, _remap_required(kept, tok, "forced_decoder_ids")] for pos, tok in pairs]


def _remap_generation_config(config: Any, kept: KeptVocab, *, scalars: bool) -> Any:
    """A copy of a GenerationConfig in kept ids (scalars only if they are still original)."""
    config = copy.deepcopy(config)
    if scalars:
        for attr in SCALAR_ID_ATTRS:
            if getattr(config, attr, None) is not None:
                setattr(
                    config,
                    attr,
                    _remap_required(kept, getattr(config, attr), f"generation_config.{attr}"),
                )
    for attr in SUPPRESS_ATTRS:
        if getattr(config, attr, None) is not None:
            setattr(config, attr, _remap_droppable(kept, getattr(config, attr)))
    if getattr(config, "bad_words_ids", None) is not None:
        config.bad_words_ids = _remap_bad_words(kept, config.bad_words_ids)
    if getattr(config, "sequence_bias", None) is not None:
        config.sequence_bias = _remap_sequence_bias(kept, config.sequence_bias)
    if getattr(config, "forced_decoder_ids", None) is not None:
        config.forced_decoder_ids = _remap_forced_decoder_ids(kept, config.forced_decoder_ids)
    for attr in UNSUPPORTED_KWARGS:
        if getattr(config, attr, None):
            raise VocabPruneError(f"generation_config.{attr} is not supported on a pruned model")
    return config


def _has_id_lists(config: Any) -> bool:
    names = (*SUPPRESS_ATTRS, "bad_words_ids", "sequence_bias", "forced_decoder_ids")
    return config is not None and any(getattr(config, n, None) for n in names)


def _check_head(state: PrunedState) -> None:
    if not state.output_pruned:
        raise VocabPruneError(
            "the model was pruned with output='keep': its full head can emit ids outside the "
            "kept vocabulary, which the pruned input embedding cannot read back; restore the "
            "model (vocabprune.restore) to generate with the full head"
        )


def _kept_kwargs(model: Any, kept: KeptVocab, remapper: IdRemapper, kwargs: dict) -> dict:
    """generate() arguments in original ids -> kept ids, for a model that reads kept ids."""
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise VocabPruneError(
                f"{name} is not supported on a pruned model (it works in original ids)"
            )
    for name in ID_KEYS:
        if kwargs.get(name) is not None:
            kwargs[name] = remapper(kwargs[name])
    for attr in SCALAR_ID_ATTRS:
        if kwargs.get(attr) is not None:
            kwargs[attr] = _remap_required(kept, kwargs[attr], attr)
    for attr in SUPPRESS_ATTRS:
        if kwargs.get(attr) is not None:
            kwargs[attr] = _remap_droppable(kept, kwargs[attr])
    if kwargs.get("bad_words_ids") is not None:
        kwargs["bad_words_ids"] = _remap_bad_words(kept, kwargs["bad_words_ids"])
    if kwargs.get("sequence_bias") is not None:
        kwargs["sequence_bias"] = _remap_sequence_bias(kept, kwargs["sequence_bias"])
    if kwargs.get("generation_config") is not None:  # a user's config is in original ids
        kwargs["generation_config"] = _remap_generation_config(
            kwargs["generation_config"], kept, scalars=True
        )
    elif _has_id_lists(getattr(model, "generation_config", None)):
        # The model's own config: its scalar ids already follow the map (prune remapped them),
        # its lists of ids (suppress_tokens, bad_words_ids, ...) do not.
        kwargs["generation_config"] = _remap_generation_config(
            model.generation_config, kept, scalars=False
        )
    if kwargs.get("streamer") is not None:
        kwargs["streamer"] = _OriginalIdStreamer(kwargs["streamer"], remapper)
    return kwargs


def generate(
    model: Any, input_ids: torch.Tensor | None = None, *, tokenizer: Any = None, **kwargs: Any
) -> Any:
    """`model.generate(...)` with original ids in and out, pruned or not.

    A model pruned with the default ids="original" does this itself: this is its own
    `generate()` (stock `model.generate` is the same). A model pruned with ids="kept" reads and
    emits kept ids: the prompt (`input_ids`, `decoder_input_ids`) and the token-id arguments
    (eos/pad/bos/decoder_start/forced ids, bad_words_ids, suppress_tokens, sequence_bias, a
    `generation_config`) are given in ORIGINAL ids and remapped, and the returned sequences (or
    the `.sequences` of a dict output) are original ids; scores of a dict output are over the
    kept columns (column j is original id `vocabprune.column_ids(model)[j]`). Generation needs
    the pruned head: a model pruned with output="keep" is refused.
    """
    if input_ids is not None:
        kwargs["input_ids"] = input_ids
    state = get_state(model)
    if state is not None:
        _check_head(state)
    if state is None or state.ids == "original":
        return model.generate(**kwargs)
    remapper = IdRemapper(state.kept, tokenizer=tokenizer)
    out = model.generate(**_kept_kwargs(model, state.kept, remapper, kwargs))
    if isinstance(out, torch.Tensor):
        return remapper.to_old(out)
    if hasattr(out, "sequences"):
        out.sequences = remapper.to_old(out.sequences)
        return out
    raise VocabPruneError(f"unexpected generate() output {type(out).__name__}")
