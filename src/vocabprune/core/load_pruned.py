"""Load a model already pruned: the dropped embedding rows are never read into memory.

`load_pruned(AutoModelForSequenceClassification, path, kept, num_labels=5)` gives the model that
`from_pretrained(path, num_labels=5)` + `prune(model, kept)` gives, parameter for parameter, by the
same surgery plan. The model is built by stock `from_pretrained` from a state dict we read
ourselves: every tensor as stored, except the vocabulary-indexed matrices, which stand in as
zero-stride views of their full shape (no memory); the plan then swaps in their kept rows, read
with positioned reads (`os.preadv`, no memory map: no page of a dropped row is ever read). The
untouched rows come back from the same checkpoint at `restore`. Nothing in transformers is
patched, so concurrent loads in other threads are unaffected.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vocabprune.core.checkpoint import (
    checkpoint_files,
    read_header,
    read_rows,
    read_tensor,
    stored_keys,
)
from vocabprune.core.errors import MismatchError, UnsupportedModelError, VocabPruneError
from vocabprune.core.ids import UnknownPolicy
from vocabprune.core.model import prune_target, wrapper_tokenizer
from vocabprune.core.prune import remapper_for
from vocabprune.core.rowstore import CheckpointRows, RowStore, find_checkpoint_rows, offload
from vocabprune.core.state import PrunedTensor
from vocabprune.core.surgery import (
    IdsMode,
    LogitsMode,
    OutputMode,
    perform,
    plan,
    resolve_output,
    vocab_tensors,
)
from vocabprune.core.vocab import KeptVocab

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
    "use_safetensors",
)
UNSUPPORTED = ("state_dict", "gguf_file", "tp_plan", "quantization_config")


def load_pruned(
    auto_class: Any,
    path: str | os.PathLike[str],
    kept: KeptVocab,
    *,
    ids: IdsMode = "original",
    output: OutputMode = "auto",
    unknown: UnknownPolicy = "error",
    logits: LogitsMode = "auto",
    tokenizer: Any = None,
    **kwargs: Any,
) -> Any:
    """`auto_class.from_pretrained(path, **kwargs)` then `prune(model, kept, ids=..., ...)`,
    without ever holding the dropped rows: only the kept rows of each vocabulary-sized matrix
    are read (a frozen head's dropped rows excepted: that mode holds them, read once).

    Needs a local safetensors checkpoint. `output` as prune's: by default ("auto") a
    vocabulary-sized output head is the frozen head (full softmax; its dropped rows are read
    from the checkpoint and held), output="prune" the restricted head that reads only kept rows;
    `restore(model)` reads the untouched rows back from the same checkpoint. `auto_class` may
    also be a class that wraps one transformers model and takes `model_kwargs`
    (SentenceTransformer): it is built with that model on the meta device, which is then
    replaced by the pruned model loaded from its folder.

    `device_map` may name one device ("cuda", "cuda:1", 0, torch.device, {"": device}): the model
    is pruned on the CPU and then moved, so the dropped rows never reach that device. A map that
    splits the model across devices ("auto", per-module dicts) is refused.
    """
    options = {"ids": ids, "output": output, "unknown": unknown, "logits": logits}
    options["tokenizer"] = tokenizer
    if not _is_transformers_class(auto_class):
        return _load_into_wrapper(auto_class, path, kept, options, kwargs)
    folder = Path(path)
    files = checkpoint_files(folder) if folder.is_dir() else {}
    if not files:
        raise VocabPruneError(
            f"load_pruned needs a local folder with a safetensors checkpoint: {path}"
        )
    for bad in UNSUPPORTED:
        if kwargs.get(bad) is not None:
            raise UnsupportedModelError(f"load_pruned does not support {bad}=...")
    device = single_device(kwargs.pop("device_map", None))
    config, model_kwargs, loader = _split_kwargs(folder, kwargs)
    full = int(getattr(config, "vocab_size", 0) or 0)
    if full != kept.vocab_size:
        raise MismatchError(
            f"kept vocabulary covers {kept.vocab_size} ids but {path} has vocab_size {full}"
        )
    cls, stand_in, output = _plan_keys(
        auto_class, config, model_kwargs, files, (output, ids, logits)
    )
    state_dict = _state_dict(files, stand_in, _target_dtype(loader, config, files, stand_in))
    model = cls.from_pretrained(
        None, config=config, state_dict=state_dict, **model_kwargs, **loader
    )
    del state_dict
    _as_if_from(model, folder)
    surgery = plan(model, kept, output=output, ids=ids, logits=logits)
    rows, frozen = _kept_rows(model, surgery, files, stand_in, folder)
    remapper = remapper_for(model, kept, tokenizer, unknown)
    perform(surgery, rows, remapper=remapper, logits=logits, frozen_rows=frozen)
    return model if device is None else model.to(device)


def single_device(device_map: Any) -> torch.device | None:
    """The one device a `device_map` names, None for none; maps that split a model are refused
    (the kept rows are read on the CPU and moved whole)."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise UnsupportedModelError(
                "load_pruned takes a device_map that names one device (e.g. 'cuda' or "
                f"{{'': 0}}), not a per-module map of {len(device_map)} entries"
            )
        device_map = device_map[""]
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise UnsupportedModelError(
            f"load_pruned does not split a model across devices (device_map={device_map!r}); "
            "name one device, e.g. device_map='cuda'"
        )
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError) as exc:
        raise UnsupportedModelError(f"device_map={device_map!r} names no device: {exc}") from None


