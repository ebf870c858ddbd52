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
  and run it with vocabprune not installed. Text the kept vocabulary lacks is tokenized by the
  rewritten tokenizer itself (smaller kept pieces, byte pieces, or UNK: the manifest's
  `uncovered` says which); `export_format="onnx"` converts that folder to ONNX (onnx.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.core.errors import MismatchError, VocabPruneError
from vocabprune.core.files import atomic_dir
from vocabprune.core.model import output_head, prune_target, state_owner
from vocabprune.core.prune import prune
from vocabprune.core.restore import restore
from vocabprune.core.state import PrunedState, compact_saves, get_state
from vocabprune.core.surgery import config_id_changes, config_vocab_change, module_vocab_changes
from vocabprune.core.vocab import DEFAULT_FILENAME, KeptVocab
from vocabprune.data.sources import Examples
from vocabprune.deploy.coverage import uncovered_mapping
from vocabprune.deploy.manifest import (
    MANIFEST,
    ORIGINAL_TOKENIZER_DIR,
    build_manifest,
    check_format,
    check_unknown,
)
from vocabprune.deploy.selection import encode
from vocabprune.deploy.sentence_files import (
    copy_sentence_transformers_files,
    is_sentence_transformer,
    write_sentence_transformers_files,
)
from vocabprune.deploy.tokenizer_rewrite import (
    required_ids,
    rewrite_tokenizer_folder,
    tokenizer_json,
)


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


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- export -----------------------------------------------------------------------------------


def _kept_for(model: Any, kept: KeptVocab, data: dict[str, Any] | None) -> KeptVocab:
    """The kept vocabulary to write: a standalone tokenizer adds the ids it needs (BPE merge
    parts, byte symbols), which only a full model can provide."""
    state = get_state(model)
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
    return kept


def _write_compact_model(owner: Any, state: PrunedState, folder: Path) -> None:
    """Save the model as it is now, kept rows only, as an ordinary model that reads kept ids:
    its config ids renumbered (a model pruned with ids='original' keeps them original). A frozen
    head's model kept its full vocab_size (its logits were over the whole vocabulary); the
    compact model's head has the kept rows only, so its vocab sizes say so."""
    renumber = config_id_changes(owner, state.kept) if state.ids == "original" else []
    if state.frozen_head:
        sizes = (state.kept.vocab_size, state.kept.size)
        renumber += module_vocab_changes(owner, *sizes) + config_vocab_change(owner, *sizes)
    with compact_saves(owner, state):
        for change in renumber:
            change.apply()
        try:
            owner.save_pretrained(folder, safe_serialization=True)
        finally:
            for change in reversed(renumber):
                change.revert()


def _write_tokenizer(
    folder: Path, tokenizer: Any, kept: KeptVocab, data: dict[str, Any] | None
) -> None:
    """The original tokenizer beside a compact model, or rewritten for a standalone one."""
    if data is None:
        tokenizer.save_pretrained(folder / ORIGINAL_TOKENIZER_DIR)
        return
    tokenizer.save_pretrained(folder)
    rewrite_tokenizer_folder(
        folder,
        data,
        kept.kept_ids.tolist(),
        model_input_names=getattr(tokenizer, "model_input_names", None),
    )


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
    export_format: str = "hf",
    quantize: bool = False,
    sentence_transformers: str | os.PathLike[str] | None = None,
) -> tuple[Path, KeptVocab, dict[str, Any]]:
    """Write a compact (or standalone) inference model of `model` restricted to `kept`.

    The model may be full (it is pruned for the write and restored after) or already pruned
    with this kept vocabulary (e.g. after pruned fine-tuning; it stays pruned). For a
    standalone export the ids the rewritten tokenizer needs (BPE merge parts, byte symbols) are
    added to the kept vocabulary first; the kept vocabulary actually written is returned.
    `verify(tmp_folder)` runs on the finished folder before it is renamed into place; it may
    raise to abort the export. `export_format="onnx"` (standalone only) replaces the PyTorch
    weights by `onnx/model.onnx` (int8 `onnx/model_quantized.onnx` too with `quantize`),
    checked against the model. A standalone export of a SentenceTransformer writes its
    sentence-transformers files (modules.json, pooling, dense, normalize, prompts) as the model
    saves them, so SentenceTransformer loads the export as it would the model;
    `sentence_transformers`: a source folder to copy them from instead (the CLI's way).
    Returns (folder, kept vocabulary written, verify's report with the ONNX report under "onnx"
    and the sentence-transformers modules written under "sentence_transformers").
    """
    check_unknown(unknown)
    if check_format(export_format, standalone=standalone, quantize=quantize) == "gguf":
        raise VocabPruneError("GGUF files are written by vocabprune.deploy.gguf.export_gguf")
    kept.check_tokenizer(tokenizer)
    if sentence_transformers is not None and not standalone:
        raise VocabPruneError(
            "sentence_transformers= is for standalone exports (a compact model reads remapped "
            "ids: SentenceTransformer cannot load it)"
        )
    data = tokenizer_json(tokenizer) if standalone else None
    kept = _kept_for(model, kept, data)
    was_pruned = get_state(model) is not None
    # A compact model's head scores the kept ids: the restricted head is what it writes (the
    # frozen head, the default, would hold its dropped rows for nothing).
    head = output_head(prune_target(model)) is not None
    state = get_state(model) or prune(model, kept, output="prune" if head else "auto")
    report: dict[str, Any] = {}
    try:
        owner = state_owner(model)
        manifest = build_manifest(owner, state, standalone=standalone, unknown=unknown, meta=meta)
        if data is not None:
            manifest["uncovered"] = uncovered_mapping(data)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            _write_compact_model(owner, state, tmp)
            kept.save(tmp / DEFAULT_FILENAME)
            _write_tokenizer(tmp, tokenizer, kept, data)
            if sentence_transformers is not None:
                manifest["sentence_transformers"] = copy_sentence_transformers_files(
                    sentence_transformers, tmp
                )
            elif standalone and is_sentence_transformer(model):
                manifest["sentence_transformers"] = write_sentence_transformers_files(model, tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            if verify is not None:
                report = verify(tmp) or {}
                manifest["checked"] = dict(report)  # e.g. the tokenizer check, probe coverage
            if "sentence_transformers" in manifest:
                report["sentence_transformers"] = manifest["sentence_transformers"]
            if export_format == "onnx":
                from vocabprune.deploy.onnx import convert_folder

                report["onnx"] = convert_folder(tmp, quantize=quantize)
                manifest.update(weights_format="onnx", onnx=report["onnx"])
            if report:
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    finally:
        if not was_pruned and get_state(model) is not None:
            restore(model)
    return Path(out), kept, report


# -- checking a standalone tokenizer ----------------------------------------------------------


def _sequence_changes(old: list[int], new: list[int]) -> int:
    if old == new:
        return 0
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    return len(old) - sum(block.size for block in matcher.get_matching_blocks())


def verify_standalone_tokenizer(
    folder: Path,
    tokenizer: Any,
    corpus: Examples,
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
