"""Ids: the one remapper (original token id <-> kept id, one vectorized lookup) and the one rule
for the token ids a config names (pad, bos, eos, decoder_start, ...).

The remapper serves every path that needs a lookup: the collator and dataset remap, generation,
and compact inference models, which grow it when they read new rows on demand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from vocabprune.core.configs import token_id_attrs
from vocabprune.core.errors import MismatchError, UnknownTokenError, VocabPruneError
from vocabprune.core.vocab import CONFIG_ID_ATTRS, KeptVocab

UnknownPolicy = Literal["error", "unk"]
IGNORE_INDEX = -100
# Batch keys that hold token ids (inputs), and those that hold token-id labels.
ID_KEYS = ("input_ids", "decoder_input_ids")
LABEL_KEYS = ("labels",)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


class IdRemapper:
    """Maps original ids to kept ids (and back), for tensors, arrays and lists.

    unknown="error" raises naming the token (pass the tokenizer for its text); "unk" maps an id
    outside the kept vocabulary to the kept UNK id. Negative ids (-100 in labels) pass through.
    `extend` appends ids to the map (compact models that grow rows on demand); `on_missing`,
    when set, is called with the unknown ids instead of raising, and may extend the map.
    """

    def __init__(
        self,
        kept: KeptVocab,
        *,
        tokenizer: Any = None,
        unknown: UnknownPolicy = "error",
        on_missing: Callable[[list[int]], None] | None = None,
        tokenizer_loader: Callable[[], Any] | None = None,
    ) -> None:
        if unknown not in ("error", "unk"):
            raise VocabPruneError(f"unknown must be 'error' or 'unk', not {unknown!r}")
        if tokenizer is not None:
            kept.check_tokenizer(tokenizer)
        self.kept = kept
        self.tokenizer = tokenizer
        self.tokenizer_loader = tokenizer_loader  # finds a tokenizer to name tokens in errors
        self.unknown = unknown
        self.on_missing = on_missing
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
        self._table = torch.as_tensor(table)
        self._back = torch.as_tensor(kept.kept_ids.copy())
        self._on: dict[tuple[str, torch.device], torch.Tensor] = {}

    # -- the maps ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Rows the map points into (kept ids, plus any added by `extend`)."""
        return int(self._back.numel())

    @property
    def table(self) -> np.ndarray:
        """old id -> new id under this remapper's policy (-1 where an id raises); a copy."""
        return self._table.numpy().copy()

    @property
    def original_ids(self) -> torch.Tensor:
        """The original id of each new id (kept ids, then any added by `extend`); a copy."""
        return self._back.clone()

    def _device(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._on:
            self._on[key] = (self._table if name == "table" else self._back).to(device)
        return self._on[key]

    def extend(self, old_ids: Sequence[int]) -> list[int]:
        """Append original ids the map does not have yet; returns the ones added, in order."""
        have = set(self._back.tolist())
        added = sorted({int(i) for i in old_ids} - have)
        if added:
            new = torch.as_tensor(added, dtype=torch.long)
            self._table[new] = torch.arange(self.size, self.size + len(added), dtype=torch.long)
            self._back = torch.cat([self._back, new])
            self._on.clear()
        return added

    # -- errors -----------------------------------------------------------------------------

    def token_name(self, old_id: int) -> str:
        """`'rose' (id 3123)` when the tokenizer is known, else `token id 3123`."""
        token = None
        if self.tokenizer is None and self.tokenizer_loader is not None:
            loader, self.tokenizer_loader = self.tokenizer_loader, None
            self.tokenizer = loader()
        if self.tokenizer is not None:
            try:
                token = self.tokenizer.convert_ids_to_tokens(int(old_id))
            except (IndexError, KeyError, TypeError, ValueError):  # pragma: no cover
                token = None
        return f"token {token!r} (id {old_id})" if token is not None else f"token id {old_id}"

    def raise_unknown(self, old_ids: np.ndarray, where: str = "") -> None:
        """Raise UnknownTokenError naming the first of `old_ids` (its token text if known);
        `where` says where it stands in the batch (`_raise_first` works it out)."""
        bad = int(old_ids[0])
        vocab = self.kept.vocab_size
        if vocab <= bad < vocab + self.kept.size:
            raise UnknownTokenError(
                f"token id {bad}{where} is an id written by remap_dataset (vocabulary size "
                f"{vocab} + kept id {bad - vocab}), not a token id: batch such data with "
                "RemapCollator(collator, model) for a model pruned with ids='kept', or feed the "
                "original data"
            )
        if not 0 <= bad < vocab:
            raise UnknownTokenError(
                f"token id {bad}{where} is outside the vocabulary of {self.kept.vocab_size} ids"
            )
        more = f" (nor are {old_ids.size - 1} more ids here)" if old_ids.size > 1 else ""
        raise UnknownTokenError(
            f"{self.token_name(bad)}{where} is not in the kept vocabulary of {self.kept.size:,} "
            f"ids{more}; scan this data too, or use unknown='unk'"
        )

    def _raise_first(self, ids: torch.Tensor, bad: torch.Tensor, row: int | None = None) -> None:
        """Raise naming the first bad id in text order (row-major: the first example that has
        one, then its first position) and where it is: the example (row) of the batch and the
        position in it, so one bad text in a batch of 64 is found without a search."""
        index = [int(i) for i in bad.nonzero()[0]]
        first = int(ids[tuple(index)])
        if ids.dim() >= 2:
            row = index[0]
        place = f"position {index[-1]}" if index else ""
        where = f" in example {row} of the batch, {place}," if row is not None else f" at {place}"
        others = [int(v) for v in ids[bad].unique().cpu() if int(v) != first]
        self.raise_unknown(np.asarray([first, *others], dtype=np.int64), where if index else "")

    # -- remapping --------------------------------------------------------------------------

    def to_new(self, ids: Any, *, inputs: bool = False, tagged: bool = False) -> Any:
        """Remap ids (tensor, ndarray, nested lists), keeping their type. Negative ids (-100 in
        labels) pass through, unless `inputs`: token ids fed to an embedding must be >= 0.
        With `tagged`, ids written by `tag` (remap_dataset) are accepted and untagged."""
        if isinstance(ids, torch.Tensor):
            return self._remap(ids, inputs=inputs, tagged=tagged)
        if isinstance(ids, np.ndarray):
            return self._remap(torch.from_numpy(ids), inputs=inputs, tagged=tagged).numpy()
        if isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
            if ids and isinstance(ids[0], Sequence):  # ragged rows: one lookup per row
                rows = enumerate(ids)
                return [self._row(i, row, inputs=inputs, tagged=tagged) for i, row in rows]
            tensor = torch.as_tensor(ids, dtype=torch.long)
            return self._remap(tensor, inputs=inputs, tagged=tagged).tolist()
        if isinstance(ids, (int, np.integer)):
            tensor = torch.tensor([int(ids)])
            return int(self._remap(tensor, inputs=inputs, tagged=tagged)[0])
        raise VocabPruneError(f"cannot remap a {type(ids).__name__}")

    def _row(self, i: int, row: Sequence[Any], *, inputs: bool, tagged: bool) -> Any:
        """One row of a ragged batch; an error names its index `i` in the batch."""
        if row and isinstance(row[0], Sequence):
            return self.to_new(row, inputs=inputs, tagged=tagged)
        tensor = torch.as_tensor(row, dtype=torch.long)
        return self._remap(tensor, inputs=inputs, tagged=tagged, row=i).tolist()

    def _remap(
        self, ids: torch.Tensor, *, inputs: bool, tagged: bool, row: int | None = None
    ) -> torch.Tensor:
        if inputs and ids.numel() and bool((ids < 0).any()):
            raise UnknownTokenError(
                f"token id {int(ids.min())} in the input ids is negative (not a token)"
            )
        return self._untag_or_remap(ids, row) if tagged else self._remap_tensor(ids, row)

    __call__ = to_new

    def tag(self, new_ids: Any) -> Any:
        """Kept ids -> the form a remapped dataset stores: vocab_size + kept id (negatives pass).
        No model reads such ids directly, so stored remapped data can never be mistaken for
        token ids (or remapped again): RemapCollator untags it."""
        if isinstance(new_ids, Sequence) and new_ids and isinstance(new_ids[0], Sequence):
            return [self.tag(row) for row in new_ids]  # ragged rows
        tensor = torch.as_tensor(new_ids) if not isinstance(new_ids, torch.Tensor) else new_ids
        out = torch.where(tensor < 0, tensor, tensor + self.kept.vocab_size)
        if isinstance(new_ids, torch.Tensor):
            return out
        return out.numpy() if isinstance(new_ids, np.ndarray) else out.tolist()

    def _untag_or_remap(self, ids: torch.Tensor, row: int | None = None) -> torch.Tensor:
        vocab = self.kept.vocab_size
        tagged = ids >= vocab
        if not bool(tagged.any()):
            return self._remap_tensor(ids, row)
        if bool((ids >= vocab + self.kept.size).any()):
            self._raise_first(ids, ids >= vocab + self.kept.size, row)
        plain = self._remap_tensor(torch.where(tagged, torch.zeros_like(ids), ids), row)
        return torch.where(tagged, ids - vocab, plain)

    def _remap_tensor(self, ids: torch.Tensor, row: int | None = None) -> torch.Tensor:
        if ids.numel() == 0:
            return ids.clone()
        if ids.dtype not in INT_DTYPES:
            raise VocabPruneError(f"token ids must be integers, found {ids.dtype}")
        ids64 = ids.long()
        negative = ids64 < 0
        too_big = ids64 >= self.kept.vocab_size
        if bool(too_big.any()):
            self._raise_first(ids64, too_big, row)
        new = self._device("table", ids64.device)[ids64.clamp(min=0)]
        missing = (new < 0) & ~negative
        if bool(missing.any()):
            old = ids64[missing].unique().cpu()
            if self.on_missing is None:
                self._raise_first(ids64, missing, row)
            self.on_missing(old.tolist())  # type: ignore[misc]
            new = self._device("table", ids64.device)[ids64.clamp(min=0)]
            if bool(((new < 0) & ~negative).any()):  # pragma: no cover - on_missing must extend
                self.raise_unknown(old.numpy())
        return torch.where(negative, ids64, new).to(ids.dtype)

    def to_old(self, ids: Any) -> Any:
        """Map kept ids back to original ids (for generated tokens); negatives pass through."""
        tensor = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids, dtype=torch.long)
        long = tensor.long()
        if long.numel() and bool((long >= self.size).any()):
            raise VocabPruneError(f"id {int(long.max())} is >= the kept size {self.size}")
        back = self._device("back", long.device)
        out = torch.where(long < 0, long, back[long.clamp(min=0)]).to(tensor.dtype)
        if isinstance(ids, torch.Tensor):
            return out
        if isinstance(ids, np.ndarray):
            return out.numpy()
        return out.tolist()


