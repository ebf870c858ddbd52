"""The export manifest (`vocabprune_export.json`): what a compact or standalone export holds and
where the original rows of each vocabulary tensor live, written by export and read (checked) by
load_compact. The one place that knows its format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vocabprune.core.checkpoint import header_sha256
from vocabprune.core.errors import VocabPruneError
from vocabprune.core.files import read_json
from vocabprune.core.state import PrunedState

MANIFEST = "vocabprune_export.json"
MANIFEST_FORMAT = "vocabprune.export"
MANIFEST_VERSION = 1
ORIGINAL_TOKENIZER_DIR = "original_tokenizer"
UNKNOWN_POLICIES = ("error", "unk", "grow")
KINDS = ("compact", "standalone")
FORMATS = ("hf", "onnx", "gguf")  # hf: safetensors + config; onnx: onnx/model.onnx; gguf: one file


def check_unknown(unknown: Any) -> str:
    if unknown not in UNKNOWN_POLICIES:
        raise VocabPruneError(
            f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {unknown!r}"
        )
    return str(unknown)


def check_format(export_format: Any, *, standalone: bool, quantize: bool = False) -> str:
    """The export format: onnx (and gguf) are standalone only (stock runtimes read the rewritten
    tokenizer; they know no id map); quantization is for onnx."""
    if export_format not in FORMATS:
        raise VocabPruneError(f"format must be one of {', '.join(FORMATS)}, not {export_format!r}")
    if export_format != "hf" and not standalone:
        raise VocabPruneError(f"format {export_format} is a standalone export: add --standalone")
    if quantize and export_format != "onnx":
        raise VocabPruneError("quantize is for format onnx")
    return str(export_format)


def tensor_entries(state: PrunedState) -> list[dict[str, Any]]:
    """Per pruned tensor: its names, axis, full size, and the checkpoint its rows came from."""
    entries = []
    for tensor in state.tensors:
        entry: dict[str, Any] = {
            "names": tensor.names,
            "axis": tensor.axis,
            "full_size": tensor.full_size,
            "checkpoint": None,
        }
        path, key = getattr(tensor.store, "path", None), getattr(tensor.store, "key", None)
        if path is not None and key is not None:
            entry["checkpoint"] = {
                "file": str(Path(path).resolve()),
                "key": key,
                "header_sha256": header_sha256(path),
            }
        entries.append(entry)
    return entries


def build_manifest(
    owner: Any,
    state: PrunedState,
    *,
    standalone: bool,
    unknown: str,
    meta: dict[str, Any] | None,
) -> dict[str, Any]:
    kept = state.kept
    head = getattr(owner, "get_output_embeddings", lambda: None)()
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": "standalone" if standalone else "compact",
        "model_class": type(owner).__name__,
        "source_model": str(getattr(owner, "name_or_path", "") or ""),
        "vocab_size": kept.vocab_size,
        "kept_size": kept.size,
        "original_tokenizer_fingerprint": kept.tokenizer_fingerprint,
        "unknown": check_unknown(unknown),
        "vocab_logits": bool(state.output_pruned and head is not None),
        "vocab_tensors": tensor_entries(state),
        "meta": dict(meta or {}),
    }


def _check_entries(folder: Path, entries: Any) -> None:
    if not isinstance(entries, list):
        raise VocabPruneError(f"{folder / MANIFEST}: vocab_tensors is not a list")
    for entry in entries:
        names = entry.get("names") if isinstance(entry, dict) else None
        axis = entry.get("axis") if isinstance(entry, dict) else None
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) for n in names)
            or not isinstance(axis, int)
            or isinstance(axis, bool)
            or axis < 0
        ):
            raise VocabPruneError(f"{folder / MANIFEST}: malformed vocab_tensors entry {entry!r}")
        checkpoint = entry.get("checkpoint")
        if checkpoint is not None and not (
            isinstance(checkpoint, dict) and isinstance(checkpoint.get("key"), str)
        ):
            raise VocabPruneError(f"{folder / MANIFEST}: malformed checkpoint of {names[0]!r}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export manifest, checked; a folder that is no vocabprune export is one clear error."""
    if not folder.is_dir():
        raise VocabPruneError(f"compact model folder not found: {folder}")
    manifest = read_json(folder / MANIFEST, "export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VocabPruneError(f"{folder} is not a vocabprune export (bad {MANIFEST})")
    version = manifest.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise VocabPruneError(f"{folder / MANIFEST}: version is not a number")
    if version > MANIFEST_VERSION:
        raise VocabPruneError(f"{folder} was written by a newer vocabprune")
    if manifest.get("kind", "compact") not in KINDS:
        raise VocabPruneError(f"{folder / MANIFEST}: unknown kind {manifest.get('kind')!r}")
    for key in ("kept_size", "vocab_size"):
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise VocabPruneError(f"{folder / MANIFEST}: {key} is not a positive number")
    if manifest.get("unknown") is not None:
        check_unknown(manifest["unknown"])
    _check_entries(folder, manifest.get("vocab_tensors", []))
    return manifest
