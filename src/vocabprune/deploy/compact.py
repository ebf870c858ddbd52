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
- "grow": their rows are read on demand from the original safetensors checkpoint (only those
  rows) and appended, so hidden states and classifier outputs equal the full model's exactly on
  any text. (Vocabulary logits cover the kept and grown ids; the rest stay -inf.)

A standalone export needs none of this: `load_compact` returns stock objects for it (one
pre-hook on the input embedding turns ids of the original tokenizer, which reach past its rows,
into a one-line error instead of an IndexError).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vocabprune.core.checkpoint import checkpoint_files, header_sha256, read_header, read_rows
from vocabprune.core.decoding import Switched, generate_over_kept
from vocabprune.core.errors import MismatchError, UnknownTokenError, VocabPruneError
from vocabprune.core.files import read_json
from vocabprune.core.ids import (
    ID_KEYS,
    IdRemapper,
    config_id_updates,
    map_ids,
    required_new_id,
    spread_logits,
)
from vocabprune.core.loaders import load_model, model_kwargs
from vocabprune.core.state import AttrChange, PrunedTensor
from vocabprune.core.surgery import resize, vocab_tensors
from vocabprune.core.vocab import CONFIG_ID_ATTRS, DEFAULT_FILENAME, KeptVocab
from vocabprune.deploy.manifest import ORIGINAL_TOKENIZER_DIR, check_unknown, read_manifest

ADAPTER_ATTR = "_vocabprune_inference"


# -- the original rows, read on demand ---------------------------------------------------------


class _RowSource:
    """The original rows of one vocabulary-sized tensor, read from its safetensors checkpoint."""

    def __init__(self, names: list[str], axis: int, file: Path, key: str) -> None:
        self.names = names
        self.axis = axis
        self.file = file
        self.key = key

    def rows(self, ids: Sequence[int]) -> torch.Tensor:
        return read_rows(self.file, self.key, np.asarray(sorted(ids), dtype=np.int64))


def _checkpoint_for(
    entry: Mapping[str, Any], source: str | os.PathLike[str] | None
) -> tuple[Path, str]:
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
        file = Path(str(recorded.get("file")))
    if not file.is_file():
        raise VocabPruneError(
            f"original checkpoint {file} (for unknown='grow') is gone; pass source=FOLDER"
        )
    found = header_sha256(file)
    if found != recorded.get("header_sha256"):
        raise MismatchError(
            f"checkpoint {file} is not the one this export was made from (header fingerprint "
            f"{found}, expected {recorded.get('header_sha256')})"
        )
    return file, key


