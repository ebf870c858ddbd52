"""Tokens a standalone export's kept vocabulary lacks: how its rewritten tokenizer maps them, and
how much of a probe text the kept vocabulary covers.

A standalone export has no id map and no original checkpoint beside it: text the pruning data
never had is tokenized by the rewritten `tokenizer.json` alone. What happens then depends on the
tokenizer model, never on vocabprune:

- byte-level BPE keeps its 256 byte symbols: anything splits into smaller kept pieces, down to
  single bytes; nothing becomes UNK;
- BPE or Unigram with byte fallback: smaller kept pieces, then `<0xNN>` byte pieces;
- WordPiece: smaller kept pieces where they spell the word, else the whole word is the UNK token;
- Unigram: smaller kept pieces; a character no kept piece holds is the UNK piece;
- WordLevel: the UNK token; BPE without UNK or bytes: the character is dropped.

So `unknown="error"` (refuse) and `"grow"` (read rows back) cannot hold for a standalone export.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from vocabprune.deploy.tokenizer_rewrite import is_byte_level

MAPPINGS = ("byte_pieces", "unk", "dropped")


def uncovered_mapping(data: dict[str, Any]) -> dict[str, Any]:
    """How the rewritten tokenizer (its `tokenizer.json` as a dict) maps uncovered text."""
    model = data.get("model", {})
    kind = model.get("type")
    unk = model.get("unk_token")
    if kind == "Unigram" and model.get("unk_id") is not None:
        unk = model["vocab"][int(model["unk_id"])][0]
    if kind == "BPE" and is_byte_level(data):
        mapping, how = "byte_pieces", "smaller kept pieces, down to the 256 byte-level symbols"
    elif model.get("byte_fallback"):
        mapping, how = "byte_pieces", "smaller kept pieces, then <0xNN> byte-fallback pieces"
    elif unk is not None:
        pieces = "" if kind == "WordLevel" else "smaller kept pieces where they spell it, else "
        mapping, how = "unk", f"{pieces}the UNK token {unk!r}"
    else:
        mapping, how = "dropped", "smaller kept pieces; characters no kept piece holds are dropped"
    return {"tokenizer_model": kind, "mapping": mapping, "unk_token": unk, "description": how}


def probe_coverage(
    tokenizer: Any,
    kept_ids: np.ndarray,
    texts: Iterable[str],
    *,
    standalone: Any = None,
) -> dict[str, Any]:
    """The share of a probe text's tokens (as the ORIGINAL tokenizer splits it, special tokens
    included) whose ids are kept; with the `standalone` tokenizer, also how many tokens it makes
    of the same text and how many of them are its UNK token."""
    texts = list(texts)
    keep = np.zeros(len(tokenizer), dtype=bool)
    keep[np.asarray(kept_ids, dtype=np.int64)] = True
    total = covered = 0
    for ids in tokenizer(texts)["input_ids"] if texts else []:
        arr = np.asarray(ids, dtype=np.int64)
        total += int(arr.size)
        covered += int(keep[arr].sum())
    report: dict[str, Any] = {
        "probe_examples": len(texts),
        "probe_tokens": total,
        "probe_covered_tokens": covered,
        "probe_covered_fraction": covered / total if total else 1.0,
    }
    if standalone is not None:
        unk = getattr(standalone, "unk_token_id", None)
        new_ids = standalone(texts)["input_ids"] if texts else []
        report["probe_standalone_tokens"] = sum(len(ids) for ids in new_ids)
        report["probe_standalone_unk_tokens"] = (
            sum(int(np.count_nonzero(np.asarray(ids) == unk)) for ids in new_ids)
            if unk is not None
            else 0
        )
    return report
