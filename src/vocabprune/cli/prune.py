"""`vocabprune prune`: scan the data, keep its ids, and write a compact (or standalone) inference
model. Lossy vocabularies (--min-count, --target-size) keep the most frequent ids first; a
standalone export also keeps what its rewritten tokenizer needs and is checked against the
original tokenizer on the whole corpus before it is written."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import PruneOptions
from vocabprune.core.checkpoint import checkpoint_files
from vocabprune.core.errors import MismatchError, VocabPruneError
from vocabprune.core.loaders import (
    load_config,
    load_model,
    load_tokenizer,
    model_class,
    model_kwargs,
)
from vocabprune.core.vocab import DEFAULT_FILENAME, KeptVocab, special_ids, tokenizer_fingerprint
from vocabprune.data.counts import load_counts
from vocabprune.data.scan import bincount_ids, prompt_ids
from vocabprune.data.sources import Examples, read_examples
from vocabprune.deploy.coverage import probe_coverage, uncovered_mapping
from vocabprune.deploy.export import export_pruned, folder_bytes, verify_standalone_tokenizer
from vocabprune.deploy.selection import boundary_ids, encode, select_lossy
from vocabprune.deploy.sentence_files import read_modules, sentence_transformers_prompts
from vocabprune.deploy.tokenizer_rewrite import MergeClosure, required_ids, tokenizer_json


def _check(opts: PruneOptions) -> Path:
    opts.validate()
    return Path(opts.out)


@dataclass
class Scanned:
    """The corpus as the model sees it, and what it counts."""

    corpus: Examples
    batches: list[Any]  # BatchEncodings (whole-word standalone exports) or lists of ids
    encoded: list[list[int]]
    counts: np.ndarray

    @property
    def used(self) -> set[int]:
        return set(np.flatnonzero(self.counts).tolist())


def _scan(opts: PruneOptions, tokenizer: Any, corpus: Examples, rows: int, words: bool) -> Scanned:
    batches = encode(tokenizer, corpus, opts.max_length, words=words)
    encoded = [ids for b in batches for ids in b["input_ids"]] if words else batches
    counts = np.zeros(rows, dtype=np.int64)
    for ids in encoded:
        counts += bincount_ids(np.asarray(ids, dtype=np.int64), rows, source="data")
    return Scanned(corpus, batches, encoded, counts)


def _lossy_ids(opts: PruneOptions, scanned: Scanned, forced: set[int], data: Any) -> np.ndarray:
    """The ids a lossy vocabulary keeps (with what a standalone tokenizer's merges need)."""
    if data is not None:
        forced = forced | required_ids(data, forced)
        closure: Callable[[set[int], set[int] | None], set[int]] = MergeClosure(data)
    else:

        def closure(ids: set[int], within: set[int] | None) -> set[int]:
            return set(ids) | set(within or ())

    return select_lossy(
        scanned.counts,
        forced,
        min_count=opts.min_count,
        target_size=opts.target_size,
        closure=closure,
    )


def _choose(
    opts: PruneOptions,
    tokenizer: Any,
    model: Any,
    scanned: Scanned,
    data: Any,
    always: set[int],
) -> tuple[KeptVocab, set[int]]:
    """(the kept vocabulary, the ids kept beyond the data's: boundary or lossy extras, and the
    ids read around every text: sentence-transformers prompts, a chat template's)."""
    rows = int(scanned.counts.size)
    forced = set(special_ids(tokenizer, model)) | always
    if opts.min_count > 1 or opts.target_size is not None:
        kept_ids = _lossy_ids(opts, scanned, forced, data)
        keep = np.zeros(rows, dtype=bool)
        keep[kept_ids] = True
        kept = KeptVocab.from_counts(
            np.where(keep, scanned.counts, 0),
            tokenizer=tokenizer,
            model=model,
            extra_ids=sorted(set(kept_ids.tolist())),
            vocab_size=rows,
        )
        return kept, set(kept_ids.tolist()) - scanned.used - forced
    extra: set[int] = set(always)
    if data is not None and opts.max_length:  # whole words: see deploy.selection.boundary_ids
        extra |= boundary_ids(tokenizer, scanned.corpus, opts.max_length, scanned.batches)
    extra -= scanned.used
    kept = KeptVocab.from_counts(
        scanned.counts, tokenizer=tokenizer, model=model, extra_ids=sorted(extra), vocab_size=rows
    )
    return kept, extra


def _given(opts: PruneOptions, tokenizer: Any, model: Any, scanned: Scanned) -> KeptVocab | None:
    """--kept: a saved kept vocabulary (returned, checked against the model and the data), or
    counts (added to the scanned ones, None returned)."""
    if not opts.kept:
        return None
    if Path(opts.kept).suffix.lower() != ".json":
        given = load_counts(opts.kept)
        given.check_tokenizer(tokenizer_fingerprint(tokenizer), opts.kept)
        if given.vocab_size != scanned.counts.size:
            raise MismatchError(
                f"{opts.kept} counts {given.vocab_size} ids, the model has {scanned.counts.size}"
            )
        scanned.counts = scanned.counts + given.counts
        return None
    if opts.min_count > 1 or opts.target_size is not None:
        raise VocabPruneError("--kept gives the kept vocabulary: drop --min-count / --target-size")
    kept = KeptVocab.load(opts.kept)
    kept.check_model(model)
    kept.check_tokenizer(tokenizer)
    missing = np.flatnonzero((scanned.counts > 0) & (kept.old_to_new < 0))
    if missing.size:
        token = tokenizer.convert_ids_to_tokens(int(missing[0]))
        raise MismatchError(
            f"the kept vocabulary in {opts.kept} lacks {token!r} (id {int(missing[0])}) and "
            f"{missing.size - 1} more ids of the data"
        )
    return kept


def _unknown_policy(opts: PruneOptions, tokenizer: Any, dropped: int, standalone: bool) -> str:
    if standalone:  # its rewritten tokenizer maps uncovered text (deploy/coverage.py)
        return "unk"
    lossy = opts.min_count > 1 or opts.target_size is not None
    unknown = opts.unknown or ("unk" if lossy else "error")
    if dropped and not standalone and unknown == "error":
        raise VocabPruneError(
            f"the lossy vocabulary drops {dropped:,} tokens of the data: export with "
            "--unknown unk (or --standalone)"
        )
    if unknown == "unk" and not standalone and getattr(tokenizer, "unk_token_id", None) is None:
        raise VocabPruneError(
            "--unknown unk needs an UNK token and this tokenizer has none; use --standalone "
            "(dropped tokens then split into smaller kept pieces) or --unknown grow"
        )
    return unknown


def _weights_bytes(out: Path) -> int:
    """The exported weights: safetensors, onnx/model.onnx, or the GGUF file itself."""
    if out.is_file():
        return out.stat().st_size
    files = list(out.glob("*.safetensors")) or list(out.glob("onnx/model.onnx"))
    return sum(p.stat().st_size for p in files)


def _report(
    opts: PruneOptions,
    model_path: str,
    folder: Path,
    kept: tuple[KeptVocab, KeptVocab],
    scanned: Scanned,
) -> dict[str, Any]:
    """The report: `kept` is (chosen, written: with what a standalone tokenizer added)."""
    chosen, written = kept
    counts, lossy = scanned.counts, opts.min_count > 1 or opts.target_size is not None
    total = int(counts.sum())
    dropped = int(total - counts[chosen.kept_ids].sum())
    source_bytes = sum(p.stat().st_size for p in set(checkpoint_files(Path(model_path)).values()))
    weights_bytes = _weights_bytes(folder)
    in_data = int(np.count_nonzero(counts))
    return {
        "out": str(folder),
        "model": model_path,
        "standalone": opts.standalone,
        "vocab_size": int(counts.size),
        "kept_tokens": written.size,
        "ids_in_data": in_data,
        "forced_ids": len(written.forced_ids),
        "extra_ids": written.size - int(np.count_nonzero(counts[written.kept_ids])),
        "tokenizer_required_ids": int(written.meta.get("tokenizer_required_ids", 0)),
        "examples": len(scanned.corpus),
        "total_tokens": total,
        "max_length": opts.max_length,
        "lossy": lossy,
        "min_count": opts.min_count,
        "target_size": opts.target_size,
        "dropped_ids": in_data - int(np.count_nonzero(counts[chosen.kept_ids])),
        "dropped_tokens": dropped,
        "changed_tokens": dropped,
        "changed_fraction": dropped / total if total else 0.0,
        "source_weights_bytes": source_bytes,
        "export_weights_bytes": weights_bytes,
        "export_bytes": folder.stat().st_size if folder.is_file() else folder_bytes(folder),
        "weights_saved_fraction": 1 - weights_bytes / source_bytes if source_bytes else None,
    }


def run_prune(opts: PruneOptions, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Scan the data, keep its ids, and write the compact (or standalone) inference model."""
    started = time.perf_counter()
    say = log or (lambda _msg: None)
    out = _check(opts)
    model_path = opts.model or default_model()
    sources = list(opts.data) or default_data()
    tokenizer = load_tokenizer(model_path)
    cls = model_class(load_config(model_path))
    corpus = read_examples(sources, opts.text_column)
    say(f"read {len(corpus):,} examples; loading {cls.__name__} from {model_path}")
    model = load_model(cls, model_path, **model_kwargs(cls, model_path))
    model.eval()
    lossy = opts.min_count > 1 or opts.target_size is not None
    words = opts.standalone and not lossy and bool(opts.max_length)
    rows = int(model.get_input_embeddings().weight.shape[0])
    scanned = _scan(opts, tokenizer, corpus, rows, words)
    data = tokenizer_json(tokenizer) if opts.standalone else None
    given = _given(opts, tokenizer, model, scanned)
    prompts = set(prompt_ids(tokenizer, sentence_transformers_prompts(model_path)))
    template = _chat_template_ids(tokenizer)
    if given:
        kept, extra = given, set()
    else:
        kept, extra = _choose(opts, tokenizer, model, scanned, data, prompts | template)
    dropped = int(scanned.counts.sum() - scanned.counts[kept.kept_ids].sum())
    unknown = _unknown_policy(opts, tokenizer, dropped, data is not None)
    meta = _meta(opts, sources, scanned, lossy)
    kept = dataclasses.replace(kept, meta=meta)

    probe = read_examples(list(opts.probe), opts.text_column) if opts.probe else corpus

    def verify(folder: Path) -> dict[str, Any]:
        """The finished folder, before it is renamed into place: the rewritten tokenizer splits
        the corpus as the original (standalone), and how much of the probe text is covered."""
        report: dict[str, Any] = {}
        rewritten = None
        if data is not None:
            report = verify_standalone_tokenizer(
                folder, tokenizer, corpus, scanned.encoded, opts.max_length, lossless=not lossy
            )
            rewritten = load_tokenizer(str(folder))
        written = KeptVocab.load(folder / DEFAULT_FILENAME)
        report.update(
            probe_coverage(tokenizer, written.kept_ids, _texts(probe), standalone=rewritten)
        )
        report["probe"] = [str(p) for p in opts.probe] or "the data, untruncated"
        return report

    kind = "standalone" if opts.standalone else "compact"
    say(f"writing {kind} model ({opts.format}) to {out}")
    export = dict(standalone=opts.standalone, overwrite=opts.overwrite, unknown=unknown, meta=meta)
    if opts.standalone and read_modules(model_path) is not None:
        export["sentence_transformers"] = model_path  # pooling, normalize, prompts: as the source
    if opts.format == "gguf":
        folder, written, checked = _export_gguf(opts, model, tokenizer, kept, export, verify)
    else:
        folder, written, checked = export_pruned(
            model,
            tokenizer,
            kept,
            out,
            verify=verify,
            export_format=opts.format,
            quantize=opts.quantize == "int8",
            **export,
        )
    report = _report(opts, model_path, folder, (kept, written), scanned)
    boundary = len(extra - prompts - template) if not lossy else 0
    report.update(tokenizer_size=len(tokenizer), boundary_ids=boundary, prompt_ids=len(prompts))
    report.update(chat_template_ids=len(template), unknown=unknown, format=opts.format)
    report["quantize"] = opts.quantize
    if data is not None:
        report["uncovered"] = uncovered_mapping(data)
    report.update(checked, seconds=round(time.perf_counter() - started, 2))
    return report


def _meta(opts: PruneOptions, sources: list[Any], scanned: Scanned, lossy: bool) -> dict[str, Any]:
    """What the kept vocabulary records of how it was chosen."""
    return {
        "max_length": opts.max_length,
        "data": [str(s) for s in sources],
        "examples": len(scanned.corpus),
        "total_tokens": int(scanned.counts.sum()),
        "min_count": opts.min_count,
        "target_size": opts.target_size,
        "lossy": lossy,
    }


def _chat_template_ids(tokenizer: Any) -> set[int]:
    """The ids a chat template writes around the messages (markers, role names, a default
    system prompt): an instruct model is prompted through them, whatever the data holds."""
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        return set()
    ids: set[int] = set()
    turns = ("system", "user", "assistant")
    for roles, prompt in ((turns[1:], False), (turns[1:2], True), (turns[:2], True)):
        messages = [{"role": role, "content": ""} for role in roles]
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            )
        except (TemplateError, ValueError, TypeError):  # a template refusing a role or order
            continue
        ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def _texts(examples: Examples) -> list[str]:
    return list(examples.texts) + list(examples.pairs or [])


def _export_gguf(
    opts: PruneOptions,
    model: Any,
    tokenizer: Any,
    kept: KeptVocab,
    export: dict[str, Any],
    verify: Callable[[Path], dict[str, Any]],
) -> tuple[Path, KeptVocab, dict[str, Any]]:
    """--format gguf: the standalone folder in a scratch dir, handed to the GGUF writer
    (deploy/gguf.py), which writes `--out` as one file (f16 unless --quantize names a type);
    an embedding model's pooling is read from the sentence-transformers files the standalone
    folder copied from the source."""
    from vocabprune.core.files import scratch_dir
    from vocabprune.deploy.gguf import export_gguf

    with scratch_dir(opts.out, "standalone") as tmp:
        folder, written, checked = export_pruned(
            model, tokenizer, kept, tmp / "model", verify=verify, **export
        )
        checked["gguf"] = export_gguf(
            folder,
            opts.out,
            outtype=opts.quantize or "f16",
            overwrite=opts.overwrite,
            pooling=opts.pooling.upper() if opts.pooling else None,
        )
    return Path(opts.out), written, checked
