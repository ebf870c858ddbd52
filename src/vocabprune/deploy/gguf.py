"""GGUF export for llama.cpp: a standalone model folder (or any full model folder) as one file.

llama.cpp's own converter cannot take a pruned model: it names the pre-tokenizer by hashing the
ids of a fixed test string, which a renumbered vocabulary never reproduces. Here the name is
read from the structure of `tokenizer.json` itself (the pre-tokenizer's steps and regexes,
`KNOWN_PRE`), so a kept vocabulary of any size keeps its name.

What the file holds, from the folder as written (nothing is re-derived from the original model):

- the token list in id order, with types (normal, control = special added tokens,
  user-defined = other added tokens), BPE merges as the rewritten tokenizer keeps them, the
  special ids (bos/eos/unk/sep/pad/cls/mask, already renumbered by the standalone export), the
  add-bos/eos flags and the chat template (read with the gguf package's `SpecialVocab`);
- for byte-level BPE, the byte symbols: llama.cpp maps every byte of text it cannot merge to
  one and aborts when it is missing (the standalone export keeps every byte symbol the original
  has; a folder lacking one that UTF-8 text can contain is refused here, naming the byte);
- WordPiece vocabularies in llama.cpp's "phantom space" form (BERT-type embedding models);
- Unigram vocabularies (XLM-R, multilingual-e5) as llama.cpp's UGM ("t5") tokenizer, as its
  own converter writes XLM-R: the pieces with their scores, the unknown piece's type,
  SentencePiece's compiled normalizer (`precompiled_charsmap`, from the tokenizer.json's
  Precompiled step), add_space_prefix from the Metaspace pre-tokenizer and
  remove_extra_whitespaces from its collapse-spaces step (or a WhitespaceSplit before
  Metaspace, as older converters write it: a tokenizer.json without either Strip(right) or
  WhitespaceSplit ends trailing spaces with a lone U+2581 piece, which llama.cpp, like
  SentencePiece, drops); other normalizers, byte fallback and
  pieces with an inner U+2581 (transformers splits words first, llama.cpp does not) are refused;
- byte-fallback BPE vocabularies (Llama 2, Gemma style tokenizer.json) as llama.cpp's
  SentencePiece type: all 256 <0xNN> byte pieces required, scores from the merge order;
- the weights in the layout llama.cpp reads (Llama's q/k rows permuted back to its rotary
  layout, Gemma 3's norm weights +1, XLM-R's position table without its first pad_token_id + 1
  rows, which llama.cpp's positions from 0 never read), as f32, f16 or q8_0 (`gguf.quants`);
  norms, biases and BERT's position and token-type tables stay f32, and under q8_0 a matrix
  whose rows are not a multiple of its 32-value block goes f16;
- `vocabprune.kept_ids`: for a pruned export, the original id of every token (new -> old).

Supported: LlamaForCausalLM (SmolLM2), Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM,
BertModel and XLMRobertaModel (mean/CLS pooled embedding models, pooling read from the
sentence-transformers files; llama.cpp runs both as its BERT architecture). Byte-level BPE,
byte-fallback BPE, uncased WordPiece and Unigram (SentencePiece-normalized) tokenizers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError
from vocabprune.core.files import atomic_file, read_json
from vocabprune.core.vocab import DEFAULT_FILENAME
from vocabprune.deploy.manifest import MANIFEST
from vocabprune.deploy.sentence_files import sentence_transformers_pooling
from vocabprune.deploy.tokenizer_rewrite import (  # the one reader of tokenizer.json models
    _merge_pairs,
    _merged,
    _model_vocab,
    is_byte_level,
)

OUTTYPES = ("f32", "f16", "q8_0")
POOLINGS = ("NONE", "MEAN", "CLS", "LAST")  # llama.cpp's pooling types an embedding model takes
KEPT_IDS_KEY = "vocabprune.kept_ids"
ORIGINAL_VOCAB_KEY = "vocabprune.original_vocab_size"

# llama.cpp's pre-tokenizer names (src/llama-vocab.cpp) and the tokenizer.json pre-tokenizer
# each one reproduces, as the steps `_pre_steps` reads: ("ByteLevel", add_prefix_space,
# use_regex), ("Digits", individual), ("Split", regex, behavior, invert).
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_PRE: dict[str, tuple[tuple[Any, ...], ...]] = {
    "gpt-2": (("ByteLevel", False, True),),
    "smollm": (("Digits", True), ("ByteLevel", False, True)),
    "qwen2": (("Split", _QWEN2_REGEX, "Isolated", False), ("ByteLevel", False, False)),
    "llama-bpe": (("Split", _LLAMA3_REGEX, "Isolated", False), ("ByteLevel", False, False)),
}


# -- the vocabulary -----------------------------------------------------------------------------


@dataclass
class GGUFVocab:
    """What llama.cpp's vocabulary loader reads: tokenizer model, pre-tokenizer, tokens."""

    model: str  # "gpt2" (byte-level BPE), "llama" (byte-fallback BPE), "bert" (WordPiece),
    # "t5" (Unigram: llama.cpp's UGM tokenizer)
    pre: str
    tokens: list[str]
    types: list[int]
    missing_bytes: tuple[int, ...] = ()  # byte-level: bytes with no symbol (never in its text)
    scores: list[float] | None = None  # "llama": merge priority; "t5": the piece's log-prob
    add_space_prefix: bool | None = None
    charsmap: bytes | None = None  # "t5": SentencePiece's compiled normalizer
    remove_extra_whitespaces: bool | None = None  # "t5": merge runs of spaces, drop trailing


