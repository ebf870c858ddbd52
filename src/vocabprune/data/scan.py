"""Scanning: count every token id the run will see, vectorized (bincount), union over splits.

Inputs: a list of strings, file paths and labelled folders (see sources.py), `datasets` Dataset /
DatasetDict / IterableDataset (text columns or already tokenized `input_ids`, padded or ragged),
or a dict of named splits of any of these.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vocabprune.core.errors import ScanError
from vocabprune.core.model import embedding_shape, prune_target, wrapper_tokenizer
from vocabprune.core.vocab import KeptVocab, tokenizer_fingerprint
from vocabprune.data.counts import Counts, as_counts
from vocabprune.data.sources import (
    Columns,
    TextLines,
    check_source,
    pick_text_columns,
    read_table,
    texts_of,
)
from vocabprune.data.tasks import task_texts

DEFAULT_BATCH = 1000


@dataclass
class SplitCounts:
    """Counts of one split (or source): per-id counts, tokens and examples."""

    counts: np.ndarray
    tokens: int
    examples: int


@dataclass
class ScanResult:
    """Per-id counts over all splits, and each split's own counts (for reports and overlap)."""

    vocab_size: int
    splits: dict[str, SplitCounts] = field(default_factory=dict)

    @property
    def counts(self) -> np.ndarray:
        total = np.zeros(self.vocab_size, dtype=np.int64)
        for split in self.splits.values():
            total += split.counts
        return total

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def num_examples(self) -> int:
        return sum(s.examples for s in self.splits.values())

    @property
    def used_ids(self) -> int:
        return int(np.count_nonzero(self.counts))

    def add(self, name: str, counts: np.ndarray, examples: int) -> None:
        name = _unique(name, self.splits)
        self.splits[name] = SplitCounts(counts, int(counts.sum()), examples)


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}#{i}" in taken:
        i += 1
    return f"{name}#{i}"


def bincount_ids(ids: np.ndarray, vocab_size: int, *, source: str = "data") -> np.ndarray:
    """Count a flat array of ids; ids outside [0, vocab_size) are an error naming the id."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return np.zeros(vocab_size, dtype=np.int64)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ScanError(f"{source}: input_ids must be integers, found {ids.dtype}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ScanError(f"{source}: token id {bad} is outside the vocabulary of {vocab_size} ids")
    return np.bincount(ids, minlength=vocab_size).astype(np.int64, copy=False)


def _flatten(rows: Sequence[Any], mask: Sequence[Any] | None = None) -> np.ndarray:
    """Ragged or padded rows -> one flat int64 array without masked positions (no token loop)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(rows, np.ndarray) and rows.ndim == 1 and rows.dtype != object:
        return rows if mask is None else rows[np.asarray(mask).astype(bool)]  # already flat
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        flat = rows if mask is None else rows[np.asarray(mask).astype(bool)]
        return np.asarray(flat, dtype=np.int64).ravel()
    arrays = [np.asarray(r, dtype=np.int64).ravel() for r in rows]
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if mask is not None:
        keep = np.concatenate([np.asarray(m).ravel() for m in mask]).astype(bool)
        flat = flat[keep]
    return flat


def count_token_ids(
    rows: Sequence[Any],
    vocab_size: int,
    *,
    attention_mask: Sequence[Any] | None = None,
    source: str = "data",
) -> np.ndarray:
    """Count already tokenized ids (ragged lists, padded arrays); masked positions are skipped."""
    return bincount_ids(_flatten(rows, attention_mask), vocab_size, source=source)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def count_texts(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    max_length: int | None = None,
    vocab_size: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool | None = None,
    source: str = "texts",
    num_proc: int | None = None,
) -> np.ndarray:
    """Tokenize as the run will (special tokens, truncation) and count the ids.

    A fast tokenizer is driven through its backend (`encode_batch_fast`, truncation as the
    wrapper sets it) with the next batch tokenized in a thread while this one is counted, after
    checking on the first batch that it gives the wrapper's ids (else the wrapper is used).
    `num_proc` > 1 splits the texts over that many processes; the counts are the same.
    """
    size = vocab_size or len(tokenizer)
    if num_proc and num_proc > 1 and len(texts) > batch_size:
        return _count_texts_parallel(
            tokenizer, texts, pairs, max_length, size, batch_size, progress, source, num_proc
        )
    counts = np.zeros(size, dtype=np.int64)
    kwargs: dict[str, Any] = {"add_special_tokens": True}
    if max_length:
        kwargs.update(truncation=True, max_length=max_length)
    bar = tqdm(
        total=len(texts), desc=f"scanning {source}", unit="ex", disable=_quiet(progress, len(texts))
    )
    backend = _backend_encoder(tokenizer, texts, pairs, max_length, kwargs)
    if backend is not None:
        for parts, n in _pipelined_ids(backend, texts, pairs, batch_size):
            for ids in parts:
                counts += bincount_ids(ids, size, source=source)
            bar.update(n)
        bar.close()
        return counts
    for sl in _batches(len(texts), batch_size):
        args = (list(texts[sl]),) if pairs is None else (list(texts[sl]), list(pairs[sl]))
        enc = tokenizer(*args, **kwargs)
        counts += bincount_ids(_flatten(enc["input_ids"]), size, source=source)
        bar.update(sl.stop - sl.start)
    bar.close()
    return counts


