"""Remapping: original token ids -> kept ids with one vectorized lookup; the tokenizer is untouched.

Use `RemapCollator` around any collator (dynamic padding works: the pad id is remapped like any
other id) or `remap_dataset` to remap a tokenized `datasets` Dataset once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from vocabprune.errors import UnknownTokenError, VocabPruneError
from vocabprune.vocab import KeptVocab

UnknownPolicy = Literal["error", "unk"]
IGNORE_INDEX = -100


class IdRemapper:
    """Maps original ids to kept ids (and back), for tensors, arrays and lists.

    unknown="error" raises naming the token (pass the tokenizer for its text); "unk" maps an
    id outside the kept vocabulary to the kept UNK id. Negative ids (-100 in labels) pass through.
    """

    def __init__(
        self,
        kept: KeptVocab,
        *,
        tokenizer: Any = None,
        unknown: UnknownPolicy = "error",
    ) -> None:
        if unknown not in ("error", "unk"):
            raise VocabPruneError(f"unknown must be 'error' or 'unk', not {unknown!r}")
        if tokenizer is not None:
            kept.check_tokenizer(tokenizer)
        self.kept = kept
        self.tokenizer = tokenizer
        self.unknown = unknown
        table = kept.old_to_new.copy()
        if unknown == "unk":
            unk = (
                kept.unk_id if kept.unk_id is not None else getattr(tokenizer, "unk_token_id", None)
            )
            if unk is None or unk not in kept:
                raise VocabPruneError(
                    "unknown='unk' needs an UNK token in the kept vocabulary; "
                    "this tokenizer has none"
                )
            table[table < 0] = kept.new_id(int(unk))
        self._table_np = table
        self._tables: dict[torch.device, torch.Tensor] = {}
        self._back: dict[torch.device, torch.Tensor] = {}

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = torch.as_tensor(self._table_np, device=device)
        return self._tables[device]

    @property
    def table(self) -> np.ndarray:
        """old id -> new id under this remapper's policy (-1 where an id raises); a copy."""
        return self._table_np.copy()

    def raise_unknown(self, old_ids: np.ndarray) -> None:
        """Raise UnknownTokenError naming the first of `old_ids` (its token text if known)."""
        bad = int(old_ids[0])
        if bad >= self.kept.vocab_size:
            raise UnknownTokenError(
                f"token id {bad} is outside the vocabulary of {self.kept.vocab_size} ids"
            )
        token = None
        if self.tokenizer is not None:
            token = self.tokenizer.convert_ids_to_tokens(bad)
        name = f"token {token!r} (id {bad})" if token is not None else f"token id {bad}"
        more = f" and {old_ids.size - 1} more ids" if old_ids.size > 1 else ""
        raise UnknownTokenError(
            f"{name}{more} not in the kept vocabulary ({self.kept.size} ids); scan this data "
            "too, or use unknown='unk'"
        )

    def to_new(self, ids: Any) -> Any:
        """Remap ids (tensor, ndarray, nested lists), keeping their type; negatives pass through."""
        if isinstance(ids, torch.Tensor):
            return self._remap_tensor(ids)
        if isinstance(ids, np.ndarray):
            return self._remap_tensor(torch.from_numpy(ids)).numpy()
        if isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
            if ids and isinstance(ids[0], Sequence):
                return [self.to_new(row) for row in ids]  # ragged rows: one lookup per row
            return self._remap_tensor(torch.as_tensor(ids, dtype=torch.long)).tolist()
        if isinstance(ids, (int, np.integer)):
            return int(self._remap_tensor(torch.tensor([int(ids)]))[0])
        raise VocabPruneError(f"cannot remap a {type(ids).__name__}")

    def _remap_tensor(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 0:
            return ids.clone()
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise VocabPruneError(f"token ids must be integers, found {ids.dtype}")
        ids64 = ids.long()
        negative = ids64 < 0
        too_big = ids64 >= self.kept.vocab_size
        if bool(too_big.any()):
            self.raise_unknown(ids64[too_big].cpu().numpy())
        table = self._table(ids64.device)
        new = table[ids64.clamp(min=0)]
        missing = (new < 0) & ~negative
        if bool(missing.any()):
            self.raise_unknown(ids64[missing].unique().cpu().numpy())
        new = torch.where(negative, ids64, new)
        return new.to(ids.dtype)

    def to_old(self, ids: Any) -> Any:
        """Map kept ids back to original ids (for generated tokens); negatives pass through."""
        tensor = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids, dtype=torch.long)
        dev = tensor.device
        if dev not in self._back:
            self._back[dev] = torch.as_tensor(self.kept.kept_ids, device=dev)
        long = tensor.long()
        if bool((long >= self.kept.size).any()):
            raise VocabPruneError(f"id {int(long.max())} is >= the kept size {self.kept.size}")
        out = torch.where(long < 0, long, self._back[dev][long.clamp(min=0)]).to(tensor.dtype)
        if isinstance(ids, torch.Tensor):
            return out
        if isinstance(ids, np.ndarray):
            return out.numpy()
        return out.tolist()

    __call__ = to_new


ID_KEYS = ("input_ids", "decoder_input_ids")
LABEL_KEYS = ("labels",)


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