def _kept_rows(
    model: nn.Module, surgery: Any, files: dict[str, Path], stand_in: dict[str, Any], folder: Path
) -> Any:
    """The surgery's row sources: a stand-in's kept rows (and a frozen head's dropped rows) read
    from the checkpoint (positioned reads, nothing else of the matrix), anything else sliced from
    the loaded tensor."""
    prefix = getattr(model, "base_model_prefix", None)
    resolved = {k for t in surgery.tensors for k in stored_keys(files, t.names, prefix)}
    if not set(stand_in) <= resolved:  # pragma: no cover - the meta plan and the real one agree
        raise VocabPruneError(f"{folder}: the loaded model does not prune {sorted(stand_in)}")
    ids = surgery.kept.kept_ids

    def rows(tensor: PrunedTensor, index: torch.Tensor) -> tuple[torch.Tensor, RowStore]:
        key = next((k for k in stored_keys(files, tensor.names, prefix) if k in stand_in), None)
        live = tensor.live()
        if key is not None:
            store: RowStore = CheckpointRows(files[key], key, live.dtype)
            return read_rows(files[key], key, ids), store
        store = find_checkpoint_rows(folder, tensor.names, live, prefix) or offload(live)
        return live.detach().index_select(tensor.axis, index), store

    def frozen(tensor: PrunedTensor, dropped: torch.Tensor) -> torch.Tensor:
        key = next((k for k in stored_keys(files, tensor.names, prefix) if k in stand_in), None)
        if key is None:
            return tensor.live().detach().index_select(tensor.axis, dropped)
        return read_rows(files[key], key, dropped.cpu().numpy())

    return rows, frozen


def _is_transformers_class(cls: Any) -> bool:
    """A PreTrainedModel subclass or an Auto class (anything with from_config)."""
    from transformers import PreTrainedModel

    if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
        return True
    return hasattr(cls, "from_config") and hasattr(cls, "from_pretrained")


def _load_into_wrapper(
    wrapper_class: Any,
    path: str | os.PathLike[str],
    kept: KeptVocab,
    options: dict[str, Any],
    kwargs: dict[str, Any],
) -> Any:
    """A wrapper (SentenceTransformer) whose transformers model is loaded pruned: the wrapper is
    built with that model on the meta device (nothing read), then the model is replaced."""
    device = kwargs.pop("device", None)
    model_kwargs = {**(kwargs.pop("model_kwargs", None) or {}), "device_map": "meta"}
    try:
        wrapper = wrapper_class(str(path), model_kwargs=model_kwargs, **kwargs)
    except TypeError as exc:
        raise UnsupportedModelError(
            f"load_pruned: {getattr(wrapper_class, '__name__', wrapper_class)} is neither a "
            "transformers model class nor a wrapper that takes model_kwargs"
        ) from exc
    inner = prune_target(wrapper)
    parent, attr = _parent_of(wrapper, inner)
    folder = str(getattr(inner, "name_or_path", "") or path)
    tokenizer = options.pop("tokenizer") or wrapper_tokenizer(wrapper)
    loaded = load_pruned(
        type(inner), folder, kept, config=inner.config, tokenizer=tokenizer, **options
    )
    setattr(parent, attr, loaded)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return wrapper.to(device)


