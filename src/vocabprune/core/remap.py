"""Data-side remapping, the explicit alternative to the in-model lookup: original token ids ->
kept ids in the batch (`RemapCollator`) or in a tokenized dataset (`remap_dataset`), for a model
pruned with `ids="kept"`. The tokenizer is untouched.

Both take the pruned model they feed, not just a kept vocabulary, and refuse a model that reads
original ids (the default): remapping twice cannot be written by accident. A stored remapped
dataset holds tagged ids (vocab_size + kept id), which only RemapCollator reads: fed to any
model, or remapped again, they are an error. A model pruned with `ids="kept"` refuses ids that
are not kept ids, so data that was never remapped is an error wherever an id beyond the kept
size shows; see core/hooks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.ids import ID_KEYS, LABEL_KEYS, IdRemapper
from vocabprune.core.state import get_state
from vocabprune.core.vocab import KeptVocab


def data_remapper(model: Any, what: str) -> tuple[IdRemapper, bool]:
    """(the remapper of a model pruned with ids='kept', whether its head is pruned)."""
    if isinstance(model, (KeptVocab, IdRemapper)):
        raise VocabPruneError(
            f"{what} takes the pruned model it feeds, not a {type(model).__name__}: prune with "
            "prune(model, kept, ids='kept'), then pass the model (a model pruned with the "
            "default ids='original' reads tokenizer ids itself and needs no remapping)"
        )
    state = get_state(model)
    if state is None:
        raise VocabPruneError(f"{what}: the model is not pruned; prune(model, kept, ids='kept')")
    if state.ids != "kept":
        raise VocabPruneError(
            f"{what}: this model was pruned with ids='original' and remaps the tokenizer's ids "
            "itself; remapping the data too would remap twice. Drop the data-side remap, or "
            "prune with ids='kept'"
        )
    assert state.remapper is not None
    return state.remapper, state.output_pruned


class RemapCollator:
    """Wrap any collator: pad and batch as usual, then remap the id columns of the batch for a
    model pruned with ids='kept'.

    Labels are remapped when the model's output head is pruned (masked-, causal-, seq2seq LM);
    class labels of a classifier are left alone. `remap_labels` overrides.
    """

    def __init__(
        self,
        collator: Callable[[list[Any]], Mapping[str, Any]],
        model: Any,
        *,
        keys: Sequence[str] = ID_KEYS,
        remap_labels: bool | None = None,
    ) -> None:
        self.collator = collator
        self.remapper, head_pruned = data_remapper(model, "RemapCollator")
        labels = head_pruned if remap_labels is None else remap_labels
        self.keys = tuple(keys) + (LABEL_KEYS if labels else ())

    def __call__(self, features: list[Any]) -> Any:
        batch = self.collator(features)
        for key in self.keys:
            if key in batch and batch[key] is not None:
                batch[key] = self.remapper.to_new(batch[key], tagged=True)
        return batch

    def __getattr__(self, name: str) -> Any:
        # Trainer looks for collator.tokenizer and similar: answer for the wrapped collator.
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


def remap_dataset(
    dataset: Any,
    model: Any,
    *,
    columns: Sequence[str] = ID_KEYS,
    remap_labels: bool | None = None,
    num_proc: int | None = None,
) -> Any:
    """Remap the id columns of a tokenized `datasets` Dataset for a model pruned with
    ids='kept' (batched, vectorized per row), to store it remapped.

    The stored ids are tagged (vocab_size + kept id): no model reads them directly, so the
    dataset can never be mistaken for token ids, fed to a model that remaps itself, or remapped
    again. Batch it with RemapCollator(collator, model), which untags them (and remaps the pad
    ids the collator adds)."""
    remapper, head_pruned = data_remapper(model, "remap_dataset")
    labels = head_pruned if remap_labels is None else remap_labels
    wanted = tuple(columns) + (LABEL_KEYS if labels else ())
    names = [c for c in wanted if c in dataset.column_names]
    if not names:
        raise VocabPruneError(
            f"dataset has none of the columns {', '.join(columns)} to remap "
            f"(columns: {', '.join(dataset.column_names)})"
        )

    def apply(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {name: remapper.tag(remapper(batch[name])) for name in names}

    return dataset.map(apply, batched=True, num_proc=num_proc, desc="remapping ids")