def _pre_steps(node: Any) -> tuple[tuple[Any, ...], ...]:
    """The pre-tokenizer as a tuple of steps (Sequence flattened), for matching `KNOWN_PRE`."""
    if node is None:
        return ()
    kind = node.get("type")
    if kind == "Sequence":
        return tuple(s for sub in node.get("pretokenizers", []) for s in _pre_steps(sub))
    if kind == "ByteLevel":
        return ((kind, bool(node.get("add_prefix_space")), bool(node.get("use_regex", True))),)
    if kind == "Digits":
        return ((kind, bool(node.get("individual_digits"))),)
    if kind == "Split":
        pattern = node.get("pattern", {})
        regex = pattern.get("Regex", pattern.get("String"))
        return ((kind, regex, node.get("behavior"), bool(node.get("invert"))),)
    return ((kind,),)


def pre_tokenizer_name(data: dict[str, Any]) -> str:
    """llama.cpp's name for this byte-level BPE pre-tokenizer (see `KNOWN_PRE`), or an error."""
    steps = _pre_steps(data.get("pre_tokenizer"))
    for name, known in KNOWN_PRE.items():
        if steps == known:
            return name
    kinds = "+".join(str(step[0]) for step in steps) or "none"
    raise UnsupportedModelError(
        f"llama.cpp has no known name for this tokenizer's pre-tokenizer ({kinds}); "
        f"pass pre= one of {', '.join(KNOWN_PRE)} if it splits text the same way"
    )


def _tokens_by_id(data: dict[str, Any]) -> tuple[list[str], dict[int, dict[str, Any]]]:
    by_id: dict[int, str] = {int(i): t for t, i in _model_vocab(data["model"]).items()}
    added = {int(a["id"]): a for a in data.get("added_tokens", [])}
    for i, token in added.items():
        by_id[i] = token["content"]
    size = max(by_id) + 1 if by_id else 0
    holes = [i for i in range(size) if i not in by_id]
    if holes:
        raise VocabPruneError(
            f"tokenizer.json has no token for id {holes[0]} ({len(holes)} such ids): "
            "llama.cpp needs one token per row"
        )
    return [by_id[i] for i in range(size)], added


# Bytes valid UTF-8 text is made of, apart from rare control characters and the lead bytes of
# the supplementary planes past U+40000 (SmolLM2's own vocabulary lacks some of those): llama.cpp
# maps each byte of text it cannot merge to its symbol and aborts when the symbol is missing.
TEXT_BYTES = (0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0xC0), *range(0xC2, 0xF1))


