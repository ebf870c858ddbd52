"""Resume: a run interrupted and resumed from a Trainer checkpoint ends where an uninterrupted
run ends; checkpoints are full-vocabulary and carry the kept vocabulary and the decay state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from minilm_runs import WD_ARGS, weight_decay_runs
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

import vocabprune as vp
from vocabprune.cli.main import main
from vocabprune.core.errors import MismatchError
from vocabprune.train.callback import CHECKPOINT_FILE, check_resume, write_checkpoint_record

WORD_KEY = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def runs(bbc_dir):
    return weight_decay_runs(str(bbc_dir))


def test_resumed_run_equals_uninterrupted_run(runs):
    a = load_file(runs / "a" / "model.safetensors")
    b = load_file(runs / "b" / "model.safetensors")
    assert a.keys() == b.keys() and a[WORD_KEY].shape == (30522, 384)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    ra = json.loads((runs / "a.json").read_text())
    rb = json.loads((runs / "b.json").read_text())
    assert rb["resumed_from"].endswith("checkpoint-2") and ra["resumed_from"] is None
    assert rb["steps"] == ra["steps"] == 4
    assert rb["dropped_decay_factor"] == pytest.approx(ra["dropped_decay_factor"], rel=1e-12)
    # The resumed run really trained: its final model differs from the checkpoint it started at.
    ckpt = load_file(runs / "ckpts-a" / "checkpoint-2" / "model.safetensors")
    assert (ckpt["classifier.weight"] - b["classifier.weight"]).abs().max() > 1e-4


def test_checkpoints_are_full_vocabulary_and_record_the_run(runs, minilm_dir):
    folder = runs / "ckpts-a" / "checkpoint-2"
    record = json.loads((folder / CHECKPOINT_FILE).read_text())
    kept = vp.KeptVocab.load(runs / "a")
    assert record["pruned"] and record["kept_size"] == kept.size
    factor = record["decay"]["tensors"][WORD_KEY]["factor"]
    assert factor == pytest.approx((1 - 1e-3 * 0.1) * (1 - 0.75e-3 * 0.1), rel=1e-12)
    weights = load_file(folder / "model.safetensors")
    assert weights[WORD_KEY].shape == (30522, 384)
    # A checkpoint is what full fine-tuning would hold at that step: decayed dropped rows.
    original = load_file(minilm_dir / "model.safetensors")["embeddings.word_embeddings.weight"]
    dropped = np.setdiff1d(np.arange(30522), kept.kept_ids)
    expected = original[dropped] * factor
    assert (weights[WORD_KEY][dropped] - expected).abs().max() <= 1e-6
    # Optimizer state is kept-rows sized.
    optim = torch.load(folder / "optimizer.pt", weights_only=True)
    sizes = {tuple(s["exp_avg"].shape) for s in optim["state"].values()}
    assert (kept.size, 384) in sizes and (30522, 384) not in sizes


def test_resume_with_another_kept_vocabulary_is_refused(runs, capsys):
    argv = ["finetune", "--out", str(runs / "c"), "--resume", str(runs / "ckpts-a/checkpoint-2")]
    argv += ["--data", str(runs / "bbc96.jsonl"), "--json"] + WD_ARGS + ["--limit", "40"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert "another kept vocabulary" in captured.err
    assert not (runs / "c").exists()


def _tiny(vocab: int = 120) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        pad_token_id=0,
    )
    return BertForSequenceClassification(config)


def test_check_resume_refusals(tmp_path):
    model = _tiny()
    kept = vp.KeptVocab.from_counts(np.ones(50, dtype=np.int64), model=model)
    vp.prune(model, kept)
    write_checkpoint_record(model, tmp_path)
    assert check_resume(model, tmp_path)["kept_size"] == kept.size
    # Another kept vocabulary.
    other = _tiny()
    vp.prune(other, vp.KeptVocab.from_counts(np.ones(40, dtype=np.int64), model=other))
    with pytest.raises(MismatchError, match="another kept vocabulary"):
        check_resume(other, tmp_path)
    # Another model (vocabulary size).
    bigger = _tiny(vocab=150)
    vp.prune(bigger, vp.KeptVocab.from_counts(np.ones(50, dtype=np.int64), model=bigger))
    with pytest.raises(MismatchError, match="vocabulary of 120 ids"):
        check_resume(bigger, tmp_path)
    # An unpruned model cannot take a pruned checkpoint, nor a pruned model an unpruned one.
    with pytest.raises(MismatchError, match="comes from a pruned run"):
        check_resume(_tiny(), tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    write_checkpoint_record(_tiny(), plain)
    with pytest.raises(MismatchError, match="unpruned run"):
        check_resume(model, plain)
    (plain / CHECKPOINT_FILE).unlink()
    with pytest.raises(MismatchError, match="no vocabprune.json"):
        check_resume(model, plain)