# -- the token ids a config names ---------------------------------------------------------------


def map_ids(value: Any, fn: Callable[[int], int | None]) -> Any:
    """Apply `fn` to every token id in a config value: an int or a list/tuple of ints (several
    eos ids). None, booleans and negative ids pass through; ids for which `fn` returns None are
    dropped from a list (a scalar becomes None)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (int, np.integer)):
        return int(value) if value < 0 else fn(int(value))
    if isinstance(value, (list, tuple)):
        mapped = [map_ids(v, fn) for v in value]
        return type(value)(v for v in mapped if v is not None)
    return value


def required_new_id(kept: KeptVocab, where: str, hint: str) -> Callable[[int], int]:
    """fn for `map_ids`: the kept id, or a MismatchError naming the config field."""

    def new(old: int) -> int:
        if old not in kept:
            raise MismatchError(f"{where} = {old} is not in the kept vocabulary; {hint}")
        return kept.new_id(old)

    return new


def config_id_updates(
    cfg: Any, fn_for: Callable[[str], Callable[[int], int | None]]
) -> list[tuple[str, Any, Any]]:
    """(attribute, old, new) for every token-id attribute of a config that `fn_for(attr)` moves
    (the classic ids and every modality's: image, video, boi/eoi, ...; core/configs.py)."""
    updates = []
    for attr in dict.fromkeys([*CONFIG_ID_ATTRS, *token_id_attrs(cfg)]):
        old = getattr(cfg, attr, None)
        if old is None:
            continue
        new = map_ids(old, fn_for(attr))
        if new != old:
            updates.append((attr, old, new))
    return updates


def spread_logits(
    logits: torch.Tensor, columns: torch.Tensor, size: int, fill: float | None = None
) -> torch.Tensor:
    """Logits over kept columns -> logits over the `size` original ids: column j goes to id
    `columns[j]`, every other id gets `fill` (default: the dtype's lowest value, probability
    exactly 0 without the NaNs -inf gives entropy-style sums). Differentiable."""
    value = torch.finfo(logits.dtype).min if fill is None else fill
    full = logits.new_full((*logits.shape[:-1], size), value)
    # In place into the fresh tensor: the out-of-place index_copy would copy all `size` columns
    # once more, a pass over [rows x vocabulary] at every decoding step (autograd still flows
    # to `logits`: `full` is a new tensor that needs no gradient of its own).
    return full.index_copy_(-1, columns.to(logits.device), logits)