def _check_byte_symbols(tokens: list[str]) -> list[int]:
    """Refuse a byte-level vocabulary missing a text byte; return the bytes it lacks at all."""
    from gguf.vocab import bytes_to_unicode

    present = set(tokens)
    symbols = bytes_to_unicode()
    for byte in TEXT_BYTES:
        if symbols[byte] not in present:
            raise VocabPruneError(
                f"the byte-level vocabulary lacks the symbol {symbols[byte]!r} of byte "
                f"0x{byte:02X}: llama.cpp needs it for any text with that byte (export the "
                "standalone model, which keeps every byte symbol the original has)"
            )
    return [b for b in range(256) if symbols[b] not in present]


def _types(tokens: list[str], added: dict[int, dict[str, Any]]) -> list[int]:
    import gguf

    types = []
    for i in range(len(tokens)):
        token = added.get(i)
        if token is None:
            types.append(int(gguf.TokenType.NORMAL))
        elif token.get("special"):
            types.append(int(gguf.TokenType.CONTROL))
        else:
            types.append(int(gguf.TokenType.USER_DEFINED))
    return types


def gguf_vocab(data: dict[str, Any], *, pre: str | None = None) -> GGUFVocab:
    """llama.cpp's vocabulary of a `tokenizer.json` (byte-level, byte-fallback BPE, WordPiece,
    Unigram)."""
    model = data.get("model", {})
    kind = model.get("type")
    if kind not in ("BPE", "WordPiece", "Unigram") or (
        kind == "BPE" and not model.get("byte_fallback") and not is_byte_level(data)
    ):
        what = kind if kind != "BPE" else "BPE without byte-level or byte-fallback pieces"
        raise UnsupportedModelError(
            f"GGUF export supports byte-level BPE, byte-fallback BPE, WordPiece and Unigram "
            f"tokenizers, not {what}"
        )
    tokens, added = _tokens_by_id(data)
    types = _types(tokens, added)
    if kind == "Unigram":
        return _ugm_vocab(data, tokens, types, pre)
    if kind == "BPE" and is_byte_level(data) and not model.get("byte_fallback"):
        missing = tuple(_check_byte_symbols(tokens))
        return GGUFVocab("gpt2", pre or pre_tokenizer_name(data), tokens, types, missing)
    if kind == "WordPiece":
        normalizer = data.get("normalizer") or {}
        if normalizer.get("type") != "BertNormalizer" or not normalizer.get("lowercase", True):
            raise UnsupportedModelError(
                "llama.cpp's WordPiece tokenizer lowercases and strips accents like an uncased "
                "BERT; this tokenizer does not (cased or no BertNormalizer)"
            )
        prefix = model.get("continuing_subword_prefix") or "##"
        control = {i for i, a in added.items() if a.get("special")}
        phantom = [
            t if i in control else (t[len(prefix) :] if t.startswith(prefix) else "\u2581" + t)
            for i, t in enumerate(tokens)
        ]
        return GGUFVocab("bert", pre or "default", phantom, types)
    return _spm_vocab(data, tokens, types, pre)  # byte-fallback BPE


def _space_prefix(data: dict[str, Any]) -> bool:
    """Whether the tokenizer writes spaces as U+2581 and prepends one (SentencePiece style);
    refuses pipelines llama.cpp's SentencePiece tokenizer does not reproduce."""
    normalizers = data.get("normalizer") or {}
    steps = normalizers.get("normalizers", [normalizers]) if normalizers else []
    kinds = {n.get("type") for n in steps}
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace" and not pre.get("split", True) and not steps:
        return pre.get("prepend_scheme", "always") != "never"
    replaces_space = any(
        n.get("type") == "Replace" and n.get("pattern", {}).get("String") == " " for n in steps
    )
    if not pre and replaces_space and kinds <= {"Replace", "Prepend"}:
        return "Prepend" in kinds
    raise UnsupportedModelError(
        "llama.cpp's SentencePiece tokenizer writes spaces as U+2581 and does not split words; "
        "this byte-fallback tokenizer's normalizer / pre-tokenizer differs"
    )