# -- the adapter ---------------------------------------------------------------------------------


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
        self.model = model
        self.kept = kept
        self.tokenizer = tokenizer
        self.unknown = check_unknown(unknown)
        self.vocab_logits = vocab_logits
        self.sources = list(sources)
        self.remapper = IdRemapper(
            kept,
            tokenizer=tokenizer,
            unknown="unk" if unknown == "unk" else "error",
            on_missing=self.grow if unknown == "grow" else None,
        )
        self.grown = 0
        self.over_kept = False  # while generate() decodes over the compact ids
        self._column_cache: dict[torch.device, torch.Tensor] = {}
        self.handles = [
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            model.register_forward_hook(self._post_hook),
        ]

    @property
    def size(self) -> int:
        """Rows the model holds now (kept + grown)."""
        return self.remapper.size

    @property
    def original_ids(self) -> torch.Tensor:
        """The original id of each row the model holds now (kept, then grown)."""
        return self.remapper.original_ids

    def to_new(self, ids: Any) -> Any:
        """Original ids -> compact ids (growing the model under unknown='grow')."""
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids, dtype=torch.long)
        return self.remapper.to_new(ids)

    def to_old(self, ids: torch.Tensor) -> torch.Tensor:
        """Compact ids -> original ids."""
        return self.remapper.to_old(ids)  # type: ignore[no-any-return]

    def _source_of(self, tensor: PrunedTensor) -> _RowSource:
        for source in self.sources:
            if set(source.names) & set(tensor.names):
                if source.axis != 0:
                    raise VocabPruneError(
                        f"cannot grow {source.names[0]}: it is indexed by id along axis "
                        f"{source.axis}"
                    )
                return source
        raise UnknownTokenError(
            f"unknown='grow' has no original checkpoint to read rows of {tensor.name} from"
        )

    def grow(self, old_ids: Sequence[int]) -> None:
        """Append the original rows of `old_ids` (read from the checkpoint) to the model."""
        have = set(self.remapper.original_ids.tolist())
        wanted = sorted({int(i) for i in old_ids} - have)
        if not wanted:
            return
        tensors = vocab_tensors(self.model, output="auto" if self.vocab_logits else "keep")
        values = []
        for tensor in tensors:  # every read first: a failure leaves the model as it was
            live = tensor.live()
            if live.shape[tensor.axis] != self.size:
                raise VocabPruneError(
                    f"{tensor.name} has {live.shape[0]} rows, the id map {self.size}"
                )
            rows = self._source_of(tensor).rows(wanted).to(device=live.device, dtype=live.dtype)
            values.append(torch.cat([live.detach(), rows]))
        resize(self.model, tensors, values)
        self.remapper.extend(wanted)
        self.grown += len(wanted)

    # hooks

    def _pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.over_kept:  # generate() over the compact ids gives compact ids
            return args, kwargs
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
        if not self.vocab_logits or self.over_kept:
            return output
        logits = getattr(output, "logits", None) if not isinstance(output, tuple) else None
        if not isinstance(logits, torch.Tensor) or logits.shape[-1] != self.size:
            return output
        output.logits = spread_logits(
            logits, self._columns(logits.device), self.kept.vocab_size, fill=float("-inf")
        )
        return output

    def _columns(self, device: torch.device) -> torch.Tensor:
        """The original id of each row, on `device`, kept until the model grows (not rebuilt
        and copied at every decoding step)."""
        size = self.size
        cached = self._column_cache.get(device)
        if cached is None or cached.numel() != size:
            cached = self.original_ids.to(device)
            self._column_cache[device] = cached
        return cached

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The model's generate() (load_compact sets it): over the compact ids, with no
        per-step work over the whole vocabulary, original ids in and out (core/decoding.py)."""
        return generate_over_kept(
            self.model, self.kept, self.remapper, self._reading_compact, args, kwargs
        )

    def _reading_compact(self) -> Switched:
        """The model reads compact ids and emits their columns; its generation config's ids
        (original ones, for generate() in original ids) are compact ids for the duration."""
        gen = self.model.generation_config
        updates = config_id_updates(
            gen,
            lambda attr: required_new_id(
                self.kept, f"generation_config.{attr}", "generate() runs the stock way"
            ),
        )
        changes = [AttrChange(gen, attr, old, new) for attr, old, new in updates]
        return Switched(changes, lambda on: setattr(self, "over_kept", on))

    def remove(self) -> None:
        """Take the hooks off: the model reads compact ids again."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.model.__dict__.pop(ADAPTER_ATTR, None)
        self.model.__dict__.pop("generate", None)


def get_adapter(model: Any) -> InferenceAdapter | None:
    """The adapter `load_compact` attached to a model, None for stock models."""
    return getattr(model, "__dict__", {}).get(ADAPTER_ATTR)


# -- loading ----------------------------------------------------------------------------------


def _check_files(folder: Path, manifest: dict[str, Any]) -> KeptVocab:
    """The export's kept vocabulary, config and weights agree with its manifest."""
    kept = KeptVocab.load(folder / DEFAULT_FILENAME)
    if kept.size != manifest.get("kept_size") or kept.vocab_size != manifest.get("vocab_size"):
        raise MismatchError(
            f"{folder / DEFAULT_FILENAME} does not match the export ({kept.size} kept of "
            f"{kept.vocab_size}; the manifest says {manifest.get('kept_size')} of "
            f"{manifest.get('vocab_size')})"
        )
    config = read_json(folder / "config.json", "model config")
    if not isinstance(config, dict):
        raise VocabPruneError(f"{folder / 'config.json'} is not a JSON object")
    if config.get("vocab_size") is not None and config["vocab_size"] != kept.size:
        raise MismatchError(
            f"{folder / 'config.json'} has vocab_size {config['vocab_size']} but the kept "
            f"vocabulary {kept.size} ids"
        )
    for weights in sorted(folder.glob("*.safetensors")):
        read_header(weights)  # complete and readable, or one clear error
    return kept