def _backend_encoder(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int | None,
    kwargs: dict[str, Any],
) -> Any:
    """A private copy of the fast tokenizer's backend set up as the wrapper call would be, or None
    (slow tokenizer, or its ids differ from the wrapper's on a sample of the texts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast") or len(texts) == 0:
        return None
    try:
        side = getattr(tokenizer, "truncation_side", "right")
        split = bool(getattr(tokenizer, "split_special_tokens", False))
        key = (id(backend), max_length, side, split)
        cached = _BACKENDS.get(key)
        copy = cached[1] if cached is not None and cached[0] is backend else None
        if copy is None:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(backend.to_str())
            copy.no_padding()
            if max_length:
                copy.enable_truncation(max_length, strategy="longest_first", direction=side)
            else:
                copy.no_truncation()
            copy.encode_special_tokens = split
            if len(_BACKENDS) > 16:
                _BACKENDS.clear()
            _BACKENDS[key] = (backend, copy)  # holding backend: its id is not reused
        n = min(len(texts), 16)
        # the sample's long texts cut short: the wrapper would tokenize a 200 MB line whole
        firsts = [str(t)[:SAMPLE_CHARS] for t in texts[:n]]
        seconds = None if pairs is None else [str(t)[:SAMPLE_CHARS] for t in pairs[:n]]
        sample = firsts if seconds is None else list(zip(firsts, seconds, strict=True))
        fast = [e.ids for e in copy.encode_batch_fast(sample, add_special_tokens=True)]
        args = (firsts,) if seconds is None else (firsts, seconds)
        slow = [list(map(int, r)) for r in tokenizer(*args, **kwargs)["input_ids"]]
    except Exception:  # any surprise: the wrapper path is always right
        return None
    return copy if fast == slow else None


# Configured backend copies, per tokenizer backend and settings: (backend, copy).
_BACKENDS: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _encode_ids(backend: Any, batch: list[Any]) -> Iterator[np.ndarray]:
    """The ids of a batch, in parts (order aside: they are counted): the short texts' at once; a
    text longer than LONG_TEXT characters piece by piece as the parts are read (LongTexts), so
    that only one piece's ids are held."""
    long = [t for t in batch if isinstance(t, str) and len(t) > LONG_TEXT]
    short = [t for t in batch if not isinstance(t, str) or len(t) <= LONG_TEXT] if long else batch
    encodings = backend.encode_batch_fast(short, add_special_tokens=True)
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
    if not long:
        return iter((ids,))
    counter = LongTexts(backend)
    return itertools.chain((ids,), itertools.chain.from_iterable(map(counter.pieces, long)))


# Counting memory is bounded by a piece of text, not by the longest line: the tokenizers library
# holds about 200 bytes per character of a text it encodes (a 52 MB line took 10.5 GB).
LONG_TEXT = 1 << 16  # characters: longer texts are tokenized in pieces of about this size
MAX_PREFIX = 1 << 20  # characters read at most to reach max_length (no words: cut there)
SAMPLE_CHARS = 4096  # characters of each text the backend/wrapper agreement check reads


