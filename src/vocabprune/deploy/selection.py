"""Which ids an export keeps beyond the ids the data uses: the rest of words that truncation cuts
in two (standalone tokenizers must split them as the original did), and lossy vocabularies
(a minimum count, a target size) that keep the most frequent ids first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vocabprune.core.errors import VocabPruneError
from vocabprune.data.sources import Examples

ENCODE_BATCH = 500


def encode(
    tokenizer: Any, corpus: Examples, max_length: int | None, *, words: bool = False
) -> list[Any]:
    """Encode the corpus in batches as the model will see it; BatchEncodings when words=True."""
    kwargs: dict[str, Any] = {"add_special_tokens": True}
    if max_length:
        kwargs.update(truncation=True, max_length=max_length)
    out: list[Any] = []
    for start in range(0, len(corpus.texts), ENCODE_BATCH):
        args: list[Any] = [corpus.texts[start : start + ENCODE_BATCH]]
        if corpus.pairs is not None:
            args.append(corpus.pairs[start : start + ENCODE_BATCH])
        enc = tokenizer(*args, **kwargs)
        out.extend([enc] if words else enc["input_ids"])
    return out


def boundary_ids(
    tokenizer: Any, corpus: Examples, max_length: int, short_batches: list[Any] | None = None
) -> set[int]:
    """Ids of the rest of every word that truncation cuts in two.

    A rewritten tokenizer splits a word using only kept pieces; if the tail of a word cut by
    truncation were dropped, it could split the head differently (WordPiece turns the whole word
    into UNK, BPE and Unigram may pick other pieces). Keeping whole words avoids that.
    """
    if not getattr(tokenizer, "is_fast", False):
        return set()
    extra: set[int] = set()
    if short_batches is None:
        short_batches = encode(tokenizer, corpus, max_length, words=True)
    long_batches = encode(tokenizer, corpus, None, words=True)
    for short, long in zip(short_batches, long_batches, strict=True):
        for i in range(len(short["input_ids"])):
            seen = {
                (s, w)
                for s, w in zip(short.sequence_ids(i), short.word_ids(i), strict=True)
                if w is not None
            }
            if not seen:
                continue
            ids = long["input_ids"][i]
            for tok, s, w in zip(ids, long.sequence_ids(i), long.word_ids(i), strict=True):
                if w is not None and (s, w) in seen:
                    extra.add(int(tok))
    return extra


def select_lossy(
    counts: np.ndarray,
    forced: set[int],
    *,
    min_count: int,
    target_size: int | None,
    closure: Callable[[set[int], set[int] | None], set[int]],
) -> np.ndarray:
    """Ids kept by a lossy vocabulary: counted >= min_count, most frequent first up to the target.

    `closure(ids, kept)` adds to `kept` the ids and what they need (BPE merge parts); forced ids
    are always kept.
    """
    base = closure(set(forced), None)
    candidates = np.flatnonzero(counts >= max(1, min_count))
    if target_size is None:
        return np.array(sorted(closure(set(candidates.tolist()), base)), dtype=np.int64)
    if target_size < len(base):
        raise VocabPruneError(
            f"--target-size {target_size} is below the {len(base)} ids that are always kept "
            "(special tokens, byte symbols)"
        )
    order = candidates[np.lexsort((candidates, -counts[candidates]))]
    kept = set(base)
    for i in order.tolist():
        if i in kept:
            continue
        grown = closure({i}, kept)
        if len(grown) <= target_size:
            kept = grown
        if len(kept) >= target_size:
            break
    return np.array(sorted(kept), dtype=np.int64)