def _export_tokenizer(folder: Path, kept: KeptVocab, standalone: bool, given: Any) -> Any:
    """The export's tokenizer (or the one given), checked against the kept vocabulary."""
    from transformers import AutoTokenizer

    tok_dir = folder if standalone else folder / ORIGINAL_TOKENIZER_DIR
    if given is None:
        if not tok_dir.is_dir():
            raise VocabPruneError(f"tokenizer folder not found: {tok_dir}")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (tok_dir / name).is_file():
                read_json(tok_dir / name, "tokenizer file")
        try:
            given = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VocabPruneError(f"could not load the tokenizer from {tok_dir}: {exc}") from exc
    if standalone and len(given) != kept.size:
        raise MismatchError(
            f"standalone tokenizer in {folder} has {len(given)} tokens, the kept "
            f"vocabulary {kept.size}"
        )
    if not standalone:
        kept.check_tokenizer(given)
    return given


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

    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest.get("weights_format", "hf") != "hf":
        raise VocabPruneError(
            f"{folder} holds {manifest['weights_format']} weights: run it with its runtime "
            "(ONNX Runtime, llama.cpp), not load_compact"
        )
    kept = _check_files(folder, manifest)
    standalone = manifest.get("kind") == "standalone"
    tokenizer = _export_tokenizer(folder, kept, standalone, tokenizer)
    cls = model_class or getattr(transformers, str(manifest.get("model_class")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = transformers.AutoModel
    model = load_model(cls, str(folder), **{**model_kwargs(cls, folder), **kwargs})
    model.eval()
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows != kept.size:
        raise MismatchError(f"model in {folder} has {rows} embedding rows, kept {kept.size}")
    if standalone:
        _refuse_outside(model, rows, folder)
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
    if adapter.vocab_logits and hasattr(type(model), "generate"):
        model.__dict__["generate"] = adapter.generate  # as transformers' custom generate does
    return model, tokenizer


def _refuse_outside(model: Any, rows: int, folder: Path) -> None:
    """A standalone model reads the ids of its own (rewritten) tokenizer. Ids of the original
    tokenizer reach past its rows; name that in one line instead of the embedding's bare
    IndexError. One comparison per forward; the model stays a stock one otherwise."""

    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        ids = args[0] if args else None
        if isinstance(ids, torch.Tensor) and ids.numel() and int(ids.max()) >= rows:
            raise UnknownTokenError(
                f"token id {int(ids.max())} is outside the {rows:,} ids of the standalone model "
                f"in {folder}: it reads the ids of its own tokenizer (the one load_compact "
                "returns, or AutoTokenizer on that folder), not the original tokenizer's"
            )

    model.get_input_embeddings().register_forward_pre_hook(check)


def _generation_ids_to_original(model: Any, kept: KeptVocab) -> None:
    """generate() works in original ids (logits are spread back), so its config ids must too;
    the model config keeps compact ids, which the model itself compares with remapped inputs."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    back = kept.kept_ids

    def old(value: int) -> int:
        return int(back[value]) if value < back.size else value

    for attr in CONFIG_ID_ATTRS:
        if getattr(gen, attr, None) is not None:
            setattr(gen, attr, map_ids(getattr(gen, attr), old))


def compact_pipeline(task: str, path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """`transformers.pipeline(task)` over a compact export, with its original tokenizer.

    `unknown` and `source` go to load_compact, everything else to pipeline().
    """
    from transformers import pipeline

    load_kwargs = {k: kwargs.pop(k) for k in ("unknown", "source") if k in kwargs}
    model, tokenizer = load_compact(path, **load_kwargs)
    return pipeline(task, model=model, tokenizer=tokenizer, **kwargs)
