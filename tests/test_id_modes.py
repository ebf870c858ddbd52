"""Which ids a pruned model reads. ids='original' (the default): tokenizer ids, remapped inside the
model; ids='kept': ids remapped on the data side by RemapCollator / remap_dataset. Remapping
twice or never is an error, not a wrong row."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

import vocabprune as vp

datasets = pytest.importorskip("datasets")

TEXTS = ["shares in the bank fell sharply", "the match ended in a draw", "markets rose again"]


@pytest.fixture()
def setup(minilm_dir, minilm_tokenizer, bbc_texts):
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    kept = vp.build_kept_vocab(minilm_tokenizer, [*TEXTS, *bbc_texts["text"][:20]], model=model)
    rows = [dict(minilm_tokenizer(t)) for t in TEXTS]
    collate = DataCollatorWithPadding(minilm_tokenizer)
    with torch.no_grad():
        want = model(**collate(rows)).logits
    return model, kept, rows, collate, want


def test_the_default_reads_tokenizer_ids_and_refuses_the_data_side_remap(setup):
    model, kept, rows, collate, want = setup
    vp.prune(model, kept)
    with torch.no_grad():
        assert (model(**collate(rows)).logits - want).abs().max() <= 1e-6
    with pytest.raises(vp.VocabPruneError, match="would remap twice"):
        vp.RemapCollator(collate, model)
    dataset = datasets.Dataset.from_list(rows)
    with pytest.raises(vp.VocabPruneError, match="would remap twice"):
        vp.remap_dataset(dataset, model)
    with pytest.raises(vp.VocabPruneError, match="not a KeptVocab"):
        vp.RemapCollator(collate, kept)  # the pre-0.2 signature: refused, not guessed


def test_kept_ids_need_the_data_side_remap(setup):
    model, kept, rows, collate, want = setup
    vp.prune(model, kept, ids="kept")
    batch = collate(rows)
    assert int(batch["input_ids"].max()) >= kept.size  # this data does show it is not kept ids
    with pytest.raises(vp.UnknownTokenError, match="pruned with ids='kept'"):
        model(**batch)  # never remapped: refused
    with torch.no_grad():
        got = model(**vp.RemapCollator(collate, model)(rows)).logits
    assert (got - want).abs().max() <= 1e-6


def test_a_stored_remapped_dataset_is_only_read_through_remap_collator(setup, tmp_path):
    model, kept, rows, collate, want = setup
    vp.prune(model, kept, ids="kept")
    remapped = vp.remap_dataset(datasets.Dataset.from_list(rows), model)
    remapped.save_to_disk(str(tmp_path / "cache"))
    stored = datasets.load_from_disk(str(tmp_path / "cache"))
    # Through RemapCollator (which also remaps the pad ids the stock collator adds): right.
    with torch.no_grad():
        got = model(**vp.RemapCollator(collate, model)(list(stored))).logits
    assert (got - want).abs().max() <= 1e-6
    # Anywhere else: an error. The kept-ids model without RemapCollator...
    with pytest.raises(vp.UnknownTokenError, match="not a kept id"):
        model(**collate(list(stored)))
    vp.restore(model)
    # ...and a model that remaps itself (remapping twice).
    vp.prune(model, kept)
    with pytest.raises(vp.UnknownTokenError, match="written by remap_dataset"):
        model(**collate(list(stored)))
    vp.restore(model)
    # ...and the unpruned model.
    with pytest.raises(IndexError):
        model(**collate(list(stored)))


def test_labels_outside_the_kept_vocabulary_are_refused(minilm_dir, minilm_tokenizer):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(minilm_dir)
    kept = vp.build_kept_vocab(minilm_tokenizer, ["markets fell"], model=model)
    vp.prune(model, kept)
    batch = minilm_tokenizer(["markets fell"], return_tensors="pt")
    labels = minilm_tokenizer(["markets rose"], return_tensors="pt")["input_ids"]
    with pytest.raises(vp.UnknownTokenError, match="'rose'"):
        model(**batch, labels=labels)
    assert vp.is_pruned(model)
    model(**batch, labels=batch["input_ids"])  # kept labels: fine


def test_the_unknown_token_error_names_the_first_unknown_token_and_its_example(
    minilm_dir, minilm_tokenizer
):
    """A batch with unknown tokens names the first one in text order (not the lowest id) and
    the example it is in, so one bad text among many is found without a search."""
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    kept = vp.build_kept_vocab(minilm_tokenizer, ["the match ended in a draw"], model=model)
    vp.prune(model, kept)
    texts = ["the match ended", "the draw", "the zebra and the aardvark", "the piano"]
    batch = minilm_tokenizer(texts, padding=True, return_tensors="pt")
    zebra, aardvark = minilm_tokenizer.convert_tokens_to_ids(["zebra", "aardvark"])
    assert aardvark < zebra  # the lowest unknown id is not the first one in the text
    message = rf"token 'zebra' \(id {zebra}\) in example 2 of the batch, position 2, is not in"
    with pytest.raises(vp.UnknownTokenError, match=message):
        model(**batch)
    remapper = vp.IdRemapper(kept, tokenizer=minilm_tokenizer)  # ragged rows: the same rule
    rows = minilm_tokenizer(texts)["input_ids"]
    with pytest.raises(vp.UnknownTokenError, match=message):
        remapper(rows)
    with pytest.raises(vp.UnknownTokenError, match=r"'piano' \(id \d+\) at position 2 is"):
        remapper(rows[3])
