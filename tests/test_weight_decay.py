"""Exact weight decay: pruned fine-tuning + restore equals full fine-tuning with decay > 0."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from minilm_runs import weight_decay_runs
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

import vocabprune as vp
from vocabprune.train.decay import InexactDecayWarning, track_weight_decay

WORD_KEY = "bert.embeddings.word_embeddings.weight"


def _tiny_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=200,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def _batches(steps: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(1, 60, (4, 10), generator=g),  # ids >= 60 never occur
            "labels": torch.randint(0, 3, (4,), generator=g),
        }
        for _ in range(steps)
    ]


def _train(model, make_opt, batches, kept=None, track=True):
    opt = make_opt(model)
    if kept is not None and track:
        track_weight_decay(opt, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / (len(batches) + 1))
    for batch in batches:  # tokenizer ids: a pruned model remaps them itself
        model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return opt


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


OPTIMIZERS = {
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.3),
    "adam-decoupled": lambda m: torch.optim.Adam(
        m.parameters(), lr=0.05, weight_decay=0.3, decoupled_weight_decay=True
    ),
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.2, weight_decay=0.5),
    "sgd-momentum": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.2, momentum=0.9, dampening=0.1, weight_decay=0.5
    ),
    "sgd-nesterov": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=0.5
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_plain_loop_tracks_decay_exactly(name):
    batches = _batches(6)
    full = _tiny_model()
    _train(full, OPTIMIZERS[name], batches)
    model = _tiny_model()
    counts = np.bincount(torch.cat([b["input_ids"].ravel() for b in batches]), minlength=200)
    kept = vp.KeptVocab.from_counts(counts, model=model)
    assert kept.size < 100
    original = model.bert.embeddings.word_embeddings.weight.detach().clone()
    vp.prune(model, kept)
    _train(model, OPTIMIZERS[name], batches, kept)
    vp.restore(model)
    assert _max_diff(model, full) <= 1e-6
    # The decay really moved the dropped rows (so the test can fail without the tracker).
    dropped = np.setdiff1d(np.arange(200), kept.kept_ids)
    moved = (full.bert.embeddings.word_embeddings.weight[dropped] - original[dropped]).abs().max()
    assert moved > 1e-3


def test_untracked_decay_is_not_exact():
    batches = _batches(4)
    full = _tiny_model()
    _train(full, OPTIMIZERS["adamw"], batches)
    model = _tiny_model()
    counts = np.bincount(torch.cat([b["input_ids"].ravel() for b in batches]), minlength=200)
    kept = vp.KeptVocab.from_counts(counts, model=model)
    vp.prune(model, kept)
    _train(model, OPTIMIZERS["adamw"], batches, kept, track=False)
    vp.restore(model)
    assert _max_diff(model, full) > 1e-3


def test_explicit_dropped_scale_overrides_and_factor_matches_schedule():
    batches = _batches(3)
    model = _tiny_model()
    kept = vp.KeptVocab.from_counts(np.ones(60, dtype=np.int64), model=model)
    vp.prune(model, kept)
    _train(model, OPTIMIZERS["adamw"], batches, kept)
    state = vp.get_state(model)
    # lr_t = 0.05 * (1 - t/4), t = 0..2; decoupled decay 0.3
    expected = np.prod([1 - 0.05 * (1 - t / 4) * 0.3 for t in range(3)])
    assert state.dropped_scale[WORD_KEY] == pytest.approx(expected, rel=1e-12)
    before = state.tensors[0].store.full()[100].clone()
    vp.restore(model, dropped_scale=0.5)
    assert torch.allclose(model.bert.embeddings.word_embeddings.weight[100], before * 0.5)


def test_inexact_optimizers_warn():
    model = _tiny_model()
    kept = vp.KeptVocab.from_counts(np.ones(60, dtype=np.int64), model=model)
    vp.prune(model, kept)
    with pytest.warns(InexactDecayWarning, match="Adam"):
        track_weight_decay(torch.optim.Adam(model.parameters(), weight_decay=0.1), model)
    vp.restore(model)
    model = _tiny_model()
    vp.prune(model, kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        track_weight_decay(torch.optim.Adam(model.parameters(), weight_decay=0.0), model)
        track_weight_decay(torch.optim.AdamW(model.parameters(), weight_decay=0.1), model)
    vp.restore(model)


def test_cli_weight_decay_pruned_equals_full(bbc_dir, minilm_dir):
    """`vocabprune finetune --weight-decay 0.1`, pruned vs --no-prune, on MiniLM + BBC News."""
    runs = weight_decay_runs(str(bbc_dir))
    report = json.loads((runs / "a.json").read_text())
    assert report["pruned"] and not json.loads((runs / "full.json").read_text())["pruned"]
    expected = np.prod([1 - 1e-3 * (1 - t / 4) * 0.1 for t in range(4)])  # linear schedule
    assert report["dropped_decay_factor"][WORD_KEY] == pytest.approx(expected, rel=1e-9)
    pruned = load_file(runs / "a" / "model.safetensors")
    full = load_file(runs / "full" / "model.safetensors")
    assert pruned.keys() == full.keys()
    diff = max((pruned[k] - full[k]).abs().max().item() for k in full)
    assert diff <= 1e-5
    # Weight decay moved the rows the pruned run never held by more than the tolerance.
    original = load_file(minilm_dir / "model.safetensors")["embeddings.word_embeddings.weight"]
    kept = vp.KeptVocab.load(runs / "a")
    dropped = np.setdiff1d(np.arange(30522), kept.kept_ids)
    assert (full[WORD_KEY][dropped] - original[dropped]).abs().max() > 1e-5