def _parent_of(root: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for name, module in root.named_modules():
        if module is child and name:
            parent_name, _, attr = name.rpartition(".")
            return root.get_submodule(parent_name), attr
    raise UnsupportedModelError(f"{type(root).__name__}: cannot find where its model lives")


def _split_kwargs(folder: Path, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], dict]:
    """(config with overrides applied, model __init__ kwargs, loader kwargs)."""
    from transformers import AutoConfig

    kwargs = dict(kwargs)
    loader = {k: kwargs.pop(k) for k in LOADER_KWARGS if k in kwargs}
    loader.pop("trust_remote_code", None)  # never remote code
    loader.pop("use_safetensors", None)  # always: only safetensors is read
    config = kwargs.pop("config", None)
    if config is not None:
        return copy.deepcopy(config), kwargs, loader  # the caller's config is left as it was
    config, rest = AutoConfig.from_pretrained(
        str(folder), return_unused_kwargs=True, trust_remote_code=False, **kwargs
    )
    return config, rest, loader


def _plan_keys(
    auto_class: Any,
    config: Any,
    model_kwargs: dict[str, Any],
    files: dict[str, Path],
    modes: tuple[Any, Any, Any],
) -> tuple[Any, dict[str, tuple[int, ...]], OutputMode]:
    """The concrete model class, the checkpoint keys of the vocabulary matrices the surgery
    plan will prune (-> their shape), and the output mode "auto" resolves to (`modes`: output,
    ids, logits), found by planning on the model built on the meta device."""
    from transformers import PreTrainedModel

    with torch.device("meta"):
        if isinstance(auto_class, type) and issubclass(auto_class, PreTrainedModel):
            meta = auto_class(copy.deepcopy(config), **model_kwargs)
        else:
            meta = auto_class.from_config(copy.deepcopy(config), **model_kwargs)
    prefix = getattr(meta, "base_model_prefix", None)
    keys: dict[str, tuple[int, ...]] = {}
    output, ids, logits = modes
    output = resolve_output(meta, output, ids=ids, logits=logits)
    for tensor in vocab_tensors(meta, output=output):
        if tensor.axis != 0 or tensor.live().ndim != 2:
            continue  # small (a bias): loaded as usual
        for key in stored_keys(files, tensor.names, prefix):
            shape = read_header(files[key], complete=False).tensors[key].shape
            if tuple(shape) == tuple(tensor.live().shape):
                keys[key] = tuple(shape)
    return type(meta), keys, output


def _target_dtype(
    loader: dict[str, Any], config: Any, files: dict[str, Path], stand_in: dict[str, Any]
) -> torch.dtype | None:
    """The dtype from_pretrained will give the model (its `dtype="auto"` rule), so the stand-ins
    need no cast (a cast would materialize them)."""
    dtype = loader.get("dtype", loader.get("torch_dtype")) or "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if dtype is None and stand_in:
            key = next(iter(stand_in))
            return read_header(files[key], complete=False).tensors[key].dtype
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    return None  # a per-module dict: transformers decides (and may cast)


def _state_dict(
    files: dict[str, Path], stand_in: dict[str, tuple[int, ...]], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, the vocabulary matrices as zero-stride stand-ins."""
    out: dict[str, torch.Tensor] = {}
    for key, file in files.items():
        if key in stand_in:
            shape = stand_in[key]
            kind = dtype or read_header(file, complete=False).tensors[key].dtype
            out[key] = torch.zeros((1, *shape[1:]), dtype=kind).expand(shape)
        else:
            out[key] = read_tensor(file, key)
    return out


def _as_if_from(model: nn.Module, folder: Path) -> None:
    """What from_pretrained(folder) records that from_pretrained(None, state_dict=...) cannot:
    the model's folder, and its generation config."""
    name = str(folder)
    model.config._name_or_path = name
    model.name_or_path = name
    gen_file = folder / "generation_config.json"
    can_generate = getattr(model, "can_generate", lambda: False)()
    if can_generate and gen_file.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(name)