def _spm_vocab(
    data: dict[str, Any],
    tokens: list[str],
    types: list[int],
    pre: str | None,
) -> GGUFVocab:
    """A byte-fallback BPE vocabulary (Llama 2, Gemma style) as llama.cpp's SentencePiece one.

    llama.cpp merges the adjacent pair whose concatenation has the highest score; a token's
    score is minus the rank of the first merge that builds it, so it merges in the tokenizer's
    merge order (a pruned tokenizer keeps its merges in the same order, so the same choices).
    """
    import gguf

    model = data["model"]
    index = {t: i for i, t in enumerate(tokens)}
    for byte in range(256):
        if f"<0x{byte:02X}>" not in index:
            raise VocabPruneError(
                f"the byte-fallback vocabulary lacks <0x{byte:02X}>: llama.cpp needs all 256 "
                "byte pieces (export the standalone model, which keeps them)"
            )
        types[index[f"<0x{byte:02X}>"]] = int(gguf.TokenType.BYTE)
    if model.get("unk_token") in index:
        types[index[model["unk_token"]]] = int(gguf.TokenType.UNKNOWN)
    scores = [-1e9] * len(tokens)
    for rank, (a, b) in enumerate(_merge_pairs(model)):
        merged = index.get(_merged(model, a, b))
        if merged is not None and scores[merged] == -1e9:
            scores[merged] = -float(rank)
    shown = [
        t.replace("\u2581", " ") if types[i] == gguf.TokenType.USER_DEFINED else t
        for i, t in enumerate(tokens)
    ]
    return GGUFVocab(
        "llama", pre or "default", shown, types, scores=scores, add_space_prefix=_space_prefix(data)
    )


def _ugm_normalizer(data: dict[str, Any]) -> tuple[bytes | None, bool]:
    """(SentencePiece compiled charsmap, whether runs of spaces merge) of a Unigram tokenizer's
    normalizer: llama.cpp's UGM tokenizer applies the charsmap, then (remove_extra_whitespaces)
    drops leading and trailing spaces and merges runs, which transformers' converters write as
    Replace(" {2,}", " " or U+2581), with Strip(right) in newer ones."""
    import base64

    node = data.get("normalizer") or {}
    steps = (
        node.get("normalizers", []) if node.get("type") == "Sequence" else [node] if node else []
    )
    charsmap, merge = None, False
    for step in steps:
        kind = step.get("type")
        if kind == "Precompiled" and step.get("precompiled_charsmap"):
            charsmap = base64.b64decode(step["precompiled_charsmap"])
        elif kind == "Precompiled":
            continue  # an empty charsmap: no normalization
        elif (
            kind == "Replace"
            and step.get("pattern", {}).get("Regex") == " {2,}"
            and step.get("content") in (" ", "\u2581")
        ):
            merge = True  # SentencePiece's remove_extra_whitespaces
        elif kind == "Strip" and not step.get("strip_left") and step.get("strip_right"):
            continue  # trailing spaces: llama.cpp drops them with remove_extra_whitespaces
        else:
            raise UnsupportedModelError(
                "llama.cpp's Unigram tokenizer normalizes only with SentencePiece's compiled "
                f"charsmap and by merging runs of spaces; this tokenizer's normalizer has {kind}"
            )
    return charsmap, merge


def _ugm_pre_tokenizer(
    data: dict[str, Any], tokens: list[str], types: list[int]
) -> tuple[bool, bool]:
    """(whether a space is prepended, whether words are split at whitespace first) of a
    Metaspace pre-tokenizer, alone or after WhitespaceSplit (older converters; llama.cpp's
    remove_extra_whitespaces does the same). Refuses other pre-tokenizers, and word splitting
    over pieces holding U+2581 past their start (llama.cpp does not split words, so it could
    pick them; transformers cannot)."""
    import gguf

    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds not in (["Metaspace"], ["WhitespaceSplit", "Metaspace"]) or (
        steps[-1].get("replacement", "\u2581") != "\u2581"
    ):
        raise UnsupportedModelError(
            "llama.cpp's Unigram tokenizer writes spaces as U+2581 (a Metaspace pre-tokenizer); "
            f"this tokenizer's pre-tokenizer is {'+'.join(str(k) for k in kinds) or 'none'}"
        )
    metaspace, whitespace_split = steps[-1], len(steps) == 2
    if metaspace.get("split", True) or whitespace_split:
        normal = int(gguf.TokenType.NORMAL)
        pieces = zip(tokens, types, strict=True)
        inner = next((t for t, k in pieces if k == normal and "\u2581" in t[1:]), None)
        if inner is not None:
            raise UnsupportedModelError(
                f"the Unigram piece {inner!r} holds U+2581 inside: transformers splits words "
                "before it and never picks it, llama.cpp does not split and could"
            )
    legacy = "always" if metaspace.get("add_prefix_space", True) else "never"
    return (metaspace.get("prepend_scheme") or legacy) != "never", whitespace_split


