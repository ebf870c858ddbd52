"""Counting long texts with memory bounded by a piece of them (data/scan.py LongTexts): the same
ids as tokenizing them whole, and with a max length only a prefix is ever tokenized."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vocabprune.data.scan as scan_mod
from vocabprune.data.scan import LongTexts, count_texts

WORDS = ["markets", "fell", "sharply", "the", "match", "ended", "in", "a", "draw", "naïve", "x"]
WORDS += ["2024", "don't", "e-mail", "über", "東京", "!!", "co-operate", "\u00e9t\u00e9"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", ", ", ". "]


@st.composite
def long_texts(draw):
    n = draw(st.integers(60, 400))
    parts = []
    for _ in range(n):
        parts.append(draw(st.sampled_from(WORDS)))
        parts.append(draw(st.sampled_from(SEPARATORS)))
    if draw(st.booleans()):
        parts.append("z" * draw(st.integers(1, 900)))  # a run with no space at all
    return "".join(parts)


def _reference(tokenizer, text: str, max_length: int | None) -> np.ndarray:
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    ids = tokenizer([text], **kwargs)["input_ids"][0]
    return np.bincount(ids, minlength=len(tokenizer))


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(scan_mod, "LONG_TEXT", 256)  # pieces of about 256 characters
    monkeypatch.setattr(scan_mod, "SAMPLE_CHARS", 64)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(text=long_texts(), max_length=st.sampled_from([None, 8, 40]), left=st.booleans())
def test_long_texts_give_the_ids_of_the_whole_text(minilm_tokenizer, text, max_length, left):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "LONG_TEXT", 256)
        mp.setattr(scan_mod, "SAMPLE_CHARS", 64)
        mp.setattr(minilm_tokenizer, "truncation_side", "left" if left else "right")
        if max_length is None and "z" * 257 in text:
            return  # a run of 256+ characters with no space is cut inside (documented)
        want = _reference(minilm_tokenizer, text, max_length)
        got = count_texts(minilm_tokenizer, [text, "short"], max_length=max_length)
        got -= _reference(minilm_tokenizer, "short", max_length)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("which", ["smollm2", "e5"])
def test_byte_level_bpe_and_unigram_give_the_same_ids(which, small_pieces, request):
    from transformers import AutoTokenizer

    if which == "smollm2":
        folder = request.getfixturevalue("smollm2_dir")
    else:
        from vocabprune.fixtures import e5_path

        folder = e5_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(WORDS, 3000))
    for max_length in (None, 16, 100):
        want = _reference(tokenizer, text, max_length)
        got = count_texts(tokenizer, [text], max_length=max_length, vocab_size=len(tokenizer))
        assert np.array_equal(got, want), max_length


class _Spy:
    """A tokenizer backend that records the length of every text it encodes."""

    def __init__(self, inner, seen):
        self.inner, self.seen = inner, seen

    def encode(self, text, **kwargs):
        self.seen.append(len(text))
        return self.inner.encode(text, **kwargs)


def test_with_a_max_length_only_a_prefix_is_tokenized(minilm_tokenizer):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(minilm_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(64)
    counter = LongTexts(backend)
    seen: list[int] = []
    counter.free, counter.backend = _Spy(counter.free, seen), _Spy(counter.backend, seen)
    text = "markets fell sharply " * 500_000  # 10.5 million characters
    ids = counter.ids(text)
    assert ids.size == 64 and max(seen) <= 4096 * 4
    assert np.array_equal(ids, backend.encode(text[:20_000]).ids)


def test_an_untruncated_long_text_is_counted_one_piece_at_a_time(minilm_tokenizer):
    # ~1M ids: held whole (an int64 array, then concatenated) they take 8-16 MB; counted piece
    # by piece, numpy holds one piece's ids (~0.2 MB) and the counts (and ~3 MB of tokenizer
    # copies).
    import tracemalloc

    text = " ".join(WORDS * (600_000 // len(WORDS)))[: 3 * 2**20]
    whole = _free(minilm_tokenizer).encode(text, add_special_tokens=True).ids
    want = np.bincount(whole, minlength=len(minilm_tokenizer))
    tracemalloc.start()
    try:
        got = count_texts(minilm_tokenizer, [text], progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, want)
    assert int(want.sum()) > 600_000
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def _free(tokenizer):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend
