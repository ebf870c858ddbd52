"""Loading and running compact inference models written by `vocabprune prune` (export.py).

`load_compact(folder)` returns (model, tokenizer): an ordinary transformers model holding only
the kept rows, and the ORIGINAL tokenizer. Hooks on the model remap the tokenizer's ids on the
way in (input_ids, decoder_input_ids, and labels of a language-model head) and, for models with
a vocabulary-sized head, spread the logits back over the original ids on the way out (ids that
were dropped get -inf). So everything outside the model speaks original ids: HF pipelines
(feature-extraction, text-classification, text-generation), `generate`, the tokenizer's decode.

Tokens the pruning data never had follow the `unknown` policy:
- "error" (default): UnknownTokenError naming the token;
- "unk": mapped to the kept UNK;
- "grow": their rows are read on demand from the original safetensors checkpoint (memory-mapped,
  only those rows) and appended, so hidden states and classifier outputs equal the full model's
  exactly on any text. (Vocabulary logits cover the kept and grown ids; the rest stay -inf.)

A standalone export needs none of this: `load_compact` returns stock objects for it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vocabprune.errors import MismatchError, UnknownTokenError, VocabPruneError
from vocabprune.export import (
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    ORIGINAL_TOKENIZER_DIR,
    UNKNOWN_POLICIES,
    model_kwargs,
    safetensors_header_sha256,
)
from vocabprune.remap import IdRemapper
from vocabprune.vocab import CONFIG_ID_ATTRS, DEFAULT_FILENAME, KeptVocab

ADAPTER_ATTR = "_vocabprune_inference"
ID_KEYS = ("input_ids", "decoder_input_ids")


# -- reading files with clear errors ----------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing, truncated or corrupt file is one clear error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VocabPruneError(f"{what} not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VocabPruneError(f"{what} {path} is not valid JSON (truncated or corrupt)") from exc


def check_safetensors(path: Path) -> None:
    """Check a safetensors file's header and length: a truncated or corrupt file is refused."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            header = f.read(n) if 0 < n <= min(size - 8, 100 * 2**20) else b""
    except FileNotFoundError as exc:
        raise VocabPruneError(f"weights not found: {path}") from exc
    if len(header) != n or n <= 0:
        raise VocabPruneError(f"{path} is not a valid safetensors file (truncated header)")
    try:
        meta = json.loads(header)
        end = max(
            (int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise VocabPruneError(f"{path} is not a valid safetensors file (corrupt header)") from exc
    if 8 + n + end != size:
        raise VocabPruneError(
            f"{path} is truncated or corrupt: {size:,} bytes, the header describes {8 + n + end:,}"
        )


# -- the id map, grown on demand --------------------------------------------------------------


class _RowSource:
    """The original rows of one vocabulary-sized tensor, read from its safetensors checkpoint."""

    def __init__(self, names: list[str], axis: int, file: Path, key: str) -> None:
        self.names = names
        self.axis = axis
        self.file = file
        self.key = key

    def rows(self, ids: Sequence[int]) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as f:
            sl = f.get_slice(self.key)
            return torch.cat([sl[i : i + 1] for i in ids])


def _checkpoint_for(
    entry: Mapping[str, Any], source: str | os.PathLike[str] | None
) -> tuple[Path, str]:
    from vocabprune.rowstore import checkpoint_files

    recorded = entry.get("checkpoint")
    names = ", ".join(entry.get("names", []))
    if not recorded:
        raise VocabPruneError(
            f"unknown='grow' needs the original checkpoint of {names}, and this export has "
            "none recorded (the model was not loaded from safetensors, or had changed)"
        )
    key = str(recorded["key"])
    if source is not None:
        files = checkpoint_files(Path(source)) if Path(source).is_dir() else {key: Path(source)}
        file = files.get(key)
        if file is None:
            raise MismatchError(f"original checkpoint {source} has no tensor {key!r}")
    else:
        file = Path(recorded["file"])
    if not file.is_file():
        raise VocabPruneError(
            f"original checkpoint {file} (for unknown='grow') is gone; pass source=FOLDER"
        )
    found = safetensors_header_sha256(file)
    if found != recorded.get("header_sha256"):
        raise MismatchError(
            f"checkpoint {file} is not the one this export was made from (header fingerprint "
            f"{found}, expected {recorded.get('header_sha256')})"
        )
    return file, key


class InferenceAdapter:
    """Remaps original ids to compact ids in front of the model, logits back behind it."""

    def __init__(
        self,
        model: nn.Module,
        kept: KeptVocab,
        tokenizer: Any,
        *,
        unknown: str = "error",
        vocab_logits: bool = False,
        sources: Sequence[_RowSource] = (),
    ) -> None:
        if unknown not in UNKNOWN_POLICIES:
            raise VocabPruneError(
                f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {unknown!r}"
            )
        self.model = model
        self.kept = kept
        self.tokenizer = tokenizer
        self.unknown = unknown
        self.vocab_logits = vocab_logits
        self.sources = list(sources)
        # Messages (and the unk table) come from the same remapper the training path uses.
        self._remapper = IdRemapper(
            kept, tokenizer=tokenizer, unknown="unk" if unknown == "unk" else "error"
        )
        self._table = torch.as_tensor(self._remapper.table)
        self._back = torch.as_tensor(kept.kept_ids.copy())
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.grown = 0
        self.handles = [
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            model.register_forward_hook(self._post_hook),
        ]

    # maps

    @property
    def size(self) -> int:
        """Rows the model holds now (kept + grown)."""
        return int(self._back.numel())

    @property
    def original_ids(self) -> torch.Tensor:
        """The original id of each row the model holds now (kept, then grown)."""
        return self._back.clone()

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._cache:
            src = self._table if name == "table" else self._back
            self._cache[key] = src.to(device)
        return self._cache[key]

    def to_new(self, ids: torch.Tensor) -> torch.Tensor:
        """Original ids -> compact ids (growing the model under unknown='grow')."""
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() == 0:
            return ids
        ids64 = ids.long()
        if bool((ids64 >= self.kept.vocab_size).any()):
            self._remapper.raise_unknown(ids64[ids64 >= self.kept.vocab_size].cpu().numpy())
        table = self._on("table", ids64.device)
        new = table[ids64.clamp(min=0)]
        missing = (new < 0) & (ids64 >= 0)
        if bool(missing.any()):
            old = ids64[missing].unique().cpu()
            if self.unknown != "grow":
                self._remapper.raise_unknown(old.numpy())
            self.grow(old.tolist())
            new = self._on("table", ids64.device)[ids64.clamp(min=0)]
        return torch.where(ids64 < 0, ids64, new).to(ids.dtype)

    def to_old(self, ids: torch.Tensor) -> torch.Tensor:
        """Compact ids -> original ids."""
        back = self._on("back", ids.device)
        return torch.where(ids < 0, ids, back[ids.clamp(min=0)])

    # growing

    def grow(self, old_ids: Sequence[int]) -> None:
        """Append the original rows of `old_ids` (read from the checkpoint) to the model."""
        old_ids = sorted({int(i) for i in old_ids} - set(self._back.tolist()))
        if not old_ids:
            return
        if not self.sources:
            raise UnknownTokenError("unknown='grow' has no original checkpoint to read rows from")
        start = self.size
        updates = []
        for source in self.sources:
            if source.axis != 0:
                raise VocabPruneError(
                    f"cannot grow {source.names[0]}: it is indexed by id along axis {source.axis}"
                )
            live = self.model.get_parameter(source.names[0])
            if live.shape[0] != start:
                raise VocabPruneError(
                    f"{source.names[0]} has {live.shape[0]} rows, the id map {start}"
                )
            rows = source.rows(old_ids).to(device=live.device, dtype=live.dtype)
            grown = nn.Parameter(torch.cat([live.detach(), rows]), requires_grad=live.requires_grad)
            updates.append((source, grown))
        size = start + len(old_ids)
        for source, grown in updates:
            for name in source.names:
                module_name, _, attr = name.rpartition(".")
                module = self.model.get_submodule(module_name)
                setattr(module, attr, grown)
                if isinstance(module, nn.Embedding):
                    module.num_embeddings = size
                elif isinstance(module, nn.Linear) and attr == "weight":
                    module.out_features = size
        config = getattr(self.model, "config", None)
        if config is not None and getattr(config, "vocab_size", None) == start:
            config.vocab_size = size
        new_ids = torch.as_tensor(old_ids, dtype=torch.long)
        self._table[new_ids] = torch.arange(start, size, dtype=torch.long)
        self._back = torch.cat([self._back, new_ids])
        self._cache.clear()
        self.grown += len(old_ids)

    # hooks

    def _pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args and isinstance(args[0], torch.Tensor):
            args = (self.to_new(args[0]), *args[1:])
        for key in ID_KEYS:
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor):
                kwargs[key] = self.to_new(value)
        labels = kwargs.get("labels")
        if self.vocab_logits and isinstance(labels, torch.Tensor):
            kwargs["labels"] = self.to_new(labels)
        return args, kwargs

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self.vocab_logits:
            return output
        logits = getattr(output, "logits", None) if not isinstance(output, tuple) else None
        if not isinstance(logits, torch.Tensor) or logits.shape[-1] != self.size:
            return output
        full = logits.new_full((*logits.shape[:-1], self.kept.vocab_size), float("-inf"))
        full.index_copy_(-1, self._on("back", logits.device), logits)
        output.logits = full
        return output

    def remove(self) -> None:
        """Take the hooks off: the model reads compact ids again."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.model.__dict__.pop(ADAPTER_ATTR, None)


def get_adapter(model: Any) -> InferenceAdapter | None:
    """The adapter `load_compact` attached to a model, None for stock models."""
    return getattr(model, "__dict__", {}).get(ADAPTER_ATTR)


# -- loading ----------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export manifest; a folder that is no vocabprune export is one clear error."""
    if not folder.is_dir():
        raise VocabPruneError(f"compact model folder not found: {folder}")
    manifest = read_json(folder / MANIFEST, "export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VocabPruneError(f"{folder} is not a vocabprune export (bad {MANIFEST})")
    if int(manifest.get("version", 0)) > MANIFEST_VERSION:
        raise VocabPruneError(f"{folder} was written by a newer vocabprune")
    return manifest


def load_compact(
    path: str | os.PathLike[str],
    *,
    unknown: str | None = None,
    source: str | os.PathLike[str] | None = None,
    model_class: Any = None,
    tokenizer: Any = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load a compact (or standalone) export: (model, tokenizer), ready for pipelines.

    unknown: "error" | "unk" | "grow" (default: the policy recorded at export). source: the
    original model folder (or safetensors file) to grow from when it has moved. tokenizer: an
    already loaded original tokenizer to use (its fingerprint is checked). kwargs go to
    from_pretrained (torch_dtype, device_map, ...). Only safetensors and JSON are read.
    """
    import transformers
    from transformers import AutoTokenizer

    from vocabprune.loading import load_model

    given_tokenizer = tokenizer
    folder = Path(path)
    manifest = read_manifest(folder)
    kept = KeptVocab.load(folder / DEFAULT_FILENAME)
    if kept.size != manifest.get("kept_size") or kept.vocab_size != manifest.get("vocab_size"):
        raise MismatchError(
            f"{folder / DEFAULT_FILENAME} does not match the export ({kept.size} kept of "
            f"{kept.vocab_size}; the manifest says {manifest.get('kept_size')} of "
            f"{manifest.get('vocab_size')})"
        )
    config = read_json(folder / "config.json", "model config")
    if config.get("vocab_size") is not None and int(config["vocab_size"]) != kept.size:
        raise MismatchError(
            f"{folder / 'config.json'} has vocab_size {config['vocab_size']} but the kept "
            f"vocabulary {kept.size} ids"
        )
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)
    standalone = manifest.get("kind") == "standalone"
    tok_dir = folder if standalone else folder / ORIGINAL_TOKENIZER_DIR
    if not tok_dir.is_dir():
        raise VocabPruneError(f"tokenizer folder not found: {tok_dir}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tok_dir / name).is_file():
            read_json(tok_dir / name, "tokenizer file")
    if given_tokenizer is not None:
        tokenizer = given_tokenizer  # checked below like the stored one
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VocabPruneError(f"could not load the tokenizer from {tok_dir}: {exc}") from exc
    if standalone:
        if len(tokenizer) != kept.size:
            raise MismatchError(
                f"standalone tokenizer in {folder} has {len(tokenizer)} tokens, the kept "
                f"vocabulary {kept.size}"
            )
    else:
        kept.check_tokenizer(tokenizer)
    cls = model_class or getattr(transformers, str(manifest.get("model_class")), None)
    if cls is None:
        cls = transformers.AutoModel
    model = load_model(cls, str(folder), **{**model_kwargs(cls, folder), **kwargs})
    model.eval()
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows != kept.size:
        raise MismatchError(f"model in {folder} has {rows} embedding rows, kept {kept.size}")
    if standalone:
        return model, tokenizer
    policy = unknown or manifest.get("unknown") or "error"
    sources = []
    if policy == "grow":
        for entry in manifest.get("vocab_tensors", []):
            file, key = _checkpoint_for(entry, source)
            sources.append(_RowSource(list(entry["names"]), int(entry["axis"]), file, key))
    adapter = InferenceAdapter(
        model,
        kept,
        tokenizer,
        unknown=policy,
        vocab_logits=bool(manifest.get("vocab_logits")),
        sources=sources,
    )
    model.__dict__[ADAPTER_ATTR] = adapter
    _generation_ids_to_original(model, kept)
    return model, tokenizer


def _generation_ids_to_original(model: Any, kept: KeptVocab) -> None:
    """generate() works in original ids (logits are spread back), so its config ids must too;
    the model config keeps compact ids, which the model itself compares with remapped inputs."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    back = kept.kept_ids

    def old(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, (int, np.integer)):
            return int(back[value]) if 0 <= value < back.size else value
        if isinstance(value, (list, tuple)):
            return type(value)(old(v) for v in value)
        return value

    for attr in CONFIG_ID_ATTRS:
        if getattr(gen, attr, None) is not None:
            setattr(gen, attr, old(getattr(gen, attr)))


def compact_pipeline(task: str, path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """`transformers.pipeline(task)` over a compact export, with its original tokenizer.

    `unknown` and `source` go to load_compact, everything else to pipeline().
    """
    from transformers import pipeline

    load_kwargs = {k: kwargs.pop(k) for k in ("unknown", "source") if k in kwargs}
    model, tokenizer = load_compact(path, **load_kwargs)
    return pipeline(task, model=model, tokenizer=tokenizer, **kwargs)