def _ugm_vocab(
    data: dict[str, Any], tokens: list[str], types: list[int], pre: str | None
) -> GGUFVocab:
    """A Unigram vocabulary (XLM-R, T5, multilingual-e5 style) as llama.cpp's UGM ("t5") one:
    llama.cpp finds the highest-scoring split over the same pieces and scores (Viterbi), after
    SentencePiece's compiled normalizer; unknown characters score the lowest normal piece's
    score minus 10, as in `tokenizers` (a pruned tokenizer keeps that piece)."""
    import gguf

    model = data["model"]
    if model.get("byte_fallback"):
        raise UnsupportedModelError(
            "llama.cpp's Unigram tokenizer has no byte fallback; this Unigram model has one"
        )
    scores = [float(score) for _piece, score in model["vocab"]]
    scores += [0.0] * (len(tokens) - len(scores))  # added tokens past the model's pieces
    if model.get("unk_id") is not None:
        types[int(model["unk_id"])] = int(gguf.TokenType.UNKNOWN)
    charsmap, merge = _ugm_normalizer(data)
    space_prefix, whitespace_split = _ugm_pre_tokenizer(data, tokens, types)
    return GGUFVocab(
        "t5",
        pre or "default",
        tokens,
        types,
        scores=scores,
        add_space_prefix=space_prefix,
        charsmap=charsmap,
        remove_extra_whitespaces=merge or whitespace_split,
    )


# -- the architectures --------------------------------------------------------------------------


def _rope(config: dict[str, Any], layer_type: str = "full_attention") -> dict[str, Any]:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if layer_type in params:
        params = params[layer_type]
    out = dict(params)
    if "rope_theta" not in out and "rope_theta" in config:
        out["rope_theta"] = config["rope_theta"]
    return out


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _decoder_params(writer: Any, config: dict[str, Any], folder: Path | None = None) -> None:
    """Hyperparameters every decoder here shares (llama.cpp's keys under the arch's name)."""
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10_000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in (None, "default"):
        raise UnsupportedModelError(f"GGUF export does not write {rope_type!r} rope scaling")


def _llama_params(writer: Any, config: dict[str, Any], folder: Path) -> None:
    _decoder_params(writer, config)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(_head_dim(config))


def _gemma3_params(writer: Any, config: dict[str, Any], folder: Path) -> None:
    head_dim = _head_dim(config)
    if config.get("query_pre_attn_scalar", head_dim) != head_dim:
        raise UnsupportedModelError(
            "llama.cpp scales Gemma 3 attention by 1/sqrt(head_dim); this config's "
            f"query_pre_attn_scalar is {config['query_pre_attn_scalar']}"
        )
    if config.get("attn_logit_softcapping") is not None:
        raise UnsupportedModelError("llama.cpp's Gemma 3 has no attention logit soft-capping")
    _decoder_params(writer, config)
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    layer_types = config.get("layer_types")
    if config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
        if layer_types:
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        else:  # older configs: every n-th layer is global
            writer.add_sliding_window_pattern(int(config.get("sliding_window_pattern", 6)))
        swa = _rope(config, "sliding_attention")
        if "rope_theta" in swa:
            writer.add_rope_freq_base_swa(float(swa["rope_theta"]))