def _cuts(text: str, size: int) -> Iterator[int]:
    """Where to cut `text` into pieces of about `size` characters: before a single space between
    two non-space characters (a boundary every pre-tokenizer here keeps: WordPiece, byte-level
    BPE, Metaspace); within a run of `size` characters holding no such space, at `size`."""
    start = 0
    while len(text) - start > size:
        end = start + size
        cut = text.rfind(" ", start + size // 2, end)
        while cut > start and (text[cut - 1].isspace() or text[cut + 1 : cut + 2].isspace()):
            cut = text.rfind(" ", start + size // 2, cut)
        start = cut if cut > start else end
        yield start


class LongTexts:
    """Ids of texts longer than LONG_TEXT characters, holding memory for one piece of them.

    With truncation (the backend truncates to max_length), only what can reach the limit is
    tokenized: a prefix (a suffix when truncating on the left) grown until the words it holds
    whole give more tokens than the limit; the ids are then the same as the whole text's, since
    tokenizers split text into words (pre-tokenization) and tokenize each word on its own.

    Without truncation the text is tokenized in pieces cut at single spaces; the specials are
    added once. The split is checked on this text's first two pieces against tokenizing them
    together; where they differ (a pre-tokenizer that sees across spaces) the text is tokenized
    whole. A run of LONG_TEXT characters without a space (no words: base64, a hex dump) is cut
    inside it, so the few ids at such a cut may differ from tokenizing it whole (with
    truncation: a prefix of MAX_PREFIX characters without a word boundary is taken as it is).
    Sentence pairs and slow (Python) tokenizers are tokenized whole.
    """

    def __init__(self, backend: Any) -> None:
        from tokenizers import Tokenizer

        self.backend = backend
        self.truncation = backend.truncation
        self.free = Tokenizer.from_str(backend.to_str())
        self.free.no_truncation()
        self.free.no_padding()

    def ids(self, text: str) -> np.ndarray:
        return np.concatenate(list(self.pieces(text)))

    def pieces(self, text: str) -> Iterator[np.ndarray]:
        """The text's ids in parts, tokenized as they are read (one part held at a time)."""
        if self.truncation:
            yield self._truncated(text)
        else:
            yield from self._pieces(text)

    def _truncated(self, text: str) -> np.ndarray:
        limit = int(self.truncation["max_length"])
        left = self.truncation.get("direction") == "left"
        n = max(SAMPLE_CHARS, 16 * limit)
        while n < len(text):
            part = text[-n:] if left else text[:n]
            words = self.free.encode(part, add_special_tokens=False).word_ids
            known = [w for w in words if w is not None]
            edge = min(known) if left else max(known, default=0)
            whole = sum(1 for w in known if (w > edge if left else w < edge))
            if whole > limit or n >= MAX_PREFIX:  # MAX_PREFIX: a "word" of a million characters
                return _as_ids(self.backend.encode(part, add_special_tokens=True).ids)
            n *= 4
        return _as_ids(self.backend.encode(text, add_special_tokens=True).ids)

    def _pieces(self, text: str) -> Iterator[np.ndarray]:
        bounds = [0, *_cuts(text, LONG_TEXT), len(text)]
        if len(bounds) > 3:
            a, b, c = bounds[:3]
            apart = self.free.encode(text[a:b], add_special_tokens=False).ids
            apart += self.free.encode(text[b:c], add_special_tokens=False).ids
            if apart != self.free.encode(text[a:c], add_special_tokens=False).ids:
                yield _as_ids(self.free.encode(text, add_special_tokens=True).ids)
                return
        # The specials of the whole text: those the backend adds around its first piece.
        yield _as_ids(self.free.encode(text[bounds[0] : bounds[1]], add_special_tokens=True).ids)
        for a, b in zip(bounds[1:-1], bounds[2:], strict=True):
            yield _as_ids(self.free.encode(text[a:b], add_special_tokens=False).ids)


def _as_ids(ids: Sequence[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64)


def _pipelined_ids(
    backend: Any, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int
) -> Iterator[tuple[Iterator[np.ndarray], int]]:
    """Each batch's ids (in parts, see _encode_ids); the next batch is tokenized (GIL released)
    while one is counted."""

    def batch(sl: slice) -> list[Any]:
        if pairs is None:
            return list(texts[sl])
        return list(zip(texts[sl], pairs[sl], strict=True))

    slices = list(_batches(len(texts), batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_encode_ids, backend, batch(slices[0])) if slices else None
        for i, sl in enumerate(slices):
            assert pending is not None
            ids = pending.result()
            pending = (
                pool.submit(_encode_ids, backend, batch(slices[i + 1]))
                if i + 1 < len(slices)
                else None
            )
            yield ids, sl.stop - sl.start


def _count_chunk(
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None,
    max_length: int | None,
    size: int,
    batch_size: int,
    source: str,
) -> np.ndarray:
    return count_texts(
        tokenizer,
        texts,
        pairs=pairs,
        max_length=max_length,
        vocab_size=size,
        batch_size=batch_size,
        progress=False,
        source=source,
    )


def _count_texts_parallel(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int | None,
    size: int,
    batch_size: int,
    progress: bool | None,
    source: str,
    num_proc: int,
) -> np.ndarray:
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    chunk = max(batch_size, -(-len(texts) // (num_proc * 4)))
    jobs = []
    counts = np.zeros(size, dtype=np.int64)
    bar = tqdm(
        total=len(texts), desc=f"scanning {source}", unit="ex", disable=_quiet(progress, len(texts))
    )
    with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method)) as pool:
        for sl in _batches(len(texts), chunk):
            part_pairs = None if pairs is None else list(pairs[sl])
            args = (tokenizer, list(texts[sl]), part_pairs, max_length, size, batch_size, source)
            jobs.append((pool.submit(_count_chunk, *args), sl.stop - sl.start))
        for job, n in jobs:
            counts += job.result()
            bar.update(n)
    bar.close()
    return counts


def _quiet(progress: bool | None, n: int) -> bool | None:
    if progress is None:
        return None if n >= 5 * DEFAULT_BATCH else True  # None: tqdm shows a bar only on a TTY
    return not progress


@dataclass(frozen=True)
class _Opts:
    """How every source of one scan is read and counted."""

    text_column: str | None
    max_length: int | None
    vocab_size: int
    progress: bool | None
    batch_size: int = DEFAULT_BATCH
    num_proc: int | None = None
    task: str | None = None  # encode as this task does (data/tasks.py); None: pairs together

    def count_texts(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        pairs: Sequence[str] | None,
        source: str,
        *,
        progress: bool | None = None,
    ) -> np.ndarray:
        if self.task is not None:
            texts, pairs = task_texts(texts, pairs, self.task, source)
        return count_texts(
            tokenizer,
            texts,
            pairs=pairs,
            max_length=self.max_length,
            vocab_size=self.vocab_size,
            batch_size=self.batch_size,
            progress=self.progress if progress is None else progress,
            source=source,
            num_proc=self.num_proc,
        )


def _count_columns(
    tokenizer: Any, columns: Columns, source: str, opts: _Opts, *, progress: bool | None = None
) -> tuple[np.ndarray, int]:
    if "input_ids" in columns and not opts.text_column:
        ids = columns["input_ids"]
        counts = count_token_ids(
            ids, opts.vocab_size, attention_mask=columns.get("attention_mask"), source=source
        )
        return counts, len(ids)
    cols = pick_text_columns(list(columns), opts.text_column, source)
    texts, pairs = texts_of(columns, cols, source)
    return opts.count_texts(tokenizer, texts, pairs, source, progress=progress), len(texts)


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "column_names") and (hasattr(obj, "iter") or hasattr(obj, "__iter__"))


def _count_dataset(
    tokenizer: Any, dataset: Any, source: str, opts: _Opts
) -> tuple[np.ndarray, int]:
    counts = np.zeros(opts.vocab_size, dtype=np.int64)
    examples = 0
    names = list(dataset.column_names or [])
    if not ("input_ids" in names and not opts.text_column):
        pick_text_columns(names, opts.text_column, source)  # fail early on a missing column
    bar = _dataset_bar(dataset, source, opts.progress)
    batch_size = opts.batch_size
    if opts.num_proc and opts.num_proc > 1:  # batches big enough to split over the processes
        batch_size = batch_size * opts.num_proc * 4
    for batch in _iter_batches(dataset, batch_size):
        c, n = _count_columns(tokenizer, batch, source, opts, progress=False)
        counts += c
        examples += n
        bar.update(dataset.position - bar.n if isinstance(dataset, TextLines) else n)
    bar.close()
    if examples == 0:
        raise ScanError(f"{source} holds no examples")
    return counts, examples


def _dataset_bar(dataset: Any, source: str, progress: bool | None) -> Any:
    """A progress bar in examples, or in bytes read for a text file (its lines are not known
    before they are read)."""
    if isinstance(dataset, TextLines):
        # shown (on a TTY) from the size of about 5,000 lines of 200 bytes, as for examples
        quiet = _quiet(progress, dataset.nbytes // 200)
        desc = f"scanning {source}"
        return tqdm(total=dataset.nbytes, desc=desc, unit="B", unit_scale=True, disable=quiet)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    return tqdm(
        total=total,
        desc=f"scanning {source}",
        unit="ex",
        disable=_quiet(progress, total or 0) if total else (progress is False),
    )


def _iter_batches(dataset: Any, batch_size: int) -> Iterable[Columns]:
    if hasattr(dataset, "iter"):
        yield from dataset.iter(batch_size=batch_size)
        return
    batch: list[dict[str, Any]] = []  # a plain iterable of dicts (e.g. a generator)
    for row in dataset:
        batch.append(row)
        if len(batch) == batch_size:
            yield {k: [r[k] for r in batch] for k in batch[0]}
            batch = []
    if batch:
        yield {k: [r[k] for r in batch] for k in batch[0]}


def scan(
    tokenizer: Any,
    *data: Any,
    text_column: str | None = None,
    max_length: int | None = None,
    vocab_size: int | None = None,
    progress: bool | None = None,
    batch_size: int = DEFAULT_BATCH,
    num_proc: int | None = None,
    task: str | None = None,
) -> ScanResult:
    """Count token ids over every source given; each becomes a split of the result.

    A source is: a list of strings; a path (str or Path) to a file or labelled folder; a list of
    paths; a `datasets` Dataset, IterableDataset or DatasetDict; or a dict of named sources.
    `task` encodes the texts as that `vocabprune finetune --task` does (data/tasks.py: a pair
    together for classification, each text alone for sentence-embedding and seq2seq, joined for
    language modelling); None: a pair is one input, as classification.
    """
    opts = _Opts(
        text_column, max_length, vocab_size or len(tokenizer), progress, batch_size, num_proc, task
    )
    result = ScanResult(opts.vocab_size)
    if not data:
        raise ScanError("no data given to scan")
    for item in data:
        for name, source in _named_sources(item):
            counts, n = _count_source(tokenizer, source, name, opts)
            if n == 0:
                raise ScanError(f"{name} holds no examples")
            result.add(name, counts, n)
    if result.total_tokens == 0:
        raise ScanError("the data holds no tokens")
    return result


def _named_sources(item: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(item, (str, os.PathLike)):
        yield str(item), Path(item)
    elif isinstance(item, Mapping):  # DatasetDict or {split: source}
        if not item:
            raise ScanError("empty mapping of splits given to scan")
        for key, value in item.items():
            yield str(key), value
    elif _is_dataset(item):
        yield (
            getattr(getattr(item, "split", None), "__str__", lambda: "dataset")() or "dataset",
            item,
        )
    elif isinstance(item, Sequence) and item and all(isinstance(x, os.PathLike) for x in item):
        for path in item:
            yield str(path), Path(path)
    elif isinstance(item, Sequence):
        yield "texts", list(item)
    else:
        raise ScanError(f"cannot scan a {type(item).__name__}: give texts, paths or a dataset")


def _count_source(tokenizer: Any, source: Any, name: str, opts: _Opts) -> tuple[np.ndarray, int]:
    if isinstance(source, (str, os.PathLike)):
        path, split = check_source(source)
        if split is None and path.suffix.lower() == ".txt" and path.is_file():
            return _count_dataset(tokenizer, TextLines(path), name, opts)  # batches of lines
        return _count_columns(tokenizer, read_table(source), name, opts)
    if _is_dataset(source):
        return _count_dataset(tokenizer, source, name, opts)
    if isinstance(source, Sequence):
        texts = list(source)
        if not texts:
            raise ScanError(f"{name} holds no examples")
        if all(isinstance(t, str) for t in texts):
            return opts.count_texts(tokenizer, texts, None, name), len(texts)
        if all(isinstance(t, Sequence | np.ndarray) for t in texts):
            return count_token_ids(texts, opts.vocab_size, source=name), len(texts)
        raise ScanError(f"{name}: expected strings or lists of token ids")
    raise ScanError(f"cannot scan {name}: a {type(source).__name__}")


def build_kept_vocab(
    tokenizer: Any,
    *data: Any,
    model: Any = None,
    text_column: str | None = None,
    max_length: int | None = None,
    min_count: int = 1,
    extra_ids: Iterable[int] = (),
    progress: bool | None = None,
    num_proc: int | None = None,
    counts: Any = None,
) -> KeptVocab:
    """Scan the data and keep every id it uses, plus the specials the model must see or emit.

    `counts` (a count file, `Counts`, or an array) adds counts made elsewhere (shards counted on
    other machines and merged); with no data, they are all there is.

    `tokenizer` may also be a SentenceTransformer (any wrapper holding one transformers model and
    its tokenizer): its tokenizer scans, its model is the model, and the tokens of its prompts
    ("query: ", ...) are kept too. Texts it will encode with a prompt are best scanned with it.
    """
    tokenizer, model, prompt_ids = _unwrap(tokenizer, model)
    extra_ids = [*extra_ids, *prompt_ids]
    size = embedding_shape(model)[0] if model is not None else len(tokenizer)
    total = np.zeros(size, dtype=np.int64)
    meta: dict[str, Any] = {"max_length": max_length}
    if data or counts is None:
        result = scan(
            tokenizer,
            *data,
            text_column=text_column,
            max_length=max_length,
            vocab_size=size,
            progress=progress,
            num_proc=num_proc,
        )
        total += result.counts
        meta.update(
            total_tokens=result.total_tokens,
            examples=result.num_examples,
            splits=list(result.splits),
        )
    if counts is not None:
        total += as_counts(counts, tokenizer_fingerprint(tokenizer), size)
        meta["counts_added"] = True
    return KeptVocab.from_counts(
        total,
        tokenizer=tokenizer,
        model=model,
        extra_ids=extra_ids,
        min_count=min_count,
        vocab_size=size,
        meta=meta,
    )


def _unwrap(tokenizer: Any, model: Any) -> tuple[Any, Any, list[int]]:
    """(tokenizer, model, ids of its prompts) when a wrapper such as a SentenceTransformer is
    handed over as the tokenizer or as `model=`; the model is always the transformers model
    (core.model.prune_target: compiled, PEFT and `.module` wrappers too)."""
    if hasattr(tokenizer, "modules") and hasattr(tokenizer, "tokenizer"):
        wrapper, tokenizer = tokenizer, tokenizer.tokenizer
        model = model if model is not None else wrapper
    elif model is not None and wrapper_tokenizer(model) is not None:
        wrapper = model
    else:
        return tokenizer, (prune_target(model) if model is not None else None), []
    prompts = [p for p in (getattr(wrapper, "prompts", None) or {}).values() if p]
    return tokenizer, prune_target(model), prompt_ids(tokenizer, prompts)


def prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    """The ids of the prompts a sentence-transformers model prepends to texts ("query: ",
    ...): read with every text it encodes, so a kept vocabulary keeps them."""
    ids: list[int] = []
    for prompt in prompts:
        ids += tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids


_TOKENIZERS: dict[tuple[str, int], Any] = {}


def count_shard(
    texts: Sequence[str],
    tokenizer: str | os.PathLike[str],
    *,
    max_length: int | None = None,
    vocab_size: int | None = None,
) -> Counts:
    """Count one shard of a corpus: the function to map over shards on any engine (Dask, Ray,
    Spark, a job array). `tokenizer` is the tokenizer's folder, loaded once per worker process;
    the result carries its fingerprint, so `merge_counts` refuses shards counted otherwise."""
    from vocabprune.core.loaders import load_tokenizer

    key = (str(tokenizer), os.getpid())
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(str(tokenizer))
    tok = _TOKENIZERS[key]
    counts = count_texts(
        tok, list(texts), max_length=max_length, vocab_size=vocab_size, progress=False
    )
    return Counts(counts, tokenizer_fingerprint(tok), {"shards": 1, "examples": len(texts)})
