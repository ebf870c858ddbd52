"""Load a model already pruned: the dropped embedding rows are never read into memory.

`load_pruned(AutoModelForSequenceClassification, path, kept, num_labels=5)` is stock
`from_pretrained` with one difference: every vocabulary-sized tensor of the safetensors checkpoint
(input embedding, untied output head and its bias) is read row by row, only the kept rows, with
positioned reads (`os.preadv`, no memory map, so no page of a dropped row is ever mapped into the
process), and the model is built at the kept size. The result is the state `from_pretrained` +
`prune(model, kept)` gives, parameter for parameter; the untouched rows come back from the same
checkpoint at `restore`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vocabprune.errors import UnsupportedModelError, VocabPruneError
from vocabprune.prune import _owners, _vocab_tensors, config_id_changes, input_embedding
from vocabprune.rowstore import CheckpointRows, _candidate_keys, checkpoint_files
from vocabprune.state import AttrChange, PrunedState, PrunedTensor, attach
from vocabprune.vocab import KeptVocab

ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_PATCH_LOCK = threading.Lock()

# from_pretrained arguments that are not config overrides.
LOADER_KWARGS = (
    "dtype",
    "torch_dtype",
    "attn_implementation",
    "low_cpu_mem_usage",
    "ignore_mismatched_sizes",
    "output_loading_info",
    "local_files_only",
    "revision",
    "subfolder",
    "cache_dir",
    "trust_remote_code",
)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """(tensor table, byte offset of the data section) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids -> (start id, length) of each run of consecutive ids."""
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [ids.size]))
    return ids[starts], ends - starts


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise VocabPruneError("checkpoint file ended early while reading embedding rows")
        done += n


def read_rows(path: str | os.PathLike[str], key: str, ids: np.ndarray | None) -> torch.Tensor:
    """Rows `ids` (sorted, unique; None = all) of a 2-d+ tensor in a safetensors file.

    Positioned reads straight into the result (one read per run of consecutive ids): the file is
    never memory-mapped, so only the result's own bytes are held.
    """
    header, data_start = read_header(path)
    info = header[key]
    dtype = ST_DTYPES[info["dtype"]]
    shape = [int(s) for s in info["shape"]]
    begin = data_start + int(info["data_offsets"][0])
    row_bytes = (int(info["data_offsets"][1]) - int(info["data_offsets"][0])) // max(shape[0], 1)
    rows = shape[0] if ids is None else int(ids.size)
    out = torch.empty([rows, *shape[1:]], dtype=dtype)
    if out.numel() == 0:
        return out
    flat = memoryview(out.view(-1).view(torch.uint8).numpy()).cast("B")
    fd = os.open(path, os.O_RDONLY)
    try:
        if ids is None:
            _pread_into(fd, flat, begin)
            return out
        starts, lengths = _runs(np.asarray(ids, dtype=np.int64))
        dst = 0
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            nbytes = length * row_bytes
            _pread_into(fd, flat[dst : dst + nbytes], begin + start * row_bytes)
            dst += nbytes
    finally:
        os.close(fd)
    return out


class KeptRowsSlice:
    """Stands in for a safetensors slice: `[...]` reads only the kept rows (or last-axis ids)."""

    def __init__(self, path: str, key: str, base: Any, ids: np.ndarray, axis: int) -> None:
        self.path, self.key, self._base, self.ids, self.axis = path, key, base, ids, axis

    def get_shape(self) -> list[int]:
        shape = list(self._base.get_shape())
        shape[self.axis] = int(self.ids.size)
        return shape

    def get_dtype(self) -> str:
        return str(self._base.get_dtype())

    def __getitem__(self, item: Any) -> torch.Tensor:
        if item is not Ellipsis and item != slice(None):
            raise VocabPruneError(f"load_pruned: unexpected slice {item!r} of {self.key}")
        if self.axis == 0:
            return read_rows(self.path, self.key, self.ids)
        full = self._base[...]  # a 1 x vocab bias: small, read whole
        return full.index_select(self.axis, torch.as_tensor(self.ids, dtype=torch.long))


class _PrunedFile:
    """A safetensors file handle whose vocabulary-sized slices read only the kept rows."""

    def __init__(self, handle: Any, path: str, plan: dict[str, int], ids: np.ndarray) -> None:
        self._handle, self._path, self._plan, self._ids = handle, path, plan, ids

    def get_slice(self, key: str) -> Any:
        base = self._handle.get_slice(key)
        axis = self._plan.get(key)
        if axis is None:
            return base
        return KeptRowsSlice(self._path, key, base, self._ids, axis)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _PrunedFile:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._handle.__exit__(*exc)


def vocab_keys(folder: Path, vocab_size: int) -> dict[str, int]:
    """Checkpoint keys of vocabulary-indexed tensors -> the axis that is indexed by id.

    Rows of the input embedding and of an output head ([vocab, hidden]), a head bias ([vocab]),
    and `*logits_bias` buffers ([1, vocab]).
    """
    plan: dict[str, int] = {}
    for key, path in checkpoint_files(folder).items():
        header, _ = read_header(path)
        shape = header[key]["shape"]
        if shape and int(shape[0]) == vocab_size and "logits_bias" not in key:
            plan[key] = 0
        elif "logits_bias" in key and shape and int(shape[-1]) == vocab_size:
            plan[key] = len(shape) - 1
    return plan


@contextlib.contextmanager
def _sliced_loading(plan: dict[str, int], ids: np.ndarray) -> Iterator[None]:
    """While loading, transformers' safetensors handles hand out kept-rows slices."""
    import transformers.modeling_utils as mu

    original = mu.safe_open

    def patched(filename: Any, *args: Any, **kwargs: Any) -> Any:
        return _PrunedFile(original(filename, *args, **kwargs), str(filename), plan, ids)

    with _PATCH_LOCK:
        mu.safe_open = patched
        try:
            yield
        finally:
            mu.safe_open = original


