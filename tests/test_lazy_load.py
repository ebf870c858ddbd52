"""load_pruned: the same state as from_pretrained + prune, without reading the dropped rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import vocabprune as vp
from vocabprune.core import checkpoint
from vocabprune.core.checkpoint import read_rows
from vocabprune.core.load_pruned import load_pruned


def _kept(tokenizer, texts, model_path, max_length=64):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    counts = vp.count_token_ids(ids, config.vocab_size)
    return vp.KeptVocab.from_counts(counts, tokenizer=tokenizer, vocab_size=config.vocab_size)


def _assert_same_pruned(a, b):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].shape == pb[name].shape, name
        assert torch.equal(pa[name], pb[name]), name
        assert pa[name].requires_grad == pb[name].requires_grad, name
    assert a.config.to_dict() == b.config.to_dict()
    ea, eb = a.get_input_embeddings(), b.get_input_embeddings()
    assert (ea.num_embeddings, ea.padding_idx) == (eb.num_embeddings, eb.padding_idx)
    sa, sb = vp.get_state(a), vp.get_state(b)
    assert [t.name for t in sa.tensors] == [t.name for t in sb.tensors]


def _seq_cls_roundtrip(path, kept):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    lazy = load_pruned(AutoModelForSequenceClassification, path, kept, num_labels=5)
    torch.manual_seed(0)
    eager = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)
    original = {k: v.clone() for k, v in eager.state_dict().items()}
    full_config = eager.config.to_dict()
    vp.prune(eager, kept)
    _assert_same_pruned(lazy, eager)
    # saves taken while pruned are full-vocabulary, as after prune
    sd_lazy, sd_eager = lazy.state_dict(), eager.state_dict()
    for key in sd_eager:
        assert torch.equal(sd_lazy[key], sd_eager[key]), key
    vp.restore(lazy)
    assert not vp.is_pruned(lazy)
    restored = lazy.state_dict()
    assert restored.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(restored[key], value), key
    assert lazy.config.to_dict() == full_config
    assert lazy.get_input_embeddings().num_embeddings == kept.vocab_size


def test_minilm_equals_from_pretrained_plus_prune(minilm_dir, minilm_tokenizer, bbc_texts):
    kept = _kept(minilm_tokenizer, bbc_texts["text"][:200], minilm_dir)
    _seq_cls_roundtrip(str(minilm_dir), kept)


@pytest.mark.parametrize("ids", ["original", "kept"])
def test_tied_mlm_head_and_moved_pad(tmp_path, ids):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=300,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        pad_token_id=7,
    )
    BertForMaskedLM(config).save_pretrained(tmp_path)
    counts = np.zeros(300, dtype=np.int64)
    counts[[2, 5, 40, 41, 42, 100, 250, 299]] = 3
    kept = vp.KeptVocab.from_counts(counts, extra_ids=[7], vocab_size=300)
    assert kept.new_id(7) != 7  # the pad id moves: padding_idx and config follow the map
    lazy = load_pruned(BertForMaskedLM, tmp_path, kept, ids=ids)
    eager = BertForMaskedLM.from_pretrained(tmp_path)
    original = {k: v.clone() for k, v in eager.state_dict().items()}
    with torch.no_grad():
        full_logits = eager(torch.tensor([[2, 40, 7]])).logits
    vp.prune(eager, kept, ids=ids)
    _assert_same_pruned(lazy, eager)
    assert lazy.cls.predictions.decoder.weight is lazy.bert.embeddings.word_embeddings.weight
    assert lazy.cls.predictions.bias.shape == (kept.size,)
    assert lazy.config.pad_token_id == (kept.new_id(7) if ids == "kept" else 7)
    assert lazy.bert.embeddings.word_embeddings.padding_idx == kept.new_id(7)
    fed = torch.tensor(
        [[2, 40, 7]] if ids == "original" else [[kept.new_id(i) for i in (2, 40, 7)]]
    )
    with torch.no_grad():
        got = lazy(fed).logits
        assert torch.equal(got, eager(fed).logits)
    if ids == "original":  # spread over the original ids, equal to the full model's at the kept
        torch.testing.assert_close(got[..., kept.kept_ids], full_logits[..., kept.kept_ids])
    vp.restore(lazy)
    for key, value in lazy.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert lazy.config.pad_token_id == 7
    assert lazy.bert.embeddings.word_embeddings.padding_idx == 7


def test_read_rows_reads_only_kept_rows(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    matrix = torch.randn(1000, 12)
    save_file({"m": matrix}, str(tmp_path / "x.safetensors"))
    ids = np.array([0, 1, 2, 10, 500, 501, 999])
    read = []
    real = os.preadv

    def spy(fd, buffers, offset):
        read.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(checkpoint.os, "preadv", spy)
    rows = read_rows(tmp_path / "x.safetensors", "m", ids)
    assert torch.equal(rows, matrix[ids])
    assert sum(read) == len(ids) * 12 * 4  # only the kept rows' bytes, in 4 runs
    assert len(read) == 4
    assert torch.equal(read_rows(tmp_path / "x.safetensors", "m", None), matrix)


def test_only_kept_rows_are_read(minilm_dir, minilm_tokenizer, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    kept = _kept(minilm_tokenizer, ["only a few words here", "and a few more"], minilm_dir)
    read = []
    real = os.preadv

    def spy(fd, buffers, offset):
        read.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(checkpoint.os, "preadv", spy)
    model = load_pruned(AutoModelForSequenceClassification, minilm_dir, kept, num_labels=2)
    assert sum(read) == kept.size * 384 * 4  # the kept rows of the embedding, nothing else
    assert model.get_input_embeddings().weight.shape == (kept.size, 384)


def test_refuses_wrong_vocabulary(minilm_dir):
    from transformers import AutoModelForSequenceClassification

    kept = vp.KeptVocab.from_counts(np.ones(10, dtype=np.int64), vocab_size=10)
    with pytest.raises(vp.VocabPruneError, match="10 ids"):
        load_pruned(AutoModelForSequenceClassification, minilm_dir, kept)


@pytest.mark.slow
def test_e5_250k_vocabulary(bbc_texts):
    from transformers import AutoTokenizer

    from vocabprune.fixtures import e5_path

    path = str(e5_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    kept = _kept(tokenizer, bbc_texts["text"][:300], path, max_length=128)
    assert kept.vocab_size == 250_037
    _seq_cls_roundtrip(path, kept)


CONCURRENT = """
import json, sys, threading
import numpy as np, torch
import vocabprune as vp
from transformers import AutoModel, AutoTokenizer
path = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(path)
ids = tokenizer(["a few words for a small kept vocabulary"])["input_ids"]
kept = vp.KeptVocab.from_counts(vp.count_token_ids(ids, 30522), tokenizer=tokenizer)
reference = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach()
results, start = {}, threading.Barrier(2)

def stock():
    start.wait()
    for i in range(3):
        weight = AutoModel.from_pretrained(path).get_input_embeddings().weight
        results[f"stock{i}"] = bool(torch.equal(weight.detach(), reference))

def pruned():
    start.wait()
    for i in range(3):
        model = vp.load_pruned(AutoModel, path, kept)
        results[f"pruned{i}"] = model.get_input_embeddings().weight.shape[0] == kept.size

threads = [threading.Thread(target=stock), threading.Thread(target=pruned)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def test_concurrent_stock_loads_are_unaffected(minilm_dir):
    """load_pruned patches nothing in transformers: a stock from_pretrained running in another
    thread at the same time still loads the full model. (In a fresh process: transformers' own
    from_pretrained is not thread-safe against itself, its no_tie_weights context swaps
    PreTrainedModel.tie_weights, and a race there must not leak into other tests.)"""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", CONCURRENT, str(minilm_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 6 and all(results.values()), results
