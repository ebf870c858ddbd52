"""The configs of a model and what in them names the vocabulary, found from their structure.

A composite model (vision-language, speech, encoder-decoder built from two models) keeps its
vocabulary size and token ids in sub-configs (`text_config`, `decoder`, ...) and under other
names (`decoder_vocab_size`, `image_token_index`, `vision_start_token_id`, ...). Rather than list
families, we walk every config reachable from the model's config and read attributes by name:

- a vocabulary size: `vocab_size` or any `*_vocab_size`;
- a token id: the classic ids (pad, bos, eos, decoder_start, ...) and any `*_token_id`,
  `*_token_ids` or `*_token_index` (image, video, audio, boi/eoi, vision start/end, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

TOKEN_ID_NAME = re.compile(r"(^|_)token_(id|ids|index)$")
VOCAB_SIZE_NAME = re.compile(r"^(?!type_)(\w+_)?vocab_size$")  # not BERT's type_vocab_size


def _is_config(value: Any) -> bool:
    """A transformers config (PretrainedConfig or GenerationConfig), by duck typing."""
    return hasattr(value, "to_dict") and hasattr(value, "to_json_string")


def config_tree(model: Any, rows: int | None = None) -> Iterator[Any]:
    """The model's config, every sub-config reachable from it (each once), and its generation
    config (the model's own two may be any object with attributes; sub-configs are configs).
    With `rows` (the input embedding's), a sub-config whose own vocab_size differs describes
    another vocabulary (bert2gpt2's decoder) and is left out, with what is below it."""
    root = getattr(model, "config", None)
    seen: set[int] = set()
    stack = [root]
    while stack:
        cfg = stack.pop()
        if id(cfg) in seen or not (_is_config(cfg) or (cfg is root and hasattr(cfg, "__dict__"))):
            continue
        seen.add(id(cfg))
        size = getattr(cfg, "vocab_size", None)
        if cfg is not root and rows is not None and is_int(size) and size != rows:
            continue
        yield cfg
        for value in list(vars(cfg).values())[::-1]:
            if _is_config(value):
                stack.append(value)
            elif isinstance(value, (list, tuple)):
                stack.extend(v for v in value[::-1] if _is_config(v))
    gen = getattr(model, "generation_config", None)
    if hasattr(gen, "__dict__") and id(gen) not in seen:
        yield gen


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def vocab_size_attrs(obj: Any) -> list[str]:
    """The attributes of a config or module that hold a vocabulary size."""
    return [k for k, v in vars(obj).items() if VOCAB_SIZE_NAME.search(k) and is_int(v)]


def token_id_attrs(cfg: Any) -> list[str]:
    """The attributes of a config that hold token ids (an int or a list of ints)."""
    found = []
    for key, value in vars(cfg).items():
        if not TOKEN_ID_NAME.search(key) or value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if values and all(is_int(v) for v in values):
            found.append(key)
    return found


def config_token_ids(model: Any, rows: int | None = None) -> list[int]:
    """Every token id the model's configs name (non-negative, each once); `rows` as in
    config_tree."""
    ids: set[int] = set()
    for cfg in config_tree(model, rows):
        for attr in token_id_attrs(cfg):
            value = getattr(cfg, attr)
            ids.update(v for v in (value if isinstance(value, (list, tuple)) else [value]))
    return sorted(i for i in ids if i >= 0)