def load_pruned(
    auto_class: Any,
    path: str | os.PathLike[str],
    kept: KeptVocab,
    **kwargs: Any,
) -> Any:
    """`auto_class.from_pretrained(path, **kwargs)` then `prune(model, kept)`, without ever
    holding the dropped rows: only the kept rows of each vocabulary-sized tensor are read.

    Needs a local safetensors checkpoint. Vocabulary-sized output heads are pruned with the input
    embedding (as `prune(..., output="auto")`); `restore(model)` reads the untouched rows back
    from the same checkpoint.
    """
    from transformers import AutoConfig

    folder = Path(path)
    if not folder.is_dir() or not checkpoint_files(folder):
        raise VocabPruneError(
            f"load_pruned needs a local folder with a safetensors checkpoint: {path}"
        )
    for bad in ("state_dict", "gguf_file", "device_map", "tp_plan", "quantization_config"):
        if kwargs.get(bad) is not None:
            raise UnsupportedModelError(f"load_pruned does not support {bad}=...")
    config = kwargs.pop("config", None)
    if config is not None:
        config = copy.deepcopy(config)  # the caller's config is left as it was
    else:
        loader = {k: kwargs.pop(k) for k in LOADER_KWARGS if k in kwargs}
        config, kwargs = AutoConfig.from_pretrained(
            str(folder), return_unused_kwargs=True, trust_remote_code=False, **kwargs
        )
        kwargs.update(loader)
    full = int(getattr(config, "vocab_size", 0) or 0)
    if full != kept.vocab_size:
        raise VocabPruneError(
            f"kept vocabulary covers {kept.vocab_size} ids but {path} has vocab_size {full}"
        )
    ids = np.asarray(kept.kept_ids, dtype=np.int64)
    plan = vocab_keys(folder, full)
    if not plan:
        raise UnsupportedModelError(f"{path}: no tensor of {full} rows in the checkpoint")

    # Build at the kept size, with config ids already following the map (as prune leaves them).
    config_changes: list[AttrChange] = [AttrChange(config, "vocab_size", full, kept.size)]
    config_changes += config_id_changes(config, kept, "config")
    for change in config_changes:
        change.apply()
    try:
        with _sliced_loading(plan, ids):
            model = auto_class.from_pretrained(
                str(folder), config=config, use_safetensors=True, **kwargs
            )
    finally:
        for change in config_changes:
            change.revert()
    # from_pretrained keeps its own copy of the config: record the changes on that one.
    config_changes = [AttrChange(model.config, c.attr, c.old, c.new) for c in config_changes]
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        for change in config_id_changes(gen, kept, "generation_config"):
            change.apply()
            config_changes.append(change)
    _attach_state(model, kept, config_changes, folder)
    return model


