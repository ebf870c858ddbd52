"""The chunked training loss of a pruned causal LM (vp.chunked_loss: a tiled cross-entropy over the
kept columns): the same loss and gradients as the logits path, through a plain loop and the
Trainer, with several tiles per batch; the tiled kernel against autograd (gradcheck) and against
cross_entropy (property test); generation and evaluation unchanged; restore takes it off; heads
it cannot tile are refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    LlamaConfig,
    Qwen3Config,
)

import vocabprune as vp
from vocabprune.train.tiled_ce import tiled_cross_entropy

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
    if name == "gemma2":  # soft-capped logits
        return Gemma2Config(**common, head_dim=8, final_logit_softcapping=3.0)
    return GemmaConfig(**{**common, "num_key_value_heads": 1}, head_dim=8)


@pytest.fixture(params=["llama", "llama-untied", "qwen3", "gemma", "gemma2"])
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
    vp.prune(plain, kept, output="prune")
    vp.prune(chunked, kept, output="prune")
    vp.chunked_loss(chunked, tile_tokens=16)  # 3 x 39 positions: 8 tiles, the last one short
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


def test_through_the_trainer(pair, tmp_path, tiled_calls):
    from transformers import Trainer, TrainingArguments

    plain, chunked, ids, labels, _ = pair
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    models = []
    for name, model in (("plain", plain), ("chunked", chunked)):
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            max_steps=2,
            per_device_train_batch_size=3,
            learning_rate=0.5,
            optim="sgd",  # AdamW would magnify the float-rounding noise (see above)
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=1,
        )
        Trainer(model=model, args=args, train_dataset=rows).train()
        vp.restore(model)
        models.append(model)
    assert len(tiled_calls) == 2  # both training steps took the tiled loss
    got, want = models[1].state_dict(), models[0].state_dict()
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5


def test_under_bf16_autocast(pair):
    plain, chunked, ids, labels, _ = pair
    losses = []
    for model in (plain, chunked):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        losses.append(loss.item())
        assert all(p.grad is not None and p.grad.dtype == p.dtype for p in model.parameters())
    assert abs(losses[0] - losses[1]) <= 2e-2 * abs(losses[0])


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


def _reference_nll(hidden, weight, bias, targets, scale, softcap):
    z = hidden @ weight.t() + (0 if bias is None else bias)
    z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return torch.nn.functional.cross_entropy(z.float(), targets, reduction="none")


@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("bias", [False, True])
def test_tiled_kernel_against_autograd(softcap, bias):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, 7, (11,), generator=g)
    targets[[0, 5]] = -100

    def tiled(h, w, *rest):
        return tiled_cross_entropy(
            h, w, rest[0] if rest else None, targets, tile=3, scale=0.7, softcap=softcap
        ).double()

    inputs = (hidden, weight, b) if bias else (hidden, weight)
    # float32 logits inside: compare with a tolerance fitting them, then exactly the reference
    assert torch.autograd.gradcheck(tiled, inputs, eps=1e-3, atol=1e-3, rtol=1e-3)
    got = tiled(*inputs)
    want = _reference_nll(hidden, weight, b, targets, 0.7, softcap).masked_fill(targets < 0, 0)
    assert torch.allclose(got, want.double(), atol=1e-5)
    assert got[0] == 0 and got[5] == 0


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 40),
    columns=st.integers(2, 30),
    tile=st.integers(1, 50),
    ignored=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_tiled_kernel_equals_cross_entropy(tokens, columns, tile, ignored, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 6, generator=g)
    weight = torch.randn(columns, 6, generator=g)
    targets = torch.randint(0, columns, (tokens,), generator=g)
    targets[torch.rand(tokens, generator=g) < ignored] = -100
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = tiled_cross_entropy(h1, w1, None, targets, tile=tile).sum()
    want = _reference_nll(h2, w2, None, targets, 1.0, None).sum()  # ignored tokens give 0
    got.backward()
    want.backward()
    assert abs(got.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item()))
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("upstream", ["mean", "one", None])
@pytest.mark.parametrize("reduction", ["mean", "sum_times_3", "weighted"])
def test_gradients_from_the_forward_pass_or_recomputed(frozen, upstream, reduction):
    # `upstream` says which gradient each token is assumed to get; the gradients computed in
    # the forward pass are used (scaled) when the reduction gives every token one value, and
    # recomputed otherwise: both equal autograd's through the whole logits, in float64.
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(13, 5, dtype=torch.float64, generator=g)
    weight = torch.randn(6, 5, dtype=torch.float64, generator=g)
    rest = torch.randn(4, 5, dtype=torch.float64, generator=g) if frozen else None
    columns = 10 if frozen else 6
    targets = torch.randint(0, columns, (13,), generator=g)
    targets[[2, 7]] = -100
    count = int((targets != -100).sum())
    assumed = {"mean": 1.0 / count, "one": 1.0, None: None}[upstream]
    weights = torch.rand(13, dtype=torch.float64, generator=g)

    def reduce(nll):
        if reduction == "mean":
            return nll.sum() / count
        return nll.sum() * 3 if reduction == "sum_times_3" else (nll * weights).sum()

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    nll = tiled_cross_entropy(h1, w1, None, targets, tile=4, frozen=rest, upstream=assumed)
    reduce(nll).backward()
    full = w2 if rest is None else torch.cat([w2, rest])
    want = torch.nn.functional.cross_entropy(h2 @ full.t(), targets, reduction="none")
    reduce(want).backward()
    assert torch.allclose(nll, want, rtol=0, atol=1e-12)
    assert torch.allclose(h1.grad, h2.grad, rtol=0, atol=1e-12)
    assert torch.allclose(w1.grad, w2.grad, rtol=0, atol=1e-12)


def test_heads_it_cannot_tile_are_refused():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_config("llama"))
    kept = vp.KeptVocab.from_counts(np.ones(V, dtype=np.int64), model=base)
    scaled = copy.deepcopy(base)
    scaled.config.logit_scale = 2.0  # read as a head scale, but Llama's forward does not apply it
    vp.prune(scaled, kept)
    with pytest.raises(vp.UnsupportedModelError, match="computes its logits other than"):
        vp.chunked_loss(scaled)
    assert "forward" not in scaled.__dict__
    wrapped = copy.deepcopy(base)
    vp.prune(wrapped, kept)
    wrapped.lm_head = torch.nn.Sequential(wrapped.lm_head)
    with pytest.raises(vp.UnsupportedModelError, match="needs an nn.Linear head"):
        vp.chunked_loss(wrapped)
    plain = copy.deepcopy(base)
    vp.prune(plain, kept)
    for bad in (0, -3, True):
        with pytest.raises(vp.VocabPruneError, match="tile_tokens must be >= 1"):
            vp.chunked_loss(plain, tile_tokens=bad)
