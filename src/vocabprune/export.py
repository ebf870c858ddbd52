"""Writing compact inference models: only the kept embedding rows, with their kept vocabulary.

Two layouts, both written atomically (a crash leaves any previous folder intact):

- compact (default): `config.json` + `model.safetensors` of the model with its vocabulary-sized
  tensors cut to the kept rows (config ids renumbered), `kept_vocab.json`, the ORIGINAL tokenizer
  under `original_tokenizer/` and `vocabprune_export.json` (the manifest). Load it with
  `vocabprune.load_compact`, which remaps the original tokenizer's ids on the way in.
  The original tokenizer is kept out of the folder's root on purpose: stock code pairing it with
  the compact model would read the wrong rows.
- standalone (`standalone=True`): the same model, with the tokenizer rewritten to the kept
  vocabulary renumbered (see tokenizer_rewrite.py), so stock `AutoTokenizer` + `AutoModel` load
  and run it with vocabprune not installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.atomic import _umask, atomic_dir
from vocabprune.errors import MismatchError, ScanError, VocabPruneError
from vocabprune.vocab import DEFAULT_FILENAME, KeptVocab, special_ids

MANIFEST = "vocabprune_export.json"
MANIFEST_FORMAT = "vocabprune.export"
MANIFEST_VERSION = 1
ORIGINAL_TOKENIZER_DIR = "original_tokenizer"
UNKNOWN_POLICIES = ("error", "unk", "grow")
ENCODE_BATCH = 500


# -- model loading ----------------------------------------------------------------------------


def model_class(config: Any) -> Any:
    """The transformers class named in config.architectures (never remote code), else AutoModel."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def model_kwargs(cls: Any, folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Extra from_pretrained kwargs: no randomly initialised pooler when the checkpoint has none."""
    from vocabprune.rowstore import checkpoint_files

    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    if "add_pooling_layer" not in params:
        return {}
    try:
        keys = checkpoint_files(Path(folder))
    except (OSError, ValueError, KeyError):
        return {}
    if keys and not any(".pooler." in f".{k}" for k in keys):
        return {"add_pooling_layer": False}
    return {}


