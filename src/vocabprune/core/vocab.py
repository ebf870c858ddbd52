"""The kept vocabulary: the one object that scan, prune, remap, restore and export share.

It holds the sorted kept ids (which are also the new->old map), their counts in the scanned data,
the old->new map, and fingerprints of the tokenizer's vocabulary and the model's embedding shape,
so a kept vocabulary made for one model can never silently be applied to another.
Saved as JSON: nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.core.configs import config_token_ids
from vocabprune.core.errors import MismatchError, VocabPruneError
from vocabprune.core.files import atomic_file, read_json
from vocabprune.core.model import embedding_shape as full_embedding_shape
from vocabprune.core.model import model_name, prune_target

FORMAT = "vocabprune.kept_vocab"
FORMAT_VERSION = 1
DEFAULT_FILENAME = "kept_vocab.json"

# Config attributes that hold token ids the model must always be able to see or emit.
CONFIG_ID_ATTRS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "unk_token_id",
    "mask_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)


_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's token -> id table (its vocabulary, added tokens included).

    Cached per tokenizer object while its length is unchanged (a 250k vocabulary takes ~0.3 s).
    """
    size = len(tokenizer)
    try:
        cached = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = tokenizer.get_vocab()
    if len(set(vocab.values())) == len(vocab):  # distinct ids: sorting by id alone is the same
        items = sorted(vocab.items(), key=operator.itemgetter(1))
    else:
        items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    text = "".join([f"{idx}\t{token}\n" for token, idx in items])
    found = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[tokenizer] = (size, found)
    return found


