"""The chunked training loss of a pruned causal LM (vp.chunked_loss: TRL's fused LM head over the
kept columns): the same loss and gradients as the logits path, through a plain loop and the
Trainer; generation and evaluation unchanged; restore takes it off."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, Qwen3Config

import vocabprune as vp

pytest.importorskip("trl")
V = 400


def _config(name: str):
    common = dict(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    if name == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if name == "llama-untied":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if name == "qwen3":
        return Qwen3Config(**common, head_dim=8, tie_word_embeddings=True)
    return GemmaConfig(**{**common, "num_key_value_heads": 1}, head_dim=8)


@pytest.fixture(params=["llama", "llama-untied", "qwen3", "gemma"])
def pair(request):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_config(request.param))
    text = np.arange(10, V, 3)
    counts = np.zeros(V, dtype=np.int64)
    counts[text] = 1
    kept = vp.KeptVocab.from_counts(counts, model=base, extra_ids=[0, 1, 2])
    ids = torch.as_tensor(np.random.default_rng(0).choice(text, size=(3, 40)))
    labels = ids.clone()
    labels[:, :6] = -100
    plain, chunked = copy.deepcopy(base), copy.deepcopy(base)
    vp.prune(plain, kept)
    vp.prune(chunked, kept)
    vp.chunked_loss(chunked)
    return plain, chunked, ids, labels, kept


def test_same_loss_and_training_as_the_logits_path(pair):
    plain, chunked, ids, labels, _ = pair
    for model in (plain, chunked):
        model.train()
    # SGD: AdamW divides by each gradient's own scale and would magnify float-rounding noise.
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (plain, chunked)]
    for _ in range(2):
        losses, grads = [], []
        for model, opt in zip((plain, chunked), optimizers, strict=True):
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-5
        assert max((grads[0][k] - grads[1][k]).abs().max().item() for k in grads[0]) <= 1e-6
    got, want = dict(chunked.named_parameters()), dict(plain.named_parameters())
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5
    # The chunked path gives no logits: nothing [tokens x kept] was materialized.
    assert getattr(chunked(input_ids=ids, labels=labels), "logits", None) is None


def test_evaluation_and_generation_are_unchanged(pair):
    plain, chunked, ids, labels, kept = pair
    for model in (plain, chunked):
        model.eval()
    with torch.no_grad():
        a, b = plain(input_ids=ids, labels=labels), chunked(input_ids=ids, labels=labels)
        assert torch.equal(a.logits, b.logits) and a.logits.shape[-1] == V
        args = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(plain.generate(ids[:1], **args), chunked.generate(ids[:1], **args))
    vp.restore(chunked)
    assert "forward" not in chunked.__dict__
    assert chunked.get_input_embeddings().num_embeddings == V


def test_through_the_trainer(pair, tmp_path):
    from transformers import Trainer, TrainingArguments

    plain, chunked, ids, labels, _ = pair
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    models = []
    for name, model in (("plain", plain), ("chunked", chunked)):
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            max_steps=2,
            per_device_train_batch_size=3,
            learning_rate=1e-2,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=1,
        )
        Trainer(model=model, args=args, train_dataset=rows).train()
        vp.restore(model)
        models.append(model)
    got, want = models[1].state_dict(), models[0].state_dict()
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5


def test_refused_where_it_cannot_apply():
    from transformers import BertConfig, BertForMaskedLM

    model = AutoModelForCausalLM.from_config(_config("llama"))
    with pytest.raises(vp.VocabPruneError, match="prune it first"):
        vp.chunked_loss(model)
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    vp.prune(mlm, vp.KeptVocab.from_counts(np.ones(50, dtype=np.int64), model=mlm))
    with pytest.raises(vp.UnsupportedModelError, match="causal language models"):
        vp.chunked_loss(mlm)