def safetensors_header_sha256(path: str | os.PathLike[str]) -> str:
    """Hash of a safetensors file's header (names, shapes, dtypes, offsets): cheap fingerprint."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise MismatchError(f"{path} is not a safetensors file (truncated header)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise MismatchError(f"{path} is not a safetensors file (header of {n} bytes)")
        header = f.read(n)
        if len(header) != n:
            raise MismatchError(f"{path} is truncated (header cut short)")
    return hashlib.sha256(header).hexdigest()[:16]


# -- kept vocabulary helpers ------------------------------------------------------------------


def with_extra_ids(kept: KeptVocab, extra: Iterable[int], *, note: str | None = None) -> KeptVocab:
    """A kept vocabulary with `extra` ids added (count 0 where the data never had them)."""
    extra_set = {int(i) for i in extra} - set(kept.kept_ids.tolist())
    if not extra_set:
        return kept
    ids = np.union1d(kept.kept_ids, np.fromiter(extra_set, dtype=np.int64))
    counts = np.zeros(ids.size, dtype=np.int64)
    counts[np.searchsorted(ids, kept.kept_ids)] = kept.counts
    meta = dict(kept.meta)
    if note:
        meta[note] = int(meta.get(note, 0)) + len(extra_set)
    return dataclasses.replace(kept, kept_ids=ids, counts=counts, meta=meta)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- export -----------------------------------------------------------------------------------


def export_pruned(
    model: Any,
    tokenizer: Any,
    kept: KeptVocab,
    out: str | os.PathLike[str],
    *,
    standalone: bool = False,
    overwrite: bool = False,
    unknown: str = "error",
    meta: dict[str, Any] | None = None,
    verify: Callable[[Path], dict[str, Any]] | None = None,
) -> tuple[Path, KeptVocab, dict[str, Any]]:
    """Write a compact (or standalone) inference model of `model` restricted to `kept`.

    The model may be full (it is pruned for the write and restored after) or already pruned
    with this kept vocabulary (e.g. after pruned fine-tuning; it stays pruned). For a
    standalone export the ids the rewritten tokenizer needs (BPE merge parts, byte symbols) are
    added to the kept vocabulary first; the kept vocabulary actually written is returned.
    `verify(tmp_folder)` runs on the finished folder before it is renamed into place; it may
    raise to abort the export. Returns (folder, kept vocabulary written, verify's report).
    """
    from vocabprune.prune import prune
    from vocabprune.restore import restore
    from vocabprune.state import attach, detach, get_state, state_owner
    from vocabprune.tokenizer_rewrite import (
        required_ids,
        rewrite_tokenizer_folder,
        tokenizer_json,
    )

    if unknown not in UNKNOWN_POLICIES:
        raise VocabPruneError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}: {unknown!r}")
    kept.check_tokenizer(tokenizer)
    state = get_state(model)
    data = tokenizer_json(tokenizer) if standalone else None
    if data is not None:
        need = required_ids(data, kept.kept_ids)
        if need and state is not None:
            raise VocabPruneError(
                f"the standalone tokenizer needs {len(need)} more ids (merge parts, byte "
                "symbols) than the model was pruned with; export from the full model"
            )
        kept = with_extra_ids(kept, need, note="tokenizer_required_ids")
    if state is not None and state.kept != kept:
        raise MismatchError("the model is pruned with another kept vocabulary than the one given")
    was_pruned = state is not None
    if state is None:
        state = prune(model, kept)
    owner = state_owner(model)
    assert owner is not None
    vocab_tensors = []
    for tensor in state.tensors:
        store = tensor.store
        entry: dict[str, Any] = {
            "names": [q for _, _, q in tensor.owners],
            "axis": tensor.axis,
            "full_size": tensor.full_size,
            "checkpoint": None,
        }
        path = getattr(store, "path", None)
        key = getattr(store, "key", None)
        if path is not None and key is not None:
            entry["checkpoint"] = {
                "file": str(Path(path).resolve()),
                "key": key,
                "header_sha256": safetensors_header_sha256(path),
            }
        vocab_tensors.append(entry)
    head = owner.get_output_embeddings() if hasattr(owner, "get_output_embeddings") else None
    vocab_logits = bool(state.output_pruned and head is not None)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": "standalone" if standalone else "compact",
        "model_class": type(owner).__name__,
        "source_model": str(getattr(owner, "name_or_path", "") or ""),
        "vocab_size": kept.vocab_size,
        "kept_size": kept.size,
        "original_tokenizer_fingerprint": kept.tokenizer_fingerprint,
        "unknown": unknown,
        "vocab_logits": vocab_logits,
        "vocab_tensors": vocab_tensors,
        "meta": dict(meta or {}),
    }
    report: dict[str, Any] = {}
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            detach(owner, state)  # an ordinary (compact) model for the length of the save
            try:
                owner.save_pretrained(tmp, safe_serialization=True)
            finally:
                attach(owner, state)
            kept.save(tmp / DEFAULT_FILENAME)
            if data is not None:
                tokenizer.save_pretrained(tmp)
                rewrite_tokenizer_folder(
                    tmp,
                    data,
                    kept.kept_ids.tolist(),
                    model_input_names=getattr(tokenizer, "model_input_names", None),
                )
            else:
                tokenizer.save_pretrained(tmp / ORIGINAL_TOKENIZER_DIR)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            for file in tmp.rglob("*"):  # savers may create 0600 files; look like any output
                file.chmod((0o777 if file.is_dir() else 0o666) & ~_umask())
            if verify is not None:
                report = verify(tmp) or {}
    finally:
        if not was_pruned and get_state(model) is not None:
            restore(model)
    return Path(out), kept, report


# -- the `vocabprune prune` job ---------------------------------------------------------------


@dataclass
class PruneOptions:
    """Options of `vocabprune prune` (the CLI flags carry the same names)."""

    out: str
    model: str | None = None
    data: Sequence[str] = ()
    text_column: str | None = None
    max_length: int | None = None
    standalone: bool = False
    min_count: int = 1
    target_size: int | None = None
    unknown: str | None = None
    overwrite: bool = False


@dataclass
class Corpus:
    texts: list[str]
    pairs: list[str] | None


def read_corpus(paths: Sequence[str], text_column: str | None) -> Corpus:
    """Texts (and second texts of pairs) of every data file or labelled folder."""
    from vocabprune.sources import pick_text_columns, read_table, texts_of

    texts: list[str] = []
    pairs: list[str] | None = None
    for path in paths:
        columns = read_table(path)
        cols = pick_text_columns(list(columns), text_column, str(path))
        t, p = texts_of(columns, cols, str(path))
        if p is not None:
            pairs = (pairs or [""] * len(texts)) + p
        elif pairs is not None:
            pairs += [""] * len(t)
        texts.extend(t)
    if not texts:
        raise ScanError("the data holds no examples")
    return Corpus(texts, pairs)


def encode(
    tokenizer: Any, corpus: Corpus, max_length: int | None, *, words: bool = False
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
    tokenizer: Any, corpus: Corpus, max_length: int, short_batches: list[Any] | None = None
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


def _sequence_changes(old: list[int], new: list[int]) -> int:
    if old == new:
        return 0
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    return len(old) - sum(block.size for block in matcher.get_matching_blocks())


def run_prune(opts: PruneOptions, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Scan the data, keep its ids, and write the compact (or standalone) inference model."""
    from vocabprune.finetune import default_data, default_model
    from vocabprune.loading import load_config, load_model, load_tokenizer
    from vocabprune.scan import bincount_ids
    from vocabprune.tokenizer_rewrite import MergeClosure, required_ids, tokenizer_json

    started = time.perf_counter()
    say = log or (lambda _msg: None)
    if opts.min_count < 1:
        raise VocabPruneError("--min-count must be at least 1")
    if opts.target_size is not None and opts.target_size < 1:
        raise VocabPruneError("--target-size must be at least 1")
    if opts.max_length is not None and opts.max_length < 2:
        raise VocabPruneError("--max-length must be at least 2")
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise FileExistsError(f"output folder already exists: {out} (use --overwrite)")
    model_path = opts.model or default_model()
    sources = list(opts.data) or default_data()
    tokenizer = load_tokenizer(model_path)
    config = load_config(model_path)
    cls = model_class(config)
    corpus = read_corpus(sources, opts.text_column)
    say(f"read {len(corpus.texts):,} examples; loading {cls.__name__} from {model_path}")
    model = load_model(cls, model_path, **model_kwargs(cls, model_path))
    model.eval()
    rows = int(model.get_input_embeddings().weight.shape[0])
    lossy = opts.min_count > 1 or opts.target_size is not None
    whole_words = opts.standalone and not lossy and bool(opts.max_length)
    batches = encode(tokenizer, corpus, opts.max_length, words=whole_words)
    encoded = [ids for b in batches for ids in b["input_ids"]] if whole_words else batches
    counts = np.zeros(rows, dtype=np.int64)
    for ids in encoded:
        counts += bincount_ids(np.asarray(ids, dtype=np.int64), rows, source="data")
    total = int(counts.sum())
    data = tokenizer_json(tokenizer) if opts.standalone else None
    forced = set(special_ids(tokenizer, model))
    extra: set[int] = set()
    if lossy:
        if data is not None:
            forced |= required_ids(data, forced)
            closure: Callable[[set[int], set[int] | None], set[int]] = MergeClosure(data)
        else:

            def closure(ids: set[int], within: set[int] | None) -> set[int]:
                return set(ids) | set(within or ())

        kept_ids = select_lossy(
            counts,
            forced,
            min_count=opts.min_count,
            target_size=opts.target_size,
            closure=closure,
        )
        extra = set(kept_ids.tolist()) - set(np.flatnonzero(counts).tolist()) - forced
    elif whole_words and opts.max_length:
        extra = boundary_ids(tokenizer, corpus, opts.max_length, batches) - set(
            np.flatnonzero(counts).tolist()
        )
    if lossy:
        keep = np.zeros(rows, dtype=bool)
        keep[kept_ids] = True
        kept = KeptVocab.from_counts(
            np.where(keep, counts, 0),
            tokenizer=tokenizer,
            model=model,
            extra_ids=sorted(set(kept_ids.tolist())),
            vocab_size=rows,
        )
    else:
        kept = KeptVocab.from_counts(
            counts, tokenizer=tokenizer, model=model, extra_ids=sorted(extra), vocab_size=rows
        )
    dropped_tokens = int(counts.sum() - counts[kept.kept_ids].sum())
    unknown = opts.unknown or ("unk" if lossy else "error")
    if dropped_tokens and data is None and unknown == "error":
        raise VocabPruneError(
            f"the lossy vocabulary drops {dropped_tokens:,} tokens of the data: export with "
            "--unknown unk (or --standalone)"
        )
    if unknown == "unk" and data is None and getattr(tokenizer, "unk_token_id", None) is None:
        raise VocabPruneError(
            "--unknown unk needs an UNK token and this tokenizer has none; use --standalone "
            "(dropped tokens then split into smaller kept pieces) or --unknown grow"
        )
    meta = {
        "max_length": opts.max_length,
        "data": [str(s) for s in sources],
        "examples": len(corpus.texts),
        "total_tokens": total,
        "min_count": opts.min_count,
        "target_size": opts.target_size,
        "lossy": lossy,
    }
    kept = dataclasses.replace(kept, meta=meta)

    def verify(folder: Path) -> dict[str, Any]:
        if data is None:
            return {}
        return verify_standalone_tokenizer(
            folder, tokenizer, corpus, encoded, opts.max_length, lossless=not lossy
        )

    say(f"writing {'standalone' if opts.standalone else 'compact'} model to {out}")
    folder, written, checked = export_pruned(
        model,
        tokenizer,
        kept,
        out,
        standalone=opts.standalone,
        overwrite=opts.overwrite,
        unknown=unknown,
        meta=meta,
        verify=verify,
    )
    from vocabprune.rowstore import checkpoint_files

    source_files = set(checkpoint_files(Path(model_path)).values())
    source_bytes = sum(p.stat().st_size for p in source_files)
    weights_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    report: dict[str, Any] = {
        "out": str(folder),
        "model": model_path,
        "standalone": opts.standalone,
        "vocab_size": rows,
        "tokenizer_size": len(tokenizer),
        "kept_tokens": written.size,
        "ids_in_data": int(np.count_nonzero(counts)),
        "forced_ids": len(written.forced_ids),
        "extra_ids": written.size - int(np.count_nonzero(counts[written.kept_ids])),
        "boundary_ids": len(extra) if not lossy else 0,
        "tokenizer_required_ids": int(written.meta.get("tokenizer_required_ids", 0)),
        "examples": len(corpus.texts),
        "total_tokens": total,
        "max_length": opts.max_length,
        "lossy": lossy,
        "min_count": opts.min_count,
        "target_size": opts.target_size,
        "dropped_ids": int(np.count_nonzero(counts)) - int(np.count_nonzero(counts[kept.kept_ids])),
        "dropped_tokens": dropped_tokens,
        "changed_tokens": dropped_tokens,
        "changed_fraction": dropped_tokens / total if total else 0.0,
        "unknown": unknown,
        "source_weights_bytes": source_bytes,
        "export_weights_bytes": weights_bytes,
        "export_bytes": _folder_bytes(folder),
        "weights_saved_fraction": 1 - weights_bytes / source_bytes if source_bytes else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    report.update(checked)
    return report


def verify_standalone_tokenizer(
    folder: Path,
    tokenizer: Any,
    corpus: Corpus,
    encoded: list[list[int]],
    max_length: int | None,
    *,
    lossless: bool,
) -> dict[str, Any]:
    """Tokenize the corpus with the rewritten tokenizer as stock code loads it, and compare.

    Lossless exports must reproduce every sequence exactly (renumbered); otherwise the export
    is aborted. Lossy ones report how many corpus tokens changed.
    """
    from transformers import AutoTokenizer

    kept = KeptVocab.load(folder / DEFAULT_FILENAME)
    new_tok = AutoTokenizer.from_pretrained(str(folder))
    if len(new_tok) != kept.size:
        raise VocabPruneError(
            f"rewritten tokenizer has {len(new_tok)} tokens, the kept vocabulary {kept.size}"
        )
    table = kept.old_to_new
    new_encoded = encode(new_tok, corpus, max_length)
    changed_examples = 0
    changed_tokens = 0
    new_total = 0
    for old, new in zip(encoded, new_encoded, strict=True):
        old_new = [int(table[i]) for i in old]
        new_total += len(new)
        if old_new != list(new):
            changed_examples += 1
            changed_tokens += _sequence_changes(old_new, list(new))
    if lossless and changed_examples:
        raise VocabPruneError(
            f"internal error: the rewritten tokenizer splits {changed_examples} examples "
            "differently from the original; export aborted"
        )
    total = sum(len(e) for e in encoded)
    return {
        "tokenizer_check_examples": len(encoded),
        "changed_examples": changed_examples,
        "changed_tokens": changed_tokens,
        "changed_fraction": changed_tokens / total if total else 0.0,
        "standalone_total_tokens": new_total,
    }
