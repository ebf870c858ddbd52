"""Generation with a pruned head: original ids in, original ids out.

A model whose output head is pruned can only emit kept ids. Pruned with the default
ids="original", it takes and returns original ids itself, so stock `model.generate()` works (and
decodes over the kept ids, with no per-step work over the whole vocabulary: core/decoding.py).
Pruned with ids="kept", it emits kept ids: `generate` remaps the prompt (and every token id given
to `generate`), calls the model's own `generate()`, and maps the result back. No LogitsProcessor is
involved: the softmax of a pruned head is already restricted to the kept vocabulary (a choice:
restore the model, or prune with the full head kept, when generation must see the whole
vocabulary).

    with vocabprune.pruned(model, kept):
        ...train...
        out = vocabprune.generate(model, **tokenizer(prompt, return_tensors="pt"))
        tokenizer.decode(out[0])                       # original ids
"""

from __future__ import annotations

from typing import Any

import torch

from vocabprune.core.decoding import kept_kwargs, map_sequences_back
from vocabprune.core.errors import VocabPruneError
from vocabprune.core.ids import IdRemapper
from vocabprune.core.state import PrunedState, get_state


def _check_head(state: PrunedState) -> None:
    if not state.output_pruned:
        raise VocabPruneError(
            "the model was pruned with output='keep': its full head can emit ids outside the "
            "kept vocabulary, which the pruned input embedding cannot read back; restore the "
            "model (vocabprune.restore) to generate with the full head"
        )


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
    out = model.generate(**kept_kwargs(model, state.kept, remapper, kwargs))
    return map_sequences_back(out, remapper)
