"""Scanning at scale: the backend fast path, num_proc and streaming datasets give exactly the
counts of the single-process wrapper scan."""

from __future__ import annotations

import numpy as np
import pytest

import vocabprune as vp
from vocabprune.data.scan import _backend_encoder, count_texts


def _reference(tokenizer, texts, pairs=None, max_length=None):
    """The plain definition: the tokenizer wrapper's ids, counted one by one."""
    kwargs = {"add_special_tokens": True}
    if max_length:
        kwargs.update(truncation=True, max_length=max_length)
    args = (texts,) if pairs is None else (texts, pairs)
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for row in tokenizer(*args, **kwargs)["input_ids"]:
        for i in row:
            counts[i] += 1
    return counts


@pytest.fixture(scope="module")
def sample(bbc_texts):
    texts = list(bbc_texts["text"][:150])
    return texts + ["", "  ", "naïve café £5 🙂", "[CLS] [SEP] [MASK] literal specials"]


@pytest.mark.parametrize("max_length", [None, 16, 128])
def test_fast_path_equals_wrapper(minilm_tokenizer, sample, max_length):
    ref = _reference(minilm_tokenizer, sample, max_length=max_length)
    got = count_texts(minilm_tokenizer, sample, max_length=max_length, batch_size=64)
    assert np.array_equal(got, ref)
    kwargs = {"add_special_tokens": True}
    kwargs.update({"truncation": True, "max_length": max_length} if max_length else {})
    assert _backend_encoder(minilm_tokenizer, sample, None, max_length, kwargs) is not None
    assert got.sum() > len(sample) * 2


def test_fast_path_equals_wrapper_for_pairs(minilm_tokenizer, sample):
    # Short texts: "longest_first" pair truncation of whole articles is slow in the tokenizer.
    texts = [t[:300] for t in sample]
    pairs = texts[::-1]
    ref = _reference(minilm_tokenizer, texts, pairs=pairs, max_length=40)
    got = count_texts(minilm_tokenizer, texts, pairs=pairs, max_length=40, batch_size=50)
    assert np.array_equal(got, ref)


def test_truncation_side_left_is_followed(minilm_dir, sample):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir, truncation_side="left")
    ref = _reference(tok, sample, max_length=12)
    assert np.array_equal(count_texts(tok, sample, max_length=12, batch_size=100), ref)


def test_num_proc_equals_single_process(minilm_tokenizer, sample):
    single = count_texts(minilm_tokenizer, sample, max_length=64, batch_size=40)
    multi = count_texts(minilm_tokenizer, sample, max_length=64, batch_size=40, num_proc=2)
    assert np.array_equal(single, multi) and single.sum() > 0


def test_streaming_and_num_proc_datasets_equal_list_scan(minilm_tokenizer, sample):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": sample, "label": [0] * len(sample)})
    ref = vp.scan(minilm_tokenizer, sample, max_length=32).counts
    streamed = vp.scan(minilm_tokenizer, ds.to_iterable_dataset(), max_length=32, batch_size=37)
    assert np.array_equal(streamed.counts, ref)
    assert streamed.num_examples == len(sample)
    parallel = vp.scan(minilm_tokenizer, ds, max_length=32, batch_size=20, num_proc=2)
    assert np.array_equal(parallel.counts, ref)
    # Already tokenized ids, streamed.
    tokenized = ds.map(lambda b: minilm_tokenizer(b["text"], truncation=True, max_length=32))
    ids_stream = tokenized.remove_columns(["text", "label"]).to_iterable_dataset()
    assert np.array_equal(vp.scan(minilm_tokenizer, ids_stream).counts, ref)


def test_build_kept_vocab_num_proc(minilm_tokenizer, sample):
    a = vp.build_kept_vocab(minilm_tokenizer, sample, max_length=64)
    b = vp.build_kept_vocab(minilm_tokenizer, sample, max_length=64, num_proc=2)
    assert np.array_equal(a.kept_ids, b.kept_ids) and np.array_equal(a.counts, b.counts)
