"""Loading models and tokenizers with one clear error line, safetensors only, no remote code."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from vocabprune.core.checkpoint import CheckpointError, checkpoint_files, read_header
from vocabprune.core.errors import VocabPruneError
from vocabprune.core.files import check_model_folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_weights_cover(model: Any, path: str) -> None:
    """Refuse a model another library loaded from `path` when the folder's checkpoint lacks
    weights of its backbone (they started from random values, whatever was logged)."""
    try:
        keys = set(checkpoint_files(Path(path)))
    except CheckpointError:
        return
    if not keys:
        return
    base = getattr(model, "base_model", model)
    prefix = getattr(model, "base_model_prefix", "")
    missing = [
        name
        for name, _ in base.named_parameters()
        if not {name, f"{prefix}.{name}"} & keys and not any(k.endswith(f".{name}") for k in keys)
    ]
    if missing:
        check_loaded(base, {"missing_keys": missing}, path)


def load_tokenizer(path: str) -> Any:
    """AutoTokenizer for a local folder; never runs remote code."""
    from transformers import AutoTokenizer

    check_model_folder(path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # any failure of another library's loader: one line naming the folder
        raise VocabPruneError(
            f"could not load a tokenizer from {path}: {_first_line(exc)}"
        ) from exc


def load_config(path: str) -> Any:
    """AutoConfig for a local folder; never runs remote code."""
    from transformers import AutoConfig

    check_model_folder(path, tokenizer=False)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # any failure of another library's loader: one line naming the folder
        raise VocabPruneError(f"could not read the config of {path}: {_first_line(exc)}") from exc


def load_model(auto_class: Any, path: str, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained` from safetensors only (no pickle), never remote code. Every
    checkpoint file is checked first (complete, readable), so a truncated one is named."""
    check_model_folder(path, tokenizer=False)
    files = checkpoint_files(Path(path))
    if not files and Path(path).is_dir():
        raise VocabPruneError(f"{path} holds no safetensors checkpoint (model.safetensors)")
    for file in sorted(set(files.values())):
        read_header(file)
    want_info = bool(kwargs.pop("output_loading_info", False))
    try:
        model, info = auto_class.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, output_loading_info=True, **kwargs
        )
    except MemoryError:
        raise
    except Exception as exc:  # any failure of another library's loader: one line naming the folder
        raise VocabPruneError(f"could not load the model from {path}: {_first_line(exc)}") from exc
    check_loaded(model, info, path)
    return (model, info) if want_info else model


def check_loaded(model: Any, info: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint that lacks weights of the model's backbone (they would start from
    random values, whatever the logging verbosity hides); a missing task head is the caller's
    business (a classifier is new by design)."""
    base = getattr(model, "base_model", model)
    prefix = getattr(model, "base_model_prefix", "")
    names = {n for n, _ in base.named_parameters()}
    if base is not model and prefix:
        names |= {f"{prefix}.{n}" for n in names}
    missing = sorted(k for k in info.get("missing_keys") or [] if k in names)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise VocabPruneError(
            f"the checkpoint in {path} lacks the model's weight {missing[0]!r}{more}; "
            "they would start from random values"
        )


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
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    if "add_pooling_layer" not in params:
        return {}
    try:
        keys = checkpoint_files(Path(folder))
    except CheckpointError:
        return {}
    if keys and not any(".pooler." in f".{k}" for k in keys):
        return {"add_pooling_layer": False}
    return {}


def folder_tokenizer(model: Any, kept: Any) -> Any:
    """A function that loads the tokenizer stored beside a model (its from_pretrained folder),
    or None when it does not match the kept vocabulary; used only to name tokens in errors."""

    def load() -> Any:
        folder = Path(str(getattr(model, "name_or_path", "") or ""))
        if (
            not (folder / "tokenizer_config.json").is_file()
            and not (folder / "tokenizer.json").is_file()
        ):
            return None
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            kept.check_tokenizer(tokenizer)
        except Exception:  # naming a token is a courtesy: any failure means "no name"
            return None
        return tokenizer

    return load