def _position_offset(config: dict[str, Any]) -> int:
    """XLM-R's first position is padding_idx + 1: the rows before it are never read, and
    llama.cpp (positions from 0) gets the table without them."""
    return int(config.get("pad_token_id", 1)) + 1


def _xlmr_params(writer: Any, config: dict[str, Any], folder: Path) -> None:
    positions = int(config["max_position_embeddings"]) - _position_offset(config)
    _bert_params(writer, {**config, "max_position_embeddings": positions}, folder)


def _xlmr_tensor(name: str, w: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    if name == "embeddings.position_embeddings.weight":
        return w[_position_offset(config) :]
    return w


def _bert_params(writer: Any, config: dict[str, Any], folder: Path) -> None:

    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config.get("layer_norm_eps", 1e-12))
    writer.add_causal_attention(False)
    writer.add_token_type_count(config.get("type_vocab_size", 1))


def _pooling(pooling: str | None, causal_arch: str | None, folder: Path) -> str | None:
    """The pooling type to record: the one given, else the folder's sentence-transformers
    pooling; none for a causal LM (`causal_arch`: its architecture), which refuses one."""
    if pooling is not None and pooling not in POOLINGS:
        raise VocabPruneError(f"GGUF pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if causal_arch is not None:
        if pooling is not None:
            raise VocabPruneError(f"{causal_arch} is a causal LM: pooling is for embedding models")
        return None
    return pooling or sentence_transformers_pooling(folder)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout -> llama.cpp's for Llama q/k rows (llama.cpp's converter's permute)."""
    pairs = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
    return pairs.swapaxes(1, 2).reshape(w.shape)


def _llama_tensor(name: str, w: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(w, config["num_attention_heads"])
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(w, config.get("num_key_value_heads", config["num_attention_heads"]))
    return w


def _gemma3_tensor(name: str, w: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    return w + 1.0 if name.endswith("norm.weight") else w  # Gemma3RMSNorm multiplies by 1 + w


def _same(name: str, w: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    return w


@dataclass(frozen=True)
class Arch:
    """How one transformers architecture becomes a llama.cpp one."""

    gguf_arch: str  # a gguf.MODEL_ARCH member name
    params: Callable[[Any, dict[str, Any], Path], None]  # (writer, config, folder)
    tensor: Callable[[str, np.ndarray, dict[str, Any]], np.ndarray] = _same
    causal: bool = True


def _qwen_params(writer: Any, config: dict[str, Any], folder: Path) -> None:
    if config.get("use_sliding_window"):
        raise UnsupportedModelError("llama.cpp's Qwen2 and Qwen3 have no sliding-window attention")
    _decoder_params(writer, config)


ARCHES: dict[str, Arch] = {
    "LlamaForCausalLM": Arch("LLAMA", _llama_params, _llama_tensor),
    "Qwen2ForCausalLM": Arch("QWEN2", _qwen_params),
    "Qwen3ForCausalLM": Arch("QWEN3", _qwen_params),
    "Gemma3ForCausalLM": Arch("GEMMA3", _gemma3_params, _gemma3_tensor),
    "BertModel": Arch("BERT", _bert_params, causal=False),
    "XLMRobertaModel": Arch("BERT", _xlmr_params, _xlmr_tensor, causal=False),
}
# Tensors llama.cpp does not read: rotary caches, position id buffers, BERT's pooler and heads.
_SKIP_SUFFIXES = ("rotary_emb.inv_freq", "position_ids")
_SKIP_PREFIXES = ("pooler.", "cls.")


def _arch(config: dict[str, Any]) -> tuple[str, Arch]:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHES:
            return name, ARCHES[name]
    shown = ", ".join(names) or config.get("model_type", "no architecture")
    raise UnsupportedModelError(
        f"GGUF export does not support {shown} (supported: {', '.join(ARCHES)})"
    )


# -- tensors ------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index, "safetensors index")["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if not single.is_file():
        raise VocabPruneError(f"{folder} has no model.safetensors (GGUF export reads safetensors)")
    return [single]


def _tensors(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every stored tensor, one at a time (safetensors only)."""
    from safetensors import safe_open

    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                yield name, f.get_tensor(name).float().numpy()


# Tables llama.cpp's BERT graph adds to f32 activations as they are (ggml_add takes no f16
# operand on the CPU; llama.cpp's converter keeps them f32 too).
_F32_TENSORS = ("position_embd.weight", "token_types.weight")


def _encode(w: np.ndarray, name: str, outtype: str) -> tuple[np.ndarray, Any]:
    """The array to write and its GGML type: 1-D tensors, norms and `_F32_TENSORS` stay f32."""
    import gguf

    if outtype == "f32" or w.ndim <= 1 or name.endswith("_norm.weight") or name in _F32_TENSORS:
        return w.astype(np.float32), gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and w.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(w.astype(np.float32), qtype), qtype
    return w.astype(np.float16), gguf.GGMLQuantizationType.F16


def _file_type(outtype: str) -> Any:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]


def _add_tensors(
    writer: Any, folder: Path, config: dict[str, Any], arch: Arch, outtype: str, n_vocab: int
) -> int:
    import gguf

    n_blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), n_blocks)
    tied = bool(config.get("tie_word_embeddings", arch.causal))
    count = 0
    for hf_name, w in _tensors(folder):
        name = hf_name
        if arch.gguf_arch == "BERT":  # a task model's encoder: llama.cpp's names start below it
            name = name.removeprefix("bert.").removeprefix("roberta.")
        if name.endswith(_SKIP_SUFFIXES) or name.startswith(_SKIP_PREFIXES):
            continue
        if tied and name == "lm_head.weight":
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UnsupportedModelError(
                f"GGUF export does not know where tensor {hf_name!r} goes in llama.cpp's "
                f"{arch.gguf_arch.lower()} model"
            )
        if new_name in ("token_embd.weight", "output.weight") and w.shape[0] != n_vocab:
            raise VocabPruneError(
                f"{hf_name} has {w.shape[0]} rows, the tokenizer {n_vocab} tokens: a GGUF needs "
                "one row per token (export the standalone model, whose tokenizer is rewritten)"
            )
        data, qtype = _encode(arch.tensor(name, w, config), new_name, outtype)
        writer.add_tensor(new_name, data, raw_dtype=qtype)
        count += 1
    return count


# -- the export ---------------------------------------------------------------------------------


def _read_source(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not folder.is_dir():
        raise VocabPruneError(f"model folder not found: {folder}")
    manifest = folder / MANIFEST
    if manifest.is_file() and read_json(manifest, "export manifest").get("kind") == "compact":
        raise VocabPruneError(
            f"{folder} is a compact export (original tokenizer, kept rows): export it with "
            "--standalone for GGUF, whose tokenizer is rewritten to the kept rows"
        )
    config = read_json(folder / "config.json", "model config")
    if not (folder / "tokenizer.json").is_file():
        raise VocabPruneError(f"{folder} has no tokenizer.json (GGUF export reads it)")
    data = read_json(folder / "tokenizer.json", "tokenizer")
    return config, data


def _pad(vocab: GGUFVocab, rows: int) -> None:
    """Tokens for embedding rows beyond the tokenizer ("[PAD<id>]", unused), as llama.cpp's
    converter writes them."""
    import gguf

    extra = range(len(vocab.tokens), rows)
    vocab.tokens.extend(f"[PAD{i}]" for i in extra)
    vocab.types.extend(int(gguf.TokenType.UNUSED) for _ in extra)
    if vocab.scores is not None:
        vocab.scores.extend(-1e9 for _ in extra)


def _kept_ids(folder: Path, n_vocab: int) -> tuple[list[int], int] | None:
    """(new -> old ids, original vocabulary size) of a pruned export, from its kept_vocab.json."""
    path = folder / DEFAULT_FILENAME
    if not path.is_file():
        return None
    kept = read_json(path, "kept vocabulary")
    ids = [int(i) for i in kept.get("kept_ids", [])]
    if len(ids) != n_vocab:
        raise VocabPruneError(f"{path} keeps {len(ids)} ids, the tokenizer has {n_vocab} tokens")
    return ids, int(kept.get("vocab_size", max(ids) + 1))


def export_gguf(
    source: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    pre: str | None = None,
    name: str | None = None,
    vocab_only: bool = False,
    overwrite: bool = False,
    pooling: str | None = None,
) -> dict[str, Any]:
    """Write the model folder `source` (a standalone export, or a full model) as a GGUF file.

    `outtype`: f32, f16 or q8_0 (2-D weights; norms and biases stay f32). `pre`: llama.cpp's
    pre-tokenizer name, when `tokenizer.json`'s is not one of `KNOWN_PRE`. `vocab_only`: the
    tokenizer and hyperparameters without tensors (llama.cpp loads it with vocab_only=True).
    `pooling` (embedding models): one of `POOLINGS`; by default it is read from the folder's
    sentence-transformers files, and without them the file records none (llama.cpp then gives
    one vector per token).
    The file is written atomically. Returns a summary (arch, tokenizer, sizes).
    """
    import gguf

    if outtype not in OUTTYPES:
        raise VocabPruneError(f"GGUF outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    if pre is not None and not isinstance(pre, str):
        raise VocabPruneError(f"pre must be a llama.cpp pre-tokenizer name, not {pre!r}")
    folder, target = Path(source), Path(out_file)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output file already exists: {target} (choose another or overwrite)")
    config, data = _read_source(folder)
    config = config.get("text_config", config) if "hidden_size" not in config else config
    hf_arch, arch = _arch(config)
    pooled = _pooling(pooling, hf_arch if arch.causal else None, folder)
    vocab = gguf_vocab(data, pre=pre)
    kept = _kept_ids(folder, len(vocab.tokens))
    rows = int(config.get("vocab_size", len(vocab.tokens)))
    if rows > len(vocab.tokens) and kept is None:
        _pad(vocab, rows)  # a full model's spare rows (Qwen, Gemma checkpoints have some)
    n_vocab = len(vocab.tokens)
    if rows != n_vocab:
        raise VocabPruneError(
            f"{folder}: config vocab_size {config.get('vocab_size')} but the tokenizer has "
            f"{n_vocab} tokens (export the standalone model, whose tokenizer is rewritten)"
        )
    arch_name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_arch)]
    with atomic_file(target) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch_name)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(name or str(config.get("_name_or_path") or folder.name))
            writer.add_file_type(_file_type(outtype))
            arch.params(writer, config, folder)
            if pooled is not None:
                writer.add_pooling_type(getattr(gguf.PoolingType, pooled))
            writer.add_tokenizer_model(vocab.model)
            writer.add_tokenizer_pre(vocab.pre)
            writer.add_token_list(vocab.tokens)
            writer.add_token_types(vocab.types)
            if vocab.scores is not None:
                writer.add_token_scores(vocab.scores)
            if vocab.add_space_prefix is not None:
                writer.add_add_space_prefix(vocab.add_space_prefix)
            if vocab.remove_extra_whitespaces is not None:
                writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
            if vocab.charsmap:
                writer.add_precompiled_charsmap(vocab.charsmap)
            special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=n_vocab)
            special.add_to_gguf(writer, quiet=True)
            if kept is not None:
                writer.add_array(KEPT_IDS_KEY, kept[0])
                writer.add_uint32(ORIGINAL_VOCAB_KEY, kept[1])
            n_tensors = 0
            if not vocab_only:
                n_tensors = _add_tensors(writer, folder, config, arch, outtype, n_vocab)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            if not vocab_only:
                writer.write_tensors_to_file()
        finally:
            writer.close()
    return {
        "out": str(target),
        "architecture": hf_arch,
        "gguf_architecture": arch_name,
        "outtype": outtype,
        "tokenizer_model": vocab.model,
        "pre_tokenizer": vocab.pre,
        "tokens": n_vocab,
        "merges": len(special.merges),
        "special_ids": dict(special.special_token_ids),
        "tensors": n_tensors,
        "pooling": pooled,
        "embedding_model": not arch.causal,
        "bytes_without_symbol": [f"0x{b:02X}" for b in vocab.missing_bytes],
        "kept_ids": kept is not None,
        "bytes": target.stat().st_size,
    }