def _ids_from(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def special_ids(tokenizer: Any = None, model: Any = None) -> list[int]:
    """Ids that are always kept: the tokenizer's special tokens and the ids the config names."""
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        for name in (
            "pad_token_id",
            "unk_token_id",
            "cls_token_id",
            "sep_token_id",
            "mask_token_id",
            "bos_token_id",
            "eos_token_id",
        ):
            ids.update(_ids_from(getattr(tokenizer, name, None)))
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        ids.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
    if model is not None:  # every config of a composite model, every modality's ids
        target = prune_target(model)
        rows = full_embedding_shape(target)[0] if hasattr(target, "get_input_embeddings") else None
        # An id beyond the input rows belongs to another vocabulary (a decoder's, bert2gpt2).
        ids.update(i for i in config_token_ids(target, rows) if rows is None or i < rows)
    return sorted(i for i in ids if i >= 0)


@dataclass(frozen=True)
class KeptVocab:
    """Sorted kept ids with their counts, the maps between old and new ids, and fingerprints.

    `kept_ids[new_id] == old_id` (the new->old map). `old_to_new[old_id]` is the new id, or -1
    for an id that was dropped. Kept ids stay in their original order, so ids that are all kept
    below a given id (the specials, usually) keep their numbers.
    """

    kept_ids: np.ndarray
    counts: np.ndarray
    vocab_size: int
    forced_ids: tuple[int, ...] = ()
    tokenizer_fingerprint: str | None = None
    embedding_shape: tuple[int, int] | None = None
    unk_id: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.kept_ids, dtype=np.int64)
        counts = np.asarray(self.counts, dtype=np.int64)
        if ids.ndim != 1 or counts.shape != ids.shape:
            raise VocabPruneError("kept ids and counts must be 1-d arrays of the same length")
        if ids.size == 0:
            raise VocabPruneError("the kept vocabulary is empty: no token ids were scanned")
        if np.any(np.diff(ids) <= 0):
            raise VocabPruneError("kept ids must be strictly increasing (sorted, no duplicates)")
        if ids[0] < 0 or ids[-1] >= self.vocab_size:
            bad = int(ids[0] if ids[0] < 0 else ids[-1])
            raise VocabPruneError(
                f"token id {bad} is outside the vocabulary of {self.vocab_size} ids"
            )
        object.__setattr__(self, "kept_ids", ids)
        object.__setattr__(self, "counts", counts)
        table = np.full(self.vocab_size, -1, dtype=np.int64)
        table[ids] = np.arange(ids.size, dtype=np.int64)
        object.__setattr__(self, "_old_to_new", table)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_counts(
        cls,
        counts: np.ndarray,
        *,
        tokenizer: Any = None,
        model: Any = None,
        extra_ids: Iterable[int] = (),
        min_count: int = 1,
        vocab_size: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> KeptVocab:
        """Keep every id counted at least `min_count` times, plus specials and `extra_ids`.

        `vocab_size` defaults to the model's input-embedding rows (which may exceed the
        tokenizer's size: padded vocabularies), else to the length of `counts`.
        """
        counts = np.asarray(counts, dtype=np.int64)
        shape = full_embedding_shape(model) if model is not None else None
        size = vocab_size or (shape[0] if shape else None) or max(counts.size, _tok_len(tokenizer))
        if counts.size > size:
            bad = int(np.flatnonzero(counts[size:])[0]) + size if counts[size:].any() else None
            if bad is not None:
                raise VocabPruneError(f"token id {bad} is >= the model's vocabulary size {size}")
            counts = counts[:size]
        full = np.zeros(size, dtype=np.int64)
        full[: counts.size] = counts
        forced = sorted(set(special_ids(tokenizer, model)) | {int(i) for i in extra_ids})
        for i in forced:
            if not 0 <= i < size:
                raise VocabPruneError(f"special token id {i} is outside the vocabulary of {size}")
        keep = full >= max(1, min_count)
        keep[forced] = True
        ids = np.flatnonzero(keep)
        unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
        return cls(
            kept_ids=ids,
            counts=full[ids],
            vocab_size=size,
            forced_ids=tuple(forced),
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer else None,
            embedding_shape=shape,
            unk_id=int(unk) if isinstance(unk, int) else None,
            meta=dict(meta or {}),
        )

    # -- maps ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of kept ids (the pruned vocabulary size)."""
        return int(self.kept_ids.size)

    def __len__(self) -> int:
        return self.size

    @property
    def old_to_new(self) -> np.ndarray:
        """Array of length vocab_size: new id for each old id, -1 where dropped."""
        return self._old_to_new  # type: ignore[attr-defined,no-any-return]

    @property
    def new_to_old(self) -> np.ndarray:
        """Array of length size: the original id of each new id (same as kept_ids)."""
        return self.kept_ids

    def new_id(self, old_id: int) -> int:
        """New id of one original id; raises KeyError if it was dropped."""
        if not 0 <= old_id < self.vocab_size or self.old_to_new[old_id] < 0:
            raise KeyError(old_id)
        return int(self.old_to_new[old_id])

    def __contains__(self, old_id: object) -> bool:
        return (
            isinstance(old_id, (int, np.integer))
            and 0 <= int(old_id) < self.vocab_size
            and self.old_to_new[int(old_id)] >= 0
        )

    @property
    def digest(self) -> str:
        """Hash of what makes two kept vocabularies interchangeable: ids, vocabulary size,
        tokenizer and embedding shape (checkpoints and ranks compare it)."""
        h = hashlib.sha256()
        h.update(np.asarray(self.kept_ids, dtype="<i8").tobytes())
        h.update(f"|{self.vocab_size}|{self.tokenizer_fingerprint}|{self.embedding_shape}".encode())
        return h.hexdigest()[:16]

    # -- checks -------------------------------------------------------------------------------

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise MismatchError if this kept vocabulary was made for another tokenizer."""
        if self.tokenizer_fingerprint is None or tokenizer is None:
            return
        found = tokenizer_fingerprint(tokenizer)
        if found != self.tokenizer_fingerprint:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise MismatchError(
                f"kept vocabulary was made for another tokenizer (fingerprint "
                f"{self.tokenizer_fingerprint}, tokenizer {name!r} has {found})"
            )

    def check_model(self, model: Any, *, full_shape: tuple[int, int] | None = None) -> None:
        """Raise MismatchError if this kept vocabulary was made for another model."""
        shape = full_shape or full_embedding_shape(model)
        name = model_name(model)
        if shape[0] != self.vocab_size:
            raise MismatchError(
                f"kept vocabulary covers {self.vocab_size} ids but model {name!r} has an input "
                f"embedding of {shape[0]} rows"
            )
        if self.embedding_shape is not None and tuple(self.embedding_shape) != tuple(shape):
            raise MismatchError(
                f"kept vocabulary was made for an embedding of shape {tuple(self.embedding_shape)}"
                f" but model {name!r} has {tuple(shape)}"
            )

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "size": self.size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "embedding_shape": list(self.embedding_shape) if self.embedding_shape else None,
            "unk_id": self.unk_id,
            "forced_ids": list(self.forced_ids),
            "meta": dict(self.meta),
            "kept_ids": self.kept_ids.tolist(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "kept vocabulary") -> KeptVocab:
        if data.get("format") != FORMAT:
            raise VocabPruneError(f"{source} is not a vocabprune kept-vocabulary file")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise VocabPruneError(f"{source} was written by a newer vocabprune")
        try:
            shape = data.get("embedding_shape")
            return cls(
                kept_ids=np.asarray(data["kept_ids"], dtype=np.int64),
                counts=np.asarray(data["counts"], dtype=np.int64),
                vocab_size=int(data["vocab_size"]),
                forced_ids=tuple(int(i) for i in data.get("forced_ids", ())),
                tokenizer_fingerprint=data.get("tokenizer_fingerprint"),
                embedding_shape=(int(shape[0]), int(shape[1])) if shape else None,
                unk_id=data.get("unk_id"),
                meta=dict(data.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VocabPruneError(f"{source} is malformed: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically; a folder gets `kept_vocab.json` inside it."""
        target = Path(path)
        if target.is_dir():
            target = target / DEFAULT_FILENAME
        with atomic_file(target) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeptVocab:
        """Read a kept vocabulary written by `save` (a file or a folder holding one)."""
        source = Path(path)
        if source.is_dir():
            source = source / DEFAULT_FILENAME
        data = read_json(source, "kept-vocabulary file")
        if not isinstance(data, dict):
            raise VocabPruneError(f"kept-vocabulary file {source} is not a JSON object")
        return cls.from_dict(data, source=str(source))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeptVocab):
            return NotImplemented
        return (
            self.vocab_size == other.vocab_size
            and np.array_equal(self.kept_ids, other.kept_ids)
            and np.array_equal(self.counts, other.counts)
            and self.forced_ids == other.forced_ids
            and self.tokenizer_fingerprint == other.tokenizer_fingerprint
            and self.embedding_shape == other.embedding_shape
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"KeptVocab(size={self.size}, vocab_size={self.vocab_size}, "
            f"kept={self.size / self.vocab_size:.1%})"
        )


def _tok_len(tokenizer: Any) -> int:
    return len(tokenizer) if tokenizer is not None else 0
