"""The sentence-transformers files of a model folder: `modules.json`, the folders of the modules
after the transformer (pooling, dense, normalize) and the model-level configs (prompts, maximum
length, similarity). SentenceTransformer reads them beside the transformer; without them it
falls back to mean pooling with nothing after it (no normalization, no dense layer, no prompts).

They say nothing about the vocabulary, so a standalone export carries them as they are: copied
from the source folder (the CLI), or as a SentenceTransformer object saves them (Python: its
modules as they are in memory). `SentenceTransformer(export)` then embeds as the source does. The
GGUF writer reads the pooling from them (llama.cpp records it in the file)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.files import read_json

MODULES = "modules.json"
ROOT_CONFIGS = ("sentence_bert_config.json", "config_sentence_transformers.json")
POOLING_MODES = (
    ("pooling_mode_mean_tokens", "MEAN"),
    ("pooling_mode_cls_token", "CLS"),
    ("pooling_mode_lasttoken", "LAST"),
)


def read_modules(folder: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The modules of a sentence-transformers folder (None for a plain transformers folder),
    each with a relative `path` inside the folder."""
    path = Path(folder) / MODULES
    if not path.is_file():
        return None
    modules = read_json(path, MODULES)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise VocabPruneError(f"{path} is not a sentence-transformers modules list")
    for module in modules:
        where = PurePosixPath(str(module.get("path", "")))
        if where.is_absolute() or ".." in where.parts:
            raise VocabPruneError(f"{path}: module path {str(where)!r} leaves the model folder")
    return modules


def sentence_transformers_prompts(folder: str | os.PathLike[str]) -> list[str]:
    """The prompts ("query: ", ...) a sentence-transformers folder prepends to texts: their
    tokens are read at inference as much as the texts', so a kept vocabulary keeps them."""
    path = Path(folder) / ROOT_CONFIGS[1]
    if read_modules(folder) is None or not path.is_file():
        return []
    prompts = read_json(path, ROOT_CONFIGS[1]).get("prompts") or {}
    return [p for p in prompts.values() if isinstance(p, str) and p]


def _is_transformer(module: dict[str, Any]) -> bool:
    return str(module.get("type", "")).endswith("Transformer")


def sentence_transformers_pooling(folder: str | os.PathLike[str]) -> str | None:
    """The sentence-transformers pooling of a model folder (MEAN / CLS / LAST), if it has one."""
    for module in read_modules(folder) or []:
        if str(module.get("type", "")).endswith("Pooling"):
            config = read_json(Path(folder) / module["path"] / "config.json", "pooling config")
            for key, name in POOLING_MODES:
                if config.get(key):
                    return name
    return None


def copy_sentence_transformers_files(
    source: str | os.PathLike[str], out: str | os.PathLike[str]
) -> list[str]:
    """Copy the sentence-transformers files of `source` into the export `out` (whose root holds
    the transformer); returns the module types written, [] when `source` has none. A source
    whose transformer sits in a subfolder (the older layout) gets it at the root here, its
    sentence_bert_config.json with it."""
    source, out = Path(source), Path(out)
    modules = read_modules(source)
    if modules is None:
        return []
    written = []
    for module in modules:
        where = str(module.get("path", ""))
        if _is_transformer(module):
            config = source / where / ROOT_CONFIGS[0]
            if where and config.is_file():
                shutil.copy2(config, out / ROOT_CONFIGS[0])
            module = {**module, "path": ""}
        elif where and (source / where).is_dir():
            shutil.copytree(source / where, out / where)
        written.append(module)
    for name in ROOT_CONFIGS:
        if (source / name).is_file() and not (out / name).exists():
            shutil.copy2(source / name, out / name)
    (out / MODULES).write_text(json.dumps(written, indent=2), encoding="utf-8")
    return [str(m.get("type", "")).rsplit(".", 1)[-1] for m in written]


def is_sentence_transformer(model: Any) -> bool:
    """A sentence-transformers model object (SentenceTransformer, SparseEncoder, ...): it lists
    its modules in modules.json when it saves itself."""
    return type(model).__module__.startswith("sentence_transformers.") and callable(
        getattr(model, "save", None)
    )


def write_sentence_transformers_files(model: Any, out: str | os.PathLike[str]) -> list[str]:
    """The sentence-transformers files of a model object, as it is now (a dense layer as
    trained): it saves itself in its own layout into a scratch folder inside `out` (the
    export's private temporary folder), whose files are copied and which is then removed."""
    own = Path(out) / ".sentence-transformers"
    try:
        model.save(str(own), create_model_card=False)
        return copy_sentence_transformers_files(own, out)
    finally:
        shutil.rmtree(own, ignore_errors=True)
