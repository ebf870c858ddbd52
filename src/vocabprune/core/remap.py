"""Data-side remapping: original token ids -> kept ids in the batch or the dataset, with the one
remapper (core/ids.py); the tokenizer is untouched.

Use `RemapCollator` around any collator (dynamic padding works: the pad id is remapped like any
other id) or `remap_dataset` to remap a tokenized `datasets` Dataset once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.ids import ID_KEYS, LABEL_KEYS, IdRemapper, UnknownPolicy
from vocabprune.core.vocab import KeptVocab


class RemapCollator:
    """Wrap any collator: pad and batch as usual, then remap the id columns of the batch.

    Labels are remapped only when the output head is pruned (remap_labels=True, for masked- and
    causal-LM objectives); class labels of a classifier are left alone by default.
    """

    def __init__(
        self,
        collator: Callable[[list[Any]], Mapping[str, Any]],
        kept: KeptVocab | IdRemapper,
        *,
        tokenizer: Any = None,
        unknown: UnknownPolicy = "error",
        keys: Sequence[str] = ID_KEYS,
        remap_labels: bool = False,
    ) -> None:
        self.collator = collator
        self.remapper = (
            kept
            if isinstance(kept, IdRemapper)
            else IdRemapper(
                kept,
                tokenizer=tokenizer
                if tokenizer is not None
                else getattr(collator, "tokenizer", None),
                unknown=unknown,
            )
        )
        self.keys = tuple(keys) + (LABEL_KEYS if remap_labels else ())

    def __call__(self, features: list[Any]) -> Any:
        batch = self.collator(features)
        for key in self.keys:
            if key in batch and batch[key] is not None:
                batch[key] = self.remapper(batch[key])
        return batch

    def __getattr__(self, name: str) -> Any:
        # Trainer looks for collator.tokenizer and similar: answer for the wrapped collator.
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


def remap_dataset(
    dataset: Any,
    kept: KeptVocab | IdRemapper,
    *,
    tokenizer: Any = None,
    unknown: UnknownPolicy = "error",
    columns: Sequence[str] = ID_KEYS,
    remap_labels: bool = False,
    num_proc: int | None = None,
) -> Any:
    """Remap the id columns of a tokenized `datasets` Dataset (batched, vectorized per row)."""
    remapper = (
        kept
        if isinstance(kept, IdRemapper)
        else IdRemapper(kept, tokenizer=tokenizer, unknown=unknown)
    )
    names = [
        c
        for c in tuple(columns) + (LABEL_KEYS if remap_labels else ())
        if c in dataset.column_names
    ]
    if not names:
        raise VocabPruneError(
            f"dataset has none of the columns {', '.join(columns)} to remap "
            f"(columns: {', '.join(dataset.column_names)})"
        )

    def apply(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {name: remapper(batch[name]) for name in names}

    return dataset.map(apply, batched=True, num_proc=num_proc, desc="remapping ids")
