"""PEFT: LoRA on MiniLM's attention with a pruned embedding (frozen, or trainable through
modules_to_save); merging and restoring in either order gives the model that LoRA on the
unpruned model gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import vocabprune as vp

peft = pytest.importorskip("peft")

TEXTS = [
    "Shares rose sharply after the results.",
    "The match ended in a draw at Anfield.",
    "A new phone was released today.",
    "Election results were announced overnight.",
]
WORD = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def batch(minilm_tokenizer):
    enc = minilm_tokenizer(TEXTS, padding=True, return_tensors="pt")
    return enc, torch.tensor([0, 1, 2, 3])


def _model(minilm_dir):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=4)


def _lora(model, trainable_embedding: bool):
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        lora_dropout=0.0,
        modules_to_save=["word_embeddings"] if trainable_embedding else None,
    )
    torch.manual_seed(1)  # LoRA's A matrices
    return peft.get_peft_model(model, config)


def _train(model, batch, input_ids):
    enc, labels = batch
    torch.manual_seed(2)  # dropout
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    for _ in range(3):
        out = model(
            input_ids=input_ids,
            attention_mask=enc["attention_mask"],
            token_type_ids=enc["token_type_ids"],
            labels=labels,
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def original(minilm_dir):
    return _model(minilm_dir).state_dict()


@pytest.fixture(scope="module")
def references(minilm_dir, batch):
    """LoRA on the unpruned model, merged: frozen and trainable embedding."""
    refs = {}
    for trainable in (False, True):
        model = _lora(_model(minilm_dir), trainable)
        _train(model, batch, batch[0]["input_ids"])
        refs[trainable] = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    return refs


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen-emb", "trainable-emb"])
@pytest.mark.parametrize("order", ["merge-then-restore", "restore-then-merge"])
def test_lora_with_pruned_embedding_equals_lora(
    minilm_dir, minilm_tokenizer, batch, references, original, trainable, order
):
    enc, _ = batch
    model = _model(minilm_dir)
    counts = np.bincount(enc["input_ids"].ravel().numpy(), minlength=30522)
    kept = vp.KeptVocab.from_counts(counts, tokenizer=minilm_tokenizer, model=model)
    vp.prune(model, kept)
    lora = _lora(model, trainable)
    trainable_params = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    if trainable:
        assert trainable_params < 30522 * 384 // 10  # only the kept rows of the embedding copy
    _train(lora, batch, enc["input_ids"])  # tokenizer ids: the pruned embedding remaps them
    if order == "merge-then-restore":
        merged = lora.merge_and_unload()
        vp.restore(merged)
    else:
        vp.restore(lora)
        assert not vp.is_pruned(lora)
        merged = lora.merge_and_unload()
    assert not vp.is_pruned(merged)
    assert merged.get_input_embeddings().num_embeddings == 30522
    assert merged.config.vocab_size == 30522
    got, ref = merged.state_dict(), references[trainable]
    assert got.keys() == ref.keys()
    assert max((got[k] - ref[k]).abs().max().item() for k in ref) <= 1e-5
    # Restored, the merged model reads tokenizer ids with its full matrix again (no remap left,
    # not even in the trained copy PEFT made of the pruned embedding).
    reference = _model(minilm_dir)
    reference.load_state_dict(ref)
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, reference.eval()(**enc).logits)
    # The reference really trained what the test claims: LoRA moved attention weights, and the
    # embedding's used rows moved only when it was trainable.
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert (ref[q] - original[q]).abs().max() > 1e-4
    used = torch.as_tensor(kept.kept_ids[kept.counts > 0])
    moved = (ref[WORD][used] - original[WORD][used]).abs().max()
    assert (moved > 1e-4) if trainable else (moved == 0)


def test_restore_refuses_unknown_replacement(minilm_dir, minilm_tokenizer, batch):
    model = _model(minilm_dir)
    counts = np.bincount(batch[0]["input_ids"].ravel().numpy(), minlength=30522)
    vp.prune(model, vp.KeptVocab.from_counts(counts, tokenizer=minilm_tokenizer, model=model))
    model.bert.embeddings.word_embeddings = torch.nn.Embedding(10, 384)
    with pytest.raises(vp.VocabPruneError, match="cannot restore"):
        vp.restore(model)
