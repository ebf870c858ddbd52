"""Real-model tests on the packaged MiniLM with BBC News: exactness, checkpoints, loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

import vocabprune as vp
from vocabprune.cli.finetune import run_finetune
from vocabprune.cli.options import FinetuneOptions

WORD_KEY = "bert.embeddings.word_embeddings.weight"


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def exactness_runs(tmp_path_factory, bbc_dir):
    """The same short fine-tuning twice: pruned and --no-prune (weight decay 0, same seed)."""
    runs = {}
    for prune in (True, False):
        out = tmp_path_factory.mktemp("ft") / ("pruned" if prune else "full")
        opts = FinetuneOptions(
            out=str(out),
            data=[str(bbc_dir)],
            max_length=64,
            max_steps=6,
            batch_size=8,
            lr=1e-4,
            seed=7,
            eval_fraction=0.25,
            limit=96,
            prune=prune,
            logging_steps=100,
        )
        runs[prune] = (run_finetune(opts), out)
    return runs


def test_pruned_finetune_equals_full_finetune(exactness_runs, minilm_dir):
    (pruned, p_out), (full, f_out) = exactness_runs[True], exactness_runs[False]
    assert pruned["pruned"] and not full["pruned"]
    assert pruned["trainable_params"] < full["trainable_params"]
    saved_pruned = load_file(p_out / "model.safetensors")
    saved_full = load_file(f_out / "model.safetensors")
    assert saved_pruned[WORD_KEY].shape == (30522, 384)
    assert _max_diff(saved_pruned, saved_full) <= 1e-5
    assert pruned["eval_predictions"] == full["eval_predictions"]
    assert len(pruned["eval_predictions"]) == 24
    # Training moved kept rows; rows never seen are bitwise the original checkpoint's.
    original = load_file(minilm_dir / "model.safetensors")["embeddings.word_embeddings.weight"]
    kept = vp.KeptVocab.load(p_out)
    dropped = np.setdiff1d(np.arange(30522), kept.kept_ids)
    assert torch.equal(saved_pruned[WORD_KEY][dropped], original[dropped])
    used = kept.kept_ids[kept.counts > 0]
    assert not torch.equal(saved_pruned[WORD_KEY][used], original[used])


def test_restored_output_loads_with_stock_transformers(exactness_runs, minilm_tokenizer):
    _, out = exactness_runs[True]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 30522
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == 30522
    enc = minilm_tokenizer(["Shares rose sharply after the results."], return_tensors="pt")
    assert model(**enc).logits.shape == (1, 5)
    report = json.loads((out / "vocabprune_run.json").read_text())
    assert report["kept_tokens"] == vp.KeptVocab.load(out).size


def _examples(tokenizer, texts, labels):
    enc = tokenizer(texts, truncation=True, max_length=48)
    return [
        {"input_ids": i, "attention_mask": m, "labels": y}
        for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
    ]


@pytest.fixture(scope="module")
def small_data(bbc_texts, minilm_tokenizer):
    rng = np.random.default_rng(0)
    rows = rng.choice(len(bbc_texts["text"]), size=32, replace=False)
    names = sorted(set(bbc_texts["label"]))
    texts = [bbc_texts["text"][r] for r in rows]
    labels = [names.index(bbc_texts["label"][r]) for r in rows]
    return texts, labels


def _fresh_model(minilm_dir, seed=3):
    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=5)


def test_plain_pytorch_loop_equals_full(minilm_dir, minilm_tokenizer, small_data):
    texts, labels = small_data
    examples = _examples(minilm_tokenizer, texts, labels)
    base = DataCollatorWithPadding(minilm_tokenizer)
    kept = vp.build_kept_vocab(
        minilm_tokenizer, texts, model=_fresh_model(minilm_dir), max_length=48
    )
    results = {}
    for prune in ("original", "kept", False):  # stock collator; data-side remap; full
        model = _fresh_model(minilm_dir)
        collate = base
        if prune:
            vp.prune(model, kept, ids=prune)
            if prune == "kept":
                collate = vp.RemapCollator(base, model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        torch.manual_seed(11)
        model.train()
        for start in range(0, len(examples), 8):  # ragged batches, padded dynamically
            batch = collate(examples[start : start + 8])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        if prune:
            assert model.get_input_embeddings().num_embeddings == kept.size
            vp.restore(model)
        assert not vp.is_pruned(model)
        results[prune] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert results["original"][WORD_KEY].shape == (30522, 384)
    assert _max_diff(results["original"], results[False]) <= 1e-5
    assert _max_diff(results["kept"], results[False]) <= 1e-5


def test_trainer_checkpoint_while_pruned_is_full_vocabulary(
    minilm_dir, minilm_tokenizer, small_data, tmp_path
):
    texts, labels = small_data
    model = _fresh_model(minilm_dir)
    kept = vp.build_kept_vocab(minilm_tokenizer, texts, model=model, max_length=48)
    vp.prune(model, kept)
    args = TrainingArguments(
        output_dir=str(tmp_path / "ckpt"),
        per_device_train_batch_size=8,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        learning_rate=1e-4,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    collator = DataCollatorWithPadding(minilm_tokenizer)  # stock: the model reads its ids
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=_examples(minilm_tokenizer, texts, labels),
    )
    trainer.train()
    assert vp.is_pruned(model)  # still pruned: the checkpoint was written by the hooks
    ckpt = tmp_path / "ckpt" / "checkpoint-2"
    assert json.loads((ckpt / "config.json").read_text())["vocab_size"] == 30522
    reloaded = AutoModelForSequenceClassification.from_pretrained(ckpt)
    vp.restore(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name
    # The optimizer state was made for the pruned Parameter: the kept rows only.
    optim_state = trainer.optimizer.state_dict()["state"]
    assert any(s["exp_avg"].shape == (kept.size, 384) for s in optim_state.values())


def test_save_pretrained_while_pruned_equals_restore(minilm_dir, minilm_tokenizer, tmp_path):
    model = _fresh_model(minilm_dir)
    kept = vp.build_kept_vocab(minilm_tokenizer, ["markets fell", "the match ended"], model=model)
    vp.prune(model, kept)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)  # "training" of the kept rows
    model.save_pretrained(tmp_path / "saved")
    assert model.config.vocab_size == kept.size  # the live config is still the pruned one
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    vp.restore(model)
    assert model.config.vocab_size == 30522
    for name, value in model.state_dict().items():
        assert torch.equal(value, stock.state_dict()[name]), name


def test_unknown_tokens_error_names_token_or_map_to_unk(minilm_dir, minilm_tokenizer):
    model = _fresh_model(minilm_dir).eval()
    kept = vp.build_kept_vocab(minilm_tokenizer, ["markets fell sharply"], model=model)
    base = DataCollatorWithPadding(minilm_tokenizer)
    feats = [dict(minilm_tokenizer("markets rose"))]
    unk = minilm_tokenizer.unk_token_id
    with torch.no_grad():  # the unpruned model reading [UNK] where "rose" was
        as_unk = dict(base(feats))
        as_unk["input_ids"] = as_unk["input_ids"].masked_fill(as_unk["input_ids"] == 3123, unk)
        want = model(**as_unk).logits
    # The model reads tokenizer ids: an unseen one is an error naming it (the tokenizer is found
    # beside the model), and the model is left as it was; unknown="unk" reads it as [UNK].
    named = "'rose' \\(id 3123\\) in example 0 of the batch, position 2, is not in the kept"
    with vp.pruned(model, kept), pytest.raises(vp.UnknownTokenError, match=named):
        model(**base(feats))
    with vp.pruned(model, kept, unknown="unk"), torch.no_grad():
        torch.testing.assert_close(model(**base(feats)).logits, want)
    # The same policies on the data side, for a model pruned with ids='kept'.
    with vp.pruned(model, kept, ids="kept"), pytest.raises(vp.UnknownTokenError, match="'rose'"):
        vp.RemapCollator(base, model)(feats)
    with vp.pruned(model, kept, ids="kept", unknown="unk"):
        batch = vp.RemapCollator(base, model)(feats)
    unk_new = kept.new_id(unk)
    assert batch["input_ids"][0, 2].item() == unk_new
    remapper = vp.IdRemapper(kept)
    ids = torch.tensor([[101, minilm_tokenizer.vocab["markets"], 102, 0]])
    assert torch.equal(remapper.to_old(remapper(ids)), ids)


def test_kept_vocab_for_another_tokenizer_or_model_is_refused(minilm_dir, minilm_tokenizer):
    from transformers import AutoTokenizer

    kept = vp.build_kept_vocab(minilm_tokenizer, ["markets fell"])
    other = AutoTokenizer.from_pretrained(minilm_dir)
    other.add_tokens(["brandnewtoken"])
    with pytest.raises(vp.MismatchError, match="another tokenizer"):
        vp.IdRemapper(kept, tokenizer=other)
    small = vp.KeptVocab.from_counts(np.ones(100, dtype=np.int64))
    model = _fresh_model(minilm_dir)
    with pytest.raises(vp.MismatchError, match="100 ids"):
        vp.prune(model, small)
    assert not vp.is_pruned(model)
