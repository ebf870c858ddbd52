"""Property tests: the kept vocabulary's maps, its JSON form, remapping, and prune/restore."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import build
from torch import nn

import vocabprune
from vocabprune import (
    IdRemapper,
    KeptVocab,
    MismatchError,
    UnknownTokenError,
    VocabPruneError,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- strategies ----------------------------------------------------------------------------------


@st.composite
def kept_vocabs(draw, max_vocab: int = 300, with_unk: bool = False) -> KeptVocab:
    vocab = draw(st.integers(1, max_vocab))
    ids = sorted(draw(st.sets(st.integers(0, vocab - 1), min_size=1, max_size=vocab)))
    counts = draw(st.lists(st.integers(0, 2**40), min_size=len(ids), max_size=len(ids)))
    forced = draw(st.lists(st.sampled_from(ids), max_size=5, unique=True))
    unk = draw(st.sampled_from(ids)) if with_unk else draw(st.none() | st.sampled_from(ids))
    fingerprint = draw(st.none() | st.text("0123456789abcdef", min_size=16, max_size=16))
    shape = draw(st.none() | st.integers(1, 64).map(lambda d: (vocab, d)))
    meta = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.integers(-(2**31), 2**31) | st.text(max_size=8) | st.booleans(),
            max_size=3,
        )
    )
    return KeptVocab(
        kept_ids=np.asarray(ids, dtype=np.int64),
        counts=np.asarray(counts, dtype=np.int64),
        vocab_size=vocab,
        forced_ids=tuple(sorted(forced)),
        tokenizer_fingerprint=fingerprint,
        embedding_shape=shape,
        unk_id=unk,
        meta=meta,
    )


# -- the maps ------------------------------------------------------------------------------------


@FAST
@given(kept_vocabs())
def test_maps_are_inverse_monotone_and_minus_one_on_dropped(kept):
    old_to_new, new_to_old = kept.old_to_new, kept.new_to_old
    assert old_to_new.shape == (kept.vocab_size,)
    assert new_to_old.shape == (kept.size,)
    assert len(kept) == kept.size == len(set(new_to_old.tolist()))
    # new -> old -> new is the identity on every new id, old -> new -> old on every kept id.
    assert np.array_equal(old_to_new[new_to_old], np.arange(kept.size))
    kept_mask = np.zeros(kept.vocab_size, dtype=bool)
    kept_mask[new_to_old] = True
    assert np.array_equal(new_to_old[old_to_new[kept_mask]], np.flatnonzero(kept_mask))
    # -1 exactly on dropped ids, a valid new id everywhere else.
    assert np.array_equal(old_to_new < 0, ~kept_mask)
    assert np.all(old_to_new[~kept_mask] == -1)
    assert np.all((old_to_new[kept_mask] >= 0) & (old_to_new[kept_mask] < kept.size))
    # Order preserved: strictly increasing both ways.
    assert np.all(np.diff(new_to_old) > 0)
    assert np.all(np.diff(old_to_new[kept_mask]) > 0)
    for old in range(kept.vocab_size):
        assert (old in kept) == kept_mask[old]
        if kept_mask[old]:
            assert kept.new_id(old) == old_to_new[old]
        else:
            with pytest.raises(KeyError):
                kept.new_id(old)
    assert kept.vocab_size not in kept and -1 not in kept


@FAST
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=200),
    st.integers(1, 4),
    st.lists(st.integers(0, 199), max_size=6),
)
def test_from_counts_keeps_counted_and_forced_ids(counts, min_count, extra):
    counts_arr = np.asarray(counts, dtype=np.int64)
    extra = [i for i in extra if i < counts_arr.size]
    want = set(np.flatnonzero(counts_arr >= min_count).tolist()) | set(extra)
    if not want:
        with pytest.raises(VocabPruneError):
            KeptVocab.from_counts(counts_arr, min_count=min_count, extra_ids=extra)
        return
    kept = KeptVocab.from_counts(counts_arr, min_count=min_count, extra_ids=extra)
    assert kept.vocab_size == counts_arr.size
    assert kept.kept_ids.tolist() == sorted(want)
    assert np.array_equal(kept.counts, counts_arr[kept.kept_ids])
    assert kept.forced_ids == tuple(sorted(set(extra)))
    # A larger vocabulary pads the counts with zeros; a smaller one drops only zero counts.
    bigger = KeptVocab.from_counts(
        counts_arr, min_count=min_count, extra_ids=extra, vocab_size=counts_arr.size + 7
    )
    assert bigger.vocab_size == counts_arr.size + 7
    assert np.array_equal(bigger.kept_ids, kept.kept_ids)
    last = int(max(want))
    if last + 1 < counts_arr.size and not counts_arr[last + 1 :].any():
        smaller = KeptVocab.from_counts(
            counts_arr, min_count=min_count, extra_ids=extra, vocab_size=last + 1
        )
        assert np.array_equal(smaller.kept_ids, kept.kept_ids)
    if counts_arr[-1] > 0 and counts_arr.size > 1:
        with pytest.raises(VocabPruneError):
            KeptVocab.from_counts(counts_arr, vocab_size=counts_arr.size - 1)


@FAST
@given(st.integers(2, 50), st.data())
def test_bad_kept_ids_are_refused(vocab, data):
    ids = data.draw(st.lists(st.integers(0, vocab - 1), min_size=2, max_size=10))
    if all(b > a for a, b in zip(ids, ids[1:], strict=False)):
        ids = ids[::-1]  # make it unsorted (or a duplicate when equal)
    with pytest.raises(VocabPruneError):
        KeptVocab(kept_ids=np.asarray(ids), counts=np.zeros(len(ids)), vocab_size=vocab)
    with pytest.raises(VocabPruneError):
        KeptVocab(kept_ids=np.asarray([0, vocab]), counts=np.zeros(2), vocab_size=vocab)
    with pytest.raises(VocabPruneError):
        KeptVocab(kept_ids=np.asarray([-1, 0]), counts=np.zeros(2), vocab_size=vocab)
    with pytest.raises(VocabPruneError):
        KeptVocab(kept_ids=np.asarray([], dtype=np.int64), counts=np.zeros(0), vocab_size=vocab)


# -- JSON ----------------------------------------------------------------------------------------


@FAST
@given(kept_vocabs())
def test_json_round_trip(kept):
    text = json.dumps(kept.to_dict())
    back = KeptVocab.from_dict(json.loads(text))
    assert back == kept
    assert back.to_dict() == kept.to_dict()  # unk_id and meta too, which == ignores
    assert np.array_equal(back.old_to_new, kept.old_to_new)
    with tempfile.TemporaryDirectory() as tmp:
        as_file = kept.save(Path(tmp) / "kv.json")
        as_folder = kept.save(tmp)
        assert as_folder == Path(tmp) / "kept_vocab.json"
        for loaded in (KeptVocab.load(as_file), KeptVocab.load(tmp)):
            assert loaded == kept
            assert loaded.to_dict() == kept.to_dict()


@FAST
@given(kept_vocabs(), kept_vocabs())
def test_equality_sees_the_difference(a, b):
    same = a.to_dict() == b.to_dict()
    if same:
        assert a == b
    differs_in_compared = (
        a.vocab_size != b.vocab_size
        or a.kept_ids.tolist() != b.kept_ids.tolist()
        or a.counts.tolist() != b.counts.tolist()
        or a.forced_ids != b.forced_ids
        or a.tokenizer_fingerprint != b.tokenizer_fingerprint
        or a.embedding_shape != b.embedding_shape
    )
    assert (a == b) == (not differs_in_compared)


# -- remapping -----------------------------------------------------------------------------------


@FAST
@given(kept_vocabs(), st.data())
def test_remap_round_trip_on_kept_ids(kept, data):
    remapper = IdRemapper(kept)
    kept_list = kept.kept_ids.tolist()
    rows = data.draw(
        st.lists(
            st.lists(st.sampled_from(kept_list) | st.just(-100), max_size=8),
            min_size=1,
            max_size=4,
        )
    )
    # Ragged python lists, row by row.
    new_rows = remapper.to_new(rows)
    assert [len(r) for r in new_rows] == [len(r) for r in rows]
    for old_row, new_row in zip(rows, new_rows, strict=True):
        for old, new in zip(old_row, new_row, strict=True):
            assert new == (-100 if old == -100 else kept.new_id(old))
        assert remapper.to_old(new_row) == old_row
    # Rectangular tensors and arrays keep their type and dtype.
    width = max(len(r) for r in rows)
    flat = [r + [-100] * (width - len(r)) for r in rows]
    for dtype in (torch.int64, torch.int32):
        tensor = torch.tensor(flat, dtype=dtype)
        new = remapper.to_new(tensor)
        assert isinstance(new, torch.Tensor) and new.dtype == dtype and new.shape == tensor.shape
        assert bool(((new >= 0) & (new < kept.size) | (new == -100)).all())
        assert torch.equal(remapper.to_old(new), tensor)
    array = np.asarray(flat, dtype=np.int64).reshape(len(flat), width)
    new_array = remapper.to_new(array)
    assert isinstance(new_array, np.ndarray)
    assert np.array_equal(remapper.to_old(new_array), array)
    one = kept_list[len(kept_list) // 2]
    assert remapper.to_new(one) == kept.new_id(one)
    assert remapper(np.int64(one)) == kept.new_id(one)


@FAST
@given(kept_vocabs(with_unk=True), st.data())
def test_unknown_ids_raise_or_become_unk(kept, data):
    dropped = np.flatnonzero(kept.old_to_new < 0).tolist()
    strict = IdRemapper(kept)
    lenient = IdRemapper(kept, unknown="unk")
    unk_new = kept.new_id(kept.unk_id)
    kept_list = kept.kept_ids.tolist()
    if dropped:
        bad = data.draw(st.sampled_from(dropped))
        good = data.draw(st.lists(st.sampled_from(kept_list), max_size=5))
        ids = good + [bad] + good[::-1]
        with pytest.raises(UnknownTokenError, match=str(bad)):
            strict.to_new(ids)
        with pytest.raises(UnknownTokenError):
            strict.to_new(torch.tensor([ids]))
        out = lenient.to_new(ids)
        assert out[len(good)] == unk_new
        assert out[: len(good)] == [kept.new_id(i) for i in good]
        assert lenient.to_new(-100) == -100
    # Ids past the vocabulary are an error under both policies.
    for remapper in (strict, lenient):
        with pytest.raises(UnknownTokenError):
            remapper.to_new([kept.vocab_size])
    with pytest.raises(VocabPruneError):
        strict.to_old([kept.size])


def test_unk_policy_needs_a_kept_unk():
    kept = KeptVocab(kept_ids=np.array([0, 2]), counts=np.array([1, 1]), vocab_size=4)
    with pytest.raises(VocabPruneError):
        IdRemapper(kept, unknown="unk")
    with_unk = KeptVocab(kept_ids=np.array([0, 2]), counts=np.array([1, 1]), vocab_size=4, unk_id=2)
    assert IdRemapper(with_unk, unknown="unk").to_new([0, 1, 3, 2]) == [0, 1, 1, 1]


# -- prune then restore: the identity --------------------------------------------------------


class TinyLM(nn.Module):
    """The least prune needs: get_input_embeddings / get_output_embeddings and a config."""

    def __init__(self, vocab: int, dim: int, pad: int | None, tied: bool, bias: bool, dtype):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab, pad_token_id=pad, eos_token_id=None)
        self.embed = nn.Embedding(vocab, dim, padding_idx=pad, dtype=dtype)
        self.mix = nn.Linear(dim, dim, dtype=dtype)
        self.head = nn.Linear(dim, vocab, bias=bias, dtype=dtype)
        if tied:
            self.head.weight = self.embed.weight
        with torch.no_grad():  # values that differ in the low bits of every dtype
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, dtype=torch.float64).to(dtype))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    items = list(model.named_parameters(remove_duplicate=False))
    items += list(model.named_buffers(remove_duplicate=False))
    return {name: t.detach().clone() for name, t in items}


def _assert_bitwise(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        # Bitwise, NaN payloads and signed zeros included.
        assert torch.equal(got[name].view(torch.uint8), w.view(torch.uint8)), name


DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


@SLOW
@given(
    st.integers(2, 120),
    st.integers(1, 8),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    DTYPES,
    st.sampled_from(["auto", "prune", "keep"]),
    st.sampled_from(["original", "kept"]),
    st.data(),
)
def test_prune_restore_identity_on_a_minimal_model(
    vocab, dim, has_pad, tied, bias, dtype, out, ids_mode, data
):
    if tied and out == "keep":
        out = "auto"  # inputs-only pruning refuses a tied head (tested elsewhere)
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    pad = data.draw(st.integers(0, vocab - 1)) if has_pad else None
    model = TinyLM(vocab, dim, pad, tied, bias, dtype)
    ids = set(data.draw(st.sets(st.integers(0, vocab - 1), min_size=1)))
    if pad is not None:
        ids.add(pad)
    kept = KeptVocab(kept_ids=np.asarray(sorted(ids)), counts=np.ones(len(ids)), vocab_size=vocab)
    before = _state(model)
    probe = torch.as_tensor(kept.kept_ids[:5])
    with torch.no_grad():
        full_out = model(probe)

    vocabprune.prune(model, kept, output=out, ids=ids_mode)
    index = torch.as_tensor(kept.kept_ids)
    assert torch.equal(model.embed.weight.detach(), before["embed.weight"][index])
    assert model.embed.num_embeddings == kept.size
    assert model.embed.padding_idx == (None if pad is None else kept.new_id(pad))
    config_pad = pad if ids_mode == "original" or pad is None else kept.new_id(pad)
    assert model.config.pad_token_id == config_pad
    assert (model.head.weight is model.embed.weight) == tied
    fed = probe if ids_mode == "original" else torch.as_tensor(IdRemapper(kept).to_new(probe))
    with torch.no_grad():
        small_out = model(fed)  # a bare tensor out: the kept columns (no logits to spread)
    if out == "keep":
        assert model.config.vocab_size == vocab
        assert model.head.weight.shape[0] == vocab
        torch.testing.assert_close(small_out, full_out, rtol=0, atol=0)  # same matmul
    elif vocabprune.get_state(model).frozen_head:  # the default with original ids
        assert (out, ids_mode) == ("auto", "original")
        assert model.config.vocab_size == vocab
        assert torch.equal(model.head.weight.detach(), before["head.weight"][index])
        # every column: the frozen rows score (kept and frozen columns are two matmuls, each
        # with its bias: in float16 the sums round differently from the one full matmul's)
        tol = {"rtol": 2e-2, "atol": 1e-3} if dtype in (torch.float16, torch.bfloat16) else {}
        torch.testing.assert_close(small_out, full_out, **tol)
    else:
        assert model.config.vocab_size == kept.size
        assert torch.equal(model.head.weight.detach(), before["head.weight"][index])
        # Fewer output rows may pick another matmul kernel: equal up to rounding.
        torch.testing.assert_close(small_out, full_out[:, index])
    # A state_dict taken while pruned is the full, original one.
    _assert_bitwise(
        {k: v for k, v in model.state_dict(keep_vars=False).items()},
        {k: v for k, v in before.items() if k in model.state_dict()},
    )

    vocabprune.restore(model)
    _assert_bitwise(_state(model), before)
    assert (model.head.weight is model.embed.weight) == tied
    assert model.embed.num_embeddings == vocab == model.head.out_features
    assert model.embed.padding_idx == pad and model.config.pad_token_id == pad
    assert model.config.vocab_size == vocab


def test_pad_outside_the_kept_set_is_refused_and_changes_nothing():
    model = TinyLM(10, 4, pad=3, tied=True, bias=True, dtype=torch.float32)
    before = _state(model)
    kept = KeptVocab(kept_ids=np.array([0, 1, 5]), counts=np.ones(3), vocab_size=10)
    with pytest.raises(MismatchError, match="3"):
        vocabprune.prune(model, kept)
    assert not vocabprune.is_pruned(model)
    _assert_bitwise(_state(model), before)
    assert model.embed.num_embeddings == 10 and model.config.vocab_size == 10


# A tiny BERT masked LM (tied decoder), built once per dtype and reused by every example.
_BERTS: dict[torch.dtype, tuple] = {}


def _bert(dtype: torch.dtype):
    if dtype not in _BERTS:
        tiny = build("bert", "mlm", seed=3)
        tiny.model.to(dtype)
        _BERTS[dtype] = (tiny, _state(tiny.model))
    return _BERTS[dtype]


@SLOW
@given(DTYPES, st.data())
def test_prune_restore_identity_on_tiny_bert(dtype, data):
    tiny, before = _bert(dtype)
    model = tiny.model
    vocab = tiny.spec.vocab_size
    counted = data.draw(st.sets(st.integers(0, vocab - 1), max_size=vocab))
    counts = np.zeros(vocab, dtype=np.int64)
    counts[sorted(counted)] = 1
    kept = KeptVocab.from_counts(counts, model=model, extra_ids=tiny.special_ids)
    assert 0 in kept  # the config's pad id is always kept
    state = vocabprune.prune(model, kept)
    try:
        assert model.get_input_embeddings().weight.dtype == dtype
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        full_sd = model.state_dict()
        for name, tensor in full_sd.items():
            assert torch.equal(tensor, before[name]), name
    finally:
        if vocabprune.get_state(model) is state:
            vocabprune.restore(model)
    _assert_bitwise(_state(model), before)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.vocab_size == vocab and model.config.pad_token_id == 0
