"""Standalone tokenizer surgery: rewrite a `tokenizer.json` to the kept vocabulary, renumbered.

The kept ids, in their original order, become 0..K-1 (`new = rank of old in kept_ids`, the same
numbering the pruned embedding uses), so a stock tokenizer produces ids the compact model reads
directly. Supported models: WordPiece, WordLevel, BPE (byte-level included) and Unigram.

What keeps the rewritten tokenizer splitting the pruning corpus exactly as the original:

- WordPiece: greedy longest match only ever picks pieces the original picked: nothing extra.
- BPE: a merge survives only if both parts and its result are kept, so every token some merge
  needs to build a kept token is kept too (`required_ids`); the merges the original applied to a
  kept word are all still there, in the same order, so it takes the same steps. Byte-level BPE
  also keeps its 256 byte symbols, so any text still tokenizes (rare words split finer).
- Unigram: pieces keep their scores; the piece with the lowest score is kept too, because the
  score of an unknown character is derived from the lowest score in the vocabulary.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError
from vocabprune.core.files import atomic_file

SUPPORTED = ("WordPiece", "WordLevel", "BPE", "Unigram")
# Files of slow tokenizers that would describe the old vocabulary: never left in an export.
STALE_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "added_tokens.json",
)


def tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's `tokenizers` pipeline as a JSON dict (fast tokenizers only)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        name = type(tokenizer).__name__
        raise UnsupportedModelError(
            f"{name} has no tokenizer.json (not a fast tokenizer): cannot rewrite it standalone"
        )
    data: dict[str, Any] = json.loads(backend.to_str())
    kind = data.get("model", {}).get("type")
    if kind not in SUPPORTED:
        raise UnsupportedModelError(
            f"cannot rewrite a {kind} tokenizer standalone (supported: {', '.join(SUPPORTED)})"
        )
    return data


def _model_vocab(model: dict[str, Any]) -> dict[str, int]:
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            a, sep, b = merge.partition(" ")
            if not sep:
                raise VocabPruneError(f"malformed BPE merge {merge!r} in tokenizer.json")
        else:
            a, b = merge
        pairs.append((a, b))
    return pairs


def _merged(model: dict[str, Any], a: str, b: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)


def _has_type(node: Any, kind: str) -> bool:
    if isinstance(node, dict):
        if node.get("type") == kind:
            return True
        return any(_has_type(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, kind) for v in node)
    return False


def is_byte_level(data: dict[str, Any]) -> bool:
    """True for byte-level BPE (GPT-2 style): its pre-tokenizer maps bytes to 256 symbols."""
    return _has_type(data.get("pre_tokenizer"), "ByteLevel")


def byte_level_alphabet() -> list[str]:
    """The 256 symbols byte-level BPE maps bytes to (GPT-2's bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _byte_fallback_pieces(vocab: dict[str, int]) -> list[int]:
    return [vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab]


def always_kept_ids(data: dict[str, Any]) -> set[int]:
    """Ids the rewritten tokenizer keeps whatever the data: byte symbols, byte-fallback pieces,
    the lowest-scored Unigram piece (it fixes the unknown-character score)."""
    model = data["model"]
    vocab = _model_vocab(model)
    ids: set[int] = set()
    if model["type"] == "BPE" and is_byte_level(data):
        ids.update(vocab[c] for c in byte_level_alphabet() if c in vocab)
    if model.get("byte_fallback"):
        ids.update(_byte_fallback_pieces(vocab))
    if model["type"] == "Unigram" and model["vocab"]:
        scores = [score for _piece, score in model["vocab"]]
        ids.add(min(range(len(scores)), key=scores.__getitem__))
    if model.get("unk_token") and model["unk_token"] in vocab:
        ids.add(vocab[model["unk_token"]])
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        ids.add(int(model["unk_id"]))
    return ids


class MergeClosure:
    """For BPE: ids plus every token a merge needs on the way to building one of them.

    All merges that produce a needed token are followed (a token can be built more than one
    way), so whatever path the original takes, its intermediate tokens are kept. Built once per
    tokenizer; `closure(ids, within=kept)` only walks tokens not already in `within`.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        model = data["model"]
        self.is_bpe = model["type"] == "BPE"
        self.parts: dict[int, list[int]] = {}
        if not self.is_bpe:
            return
        vocab = model["vocab"]
        for a, b in _merge_pairs(model):
            merged = vocab.get(_merged(model, a, b))
            if merged is not None and a in vocab and b in vocab:
                self.parts.setdefault(merged, []).extend((vocab[a], vocab[b]))

    def __call__(self, ids: Iterable[int], within: set[int] | None = None) -> set[int]:
        start = {int(i) for i in ids}
        done = set(within or ())
        result = start | done
        stack = [i for i in start if i not in done]
        while stack:
            token = stack.pop()
            for part in self.parts.get(token, ()):
                if part not in result:
                    result.add(part)
                    stack.append(part)
        return result


def merge_closure(data: dict[str, Any], ids: Iterable[int]) -> set[int]:
    """For BPE: the given ids plus every token a merge needs on the way to building one of them."""
    return MergeClosure(data)(ids)


def required_ids(data: dict[str, Any], ids: Iterable[int]) -> set[int]:
    """The ids a standalone tokenizer over `ids` must also keep (merge parts, byte symbols...)."""
    wanted = {int(i) for i in ids}
    return merge_closure(data, wanted | always_kept_ids(data)) - wanted


def _remap_post_processor(node: Any, old_to_new: dict[int, int]) -> Any:
    if isinstance(node, list):
        return [_remap_post_processor(v, old_to_new) for v in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    out = {k: _remap_post_processor(v, old_to_new) for k, v in node.items()}
    if kind == "TemplateProcessing":
        for name, spec in out.get("special_tokens", {}).items():
            spec["ids"] = [
                _new(old_to_new, i, f"post-processor token {name!r}") for i in spec["ids"]
            ]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if key in out:
                token, old = out[key]
                out[key] = [token, _new(old_to_new, old, f"post-processor token {token!r}")]
    return out


def _new(old_to_new: dict[int, int], old: int, what: str) -> int:
    if old not in old_to_new:
        raise VocabPruneError(f"{what} (id {old}) is not in the kept vocabulary")
    return old_to_new[old]


def rewrite_tokenizer_json(data: dict[str, Any], kept_ids: Sequence[int]) -> dict[str, Any]:
    """A copy of `data` whose vocabulary is the kept ids renumbered 0..K-1 (in their order)."""
    # Copy everything but the (large) vocabulary and merges, which are rebuilt below.
    model = {k: v for k, v in data["model"].items() if k not in ("vocab", "merges")}
    rest = copy.deepcopy({k: v for k, v in data.items() if k != "model"})
    vocab = _model_vocab(data["model"])
    model["vocab"] = data["model"]["vocab"]
    if "merges" in data["model"]:
        model["merges"] = data["model"]["merges"]
    data = {**rest, "model": model}
    kept = [int(i) for i in kept_ids]
    old_to_new = {old: new for new, old in enumerate(kept)}
    kind = model["type"]
    if kind not in SUPPORTED:
        raise UnsupportedModelError(f"cannot rewrite a {kind} tokenizer standalone")
    in_model = set(vocab.values())
    known = in_model | {int(a["id"]) for a in data.get("added_tokens", [])}
    missing = [i for i in kept if i not in known]
    if missing:
        raise VocabPruneError(
            f"kept id {missing[0]} has no token in the tokenizer ({len(missing)} such ids): "
            "a standalone tokenizer needs a token for every kept row"
        )
    model_kept = [i for i in kept if i in in_model]
    if [old_to_new[i] for i in model_kept] != list(range(len(model_kept))):
        raise VocabPruneError(
            "kept added tokens come before kept vocabulary tokens: cannot renumber them in order"
        )
    if kind == "Unigram":
        pieces = model["vocab"]
        model["vocab"] = [pieces[i] for i in model_kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = _new(old_to_new, int(model["unk_id"]), "the Unigram unk piece")
    else:
        new_vocab = {t: old_to_new[i] for t, i in vocab.items() if i in old_to_new}
        model["vocab"] = dict(sorted(new_vocab.items(), key=lambda kv: kv[1]))
        unk = model.get("unk_token")
        if kind in ("WordPiece", "WordLevel") and unk is not None and unk not in new_vocab:
            raise VocabPruneError(f"the unknown token {unk!r} is not in the kept vocabulary")
        if kind == "BPE":
            kept_merges = []
            for merge, (a, b) in zip(model.get("merges") or [], _merge_pairs(model), strict=True):
                if a in new_vocab and b in new_vocab and _merged(model, a, b) in new_vocab:
                    kept_merges.append(merge)
            model["merges"] = kept_merges
    added = []
    for token in data.get("added_tokens", []):
        if int(token["id"]) in old_to_new:
            added.append({**token, "id": old_to_new[int(token["id"])]})
    data["added_tokens"] = added
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_post_processor(data["post_processor"], old_to_new)
    padding = data.get("padding")
    if isinstance(padding, dict) and padding.get("pad_id") is not None:
        padding["pad_id"] = _new(old_to_new, int(padding["pad_id"]), "the padding token")
    return data


def rewrite_tokenizer_folder(
    folder: str | os.PathLike[str],
    data: dict[str, Any],
    kept_ids: Sequence[int],
    *,
    model_input_names: Sequence[str] | None = None,
) -> None:
    """Rewrite a saved tokenizer folder (tokenizer.json + tokenizer_config.json) in place.

    `tokenizer_config.json` is pointed at the generic fast tokenizer class, which loads
    tokenizer.json exactly as written (some model-specific classes rebuild their pipeline from
    the vocabulary), and keeps the original model input names. Stale slow-tokenizer files go.
    """
    root = Path(folder)
    kept = [int(i) for i in kept_ids]
    old_to_new = {old: new for new, old in enumerate(kept)}
    new_data = rewrite_tokenizer_json(data, kept)
    with atomic_file(root / "tokenizer.json") as tmp:
        tmp.write_text(json.dumps(new_data, ensure_ascii=False), encoding="utf-8")
    config_path = root / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        config["added_tokens_decoder"] = {
            str(old_to_new[int(k)]): v for k, v in decoder.items() if int(k) in old_to_new
        }
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if model_input_names:
        config["model_input_names"] = list(model_input_names)
    with atomic_file(config_path) as tmp:
        tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    for name in STALE_FILES:
        (root / name).unlink(missing_ok=True)