def _attach_state(
    model: nn.Module, kept: KeptVocab, config_changes: list[AttrChange], folder: Path
) -> None:
    """Give the freshly loaded kept-size model the record `prune` would have attached."""
    emb = input_embedding(model)
    if emb.weight.shape[0] != kept.size:
        raise UnsupportedModelError(
            f"{type(model).__name__}: input embedding has {emb.weight.shape[0]} rows after "
            f"loading, expected the kept {kept.size}"
        )
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    if head is not None and not (isinstance(head, nn.Linear) and head.weight.shape[0] == kept.size):
        raise UnsupportedModelError(
            f"{type(model).__name__}: output head is not a linear layer over the vocabulary; "
            "use from_pretrained + prune(output='keep')"
        )
    files = checkpoint_files(folder)
    base_prefix = getattr(model, "base_model_prefix", None)
    tensors: list[PrunedTensor] = []
    module_changes: list[AttrChange] = []
    for tensor, axis, is_param in _vocab_tensors(model, emb, head, kept.size):
        owners = _owners(model, tensor)
        store = None
        for _, _, qualname in owners:
            for key in _candidate_keys(qualname, base_prefix):
                if key in files:
                    store = CheckpointRows(files[key], key, tensor.dtype)
                    break
            if store is not None:
                break
        if store is None:
            raise UnsupportedModelError(
                f"{owners[0][2]}: not found in the checkpoint, cannot read its rows back"
            )
        tensors.append(
            PrunedTensor(
                owners=owners,
                axis=axis,
                full_size=kept.vocab_size,
                is_parameter=is_param,
                store=store,
            )
        )
        if axis == 0:
            for module, attr, _ in owners:
                if attr != "weight":
                    continue
                if isinstance(module, nn.Embedding):
                    module_changes.append(
                        AttrChange(module, "num_embeddings", kept.vocab_size, kept.size)
                    )
                    pad = module.padding_idx
                    if pad is not None:
                        old = int(kept.kept_ids[pad])
                        module_changes.append(AttrChange(module, "padding_idx", old, pad))
                elif isinstance(module, nn.Linear):
                    module_changes.append(
                        AttrChange(module, "out_features", kept.vocab_size, kept.size)
                    )
    # Wrapper modules that keep the pad id as a position offset (RoBERTa) must not see it move.
    pad_change = next((c for c in config_changes if c.attr == "pad_token_id"), None)
    if pad_change is not None and pad_change.obj is getattr(model, "config", None):
        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding):
                continue
            if module.__dict__.get("padding_idx") == pad_change.new:
                raise UnsupportedModelError(
                    f"{name or type(module).__name__} uses pad id {pad_change.old} as a position "
                    f"offset and the kept vocabulary renumbers it to {pad_change.new}; keep every"
                    f" id below {pad_change.old} (extra_ids=range({pad_change.old}))"
                )
    state = PrunedState(
        kept=kept,
        tensors=tensors,
        full_input_shape=(kept.vocab_size, int(emb.weight.shape[1])),
        module_changes=module_changes,
        config_changes=config_changes,
        output_pruned=head is not None,
    )
    attach(model, state)
