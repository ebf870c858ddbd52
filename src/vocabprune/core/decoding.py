"""Generation over the kept ids: `generate()` arguments in original ids -> kept ids, and the
decoding fast path of a model whose head is pruned.

A pruned head scores only the kept ids. Through stock `generate()` a model that speaks original
ids spreads those scores over the whole vocabulary at every step, and generate copies and
argmaxes all of them (on the Gemma-3 shape, 262,144 columns for 18,890 kept ids: most of a
decoding step's extra cost). So such a model's `generate` (an instance attribute while pruned,
as transformers itself sets one for a custom generate) decodes over the kept ids instead: the
prompt and every token-id argument are mapped to kept ids, the model reads kept ids and emits the
kept columns for the duration (its config ids follow), and the sequences are mapped back. The
tokens are the ones the spread logits give (greedy: the same argmax, ties included, since kept
ids ascend with original ids; sampling: the same distribution, dropped ids having probability 0).

Whatever sees the vocabulary's width or ids the map cannot follow goes the stock way, unchanged:
scores or logits asked for, the caller's own logits processors or stopping criteria, stop
strings, watermarking, constraints, assistant models, `inputs_embeds`, a model class with its own
`generate` (Whisper), and config ids outside the kept vocabulary.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.ids import ID_KEYS, IdRemapper, map_ids
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


class OriginalIdStreamer:
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


def remap_generation_config(config: Any, kept: KeptVocab, *, scalars: bool) -> Any:
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


def kept_kwargs(model: Any, kept: KeptVocab, remapper: IdRemapper, kwargs: dict) -> dict:
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
        kwargs["generation_config"] = remap_generation_config(
            kwargs["generation_config"], kept, scalars=True
        )
    elif _has_id_lists(getattr(model, "generation_config", None)):
        # The model's own config: its scalar ids already follow the map (prune remapped them),
        # its lists of ids (suppress_tokens, bad_words_ids, ...) do not.
        kwargs["generation_config"] = remap_generation_config(
            model.generation_config, kept, scalars=False
        )
    if kwargs.get("streamer") is not None:
        kwargs["streamer"] = OriginalIdStreamer(kwargs["streamer"], remapper)
    return kwargs


# -- the decoding fast path ---------------------------------------------------------------------

# generate() arguments and GenerationConfig fields that see the vocabulary's width or ids the map
# cannot follow: with any of them set, generate() runs the stock way.
STOCK_ONLY = (
    "output_scores",
    "output_logits",
    "logits_processor",
    "stopping_criteria",
    "stop_strings",
    "watermarking_config",
    "custom_generate",
    "inputs_embeds",
    "prompt_lookup_num_tokens",
    "tokenizer",
    "assistant_tokenizer",
    *UNSUPPORTED_KWARGS,
)


def decodes_over_kept(model: Any, kwargs: dict[str, Any]) -> bool:
    """Whether this generate() call can run over the kept ids (see the module docstring)."""
    from transformers import GenerationMixin

    if getattr(type(model), "generate", None) is not GenerationMixin.generate:
        return False  # a class's own generate (Whisper's, ...) may read ids we cannot follow
    configs = [kwargs.get("generation_config"), getattr(model, "generation_config", None)]
    for name in STOCK_ONLY:
        if _is_set(kwargs.get(name)) or any(_is_set(getattr(c, name, None)) for c in configs):
            return False
    return True


def _is_set(value: Any) -> bool:
    """An argument that asks for something: not None, False or an empty list."""
    return (
        value is not None
        and value is not False
        and not (isinstance(value, (list, tuple)) and not value)
    )


def map_sequences_back(out: Any, remapper: IdRemapper) -> Any:
    """generate()'s result (a tensor, or an output with .sequences) in original ids."""
    if isinstance(out, torch.Tensor):
        return remapper.to_old(out)
    if hasattr(out, "sequences"):
        out.sequences = remapper.to_old(out.sequences)
        return out
    raise VocabPruneError(f"unexpected generate() output {type(out).__name__}")


def generate_over_kept(
    model: Any,
    kept: KeptVocab,
    remapper: IdRemapper,
    reading_kept: Callable[[], contextlib.AbstractContextManager[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Stock generate() of `model` over the kept ids, original ids in and out; the stock way
    when the call needs it. `reading_kept()` returns a context in which the model reads kept ids
    and emits the kept columns, its config ids moved to kept ids (a VocabPruneError when one
    cannot move: the stock way then)."""
    call = _by_name(args, kwargs)
    if call is not None and decodes_over_kept(model, call):
        try:
            context = reading_kept()
        except VocabPruneError:
            context = None
        if context is not None:
            prompt = call.get("input_ids")
            with context:
                try:
                    mapped = kept_kwargs(model, kept, remapper, call)
                except VocabPruneError:  # an id the map cannot follow (a dropped pad id, ...)
                    mapped = None
                if mapped is not None:
                    out = map_sequences_back(type(model).generate(model, **mapped), remapper)
                    return with_prompt(out, prompt, model)
    return type(model).generate(model, *args, **kwargs)


def with_prompt(out: Any, prompt: Any, model: Any) -> Any:
    """A decoder-only model's sequences begin with the prompt as the caller gave it, as stock
    generate() returns it: ids the kept vocabulary maps to UNK (unknown="unk") would otherwise
    come back as UNK."""
    sequences = out if isinstance(out, torch.Tensor) else getattr(out, "sequences", None)
    config = getattr(model, "config", None)
    if (
        not isinstance(prompt, torch.Tensor)
        or not isinstance(sequences, torch.Tensor)
        or getattr(config, "is_encoder_decoder", False)
        or prompt.dim() != 2
        or sequences.shape[1] < prompt.shape[1]
        or sequences.shape[0] % prompt.shape[0]
    ):
        return out
    copies = sequences.shape[0] // prompt.shape[0]  # num_return_sequences, beams kept
    sequences[:, : prompt.shape[1]] = prompt.to(sequences.device).repeat_interleave(copies, 0)
    return out


def _by_name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments by name (the prompt as input_ids); None when more than the prompt
    comes by position (generation_config, logits_processor, ...: the stock way)."""
    if len(args) > 1:
        return None
    call = dict(kwargs)
    if args:
        call["inputs"] = args[0]
    inputs = call.get("inputs")
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
        call["input_ids"] = call.pop("inputs")
    return call


class Switched(contextlib.AbstractContextManager):  # type: ignore[type-arg]
    """AttrChanges applied for the duration, and a flag set (reverted in reverse order,
    whatever happens)."""

    def __init__(self, changes: list[Any], flag: Callable[[bool], None]) -> None:
        self.changes = changes
        self.flag = flag
        self.done: list[Any] = []

    def __enter__(self) -> Switched:
        for change in self.changes:
            change.apply()
            self.done.append(change)
        self.flag(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flag(False)
        for change in reversed(self.done):
            change.revert()
        self.done.clear()


def pruned_generate(model: Any, state: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A pruned model's own generate() (core/state.py): over the kept ids when its head is
    restricted and it reads original ids, the stock one otherwise (a frozen head scores every
    id; a model pruned with ids='kept' already reads and emits kept ids)."""
    from vocabprune.core.surgery import config_id_changes

    restricted = state.output_pruned and not state.frozen_head
    if not (state.active and restricted and state.ids == "original"):
        return type(model).generate(model, *args, **kwargs)

    def reading_kept() -> Switched:
        changes = config_id_changes(model, state.kept, rows=state.kept.size)
        return Switched(changes, lambda on: setattr(state, "over_kept", on))

    return generate_over_kept(model, state.kept, state.remapper, reading_kept, args, kwargs)
