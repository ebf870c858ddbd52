"""The paths that depend on where the model lives, run on the test device (conftest `device`: the
CPU by default, CUDA with VOCABPRUNE_TEST_DEVICE=cuda or `pytest --device cuda`).

- pruned training + restore against unpruned training on the device: fp32 within 1e-5, bf16
  autocast within BF16_ATOL (one bfloat16 step at the weights' magnitude);
- the in-model id lookup and label remap: logits at the kept columns and the model's own loss
  equal to the unpruned model's over the kept columns;
- restore with the dropped rows offloaded from the device (CPU RAM from an accelerator, a
  temporary file from the CPU), bitwise;
- load_pruned with a one-device device_map;
- the tiled cross-entropy and chunked_loss against the plain loss, fp32 and bf16 autocast;
- stock generate() of a pruned model equal to the unpruned model's;
- the frozen head (output="frozen"), with and without tiling: loss and gradients equal to the
  unpruned model's.

Everything here is tiny (config-built models) and runs in seconds on either device.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_lm_heads import LM, batch_for, random_kept
from test_lm_heads import build as build_lm
from tiny_models import build as build_encoder
from transformers import AutoModelForCausalLM

import vocabprune as vp
from vocabprune import KeptVocab, UnsupportedModelError
from vocabprune.core.rowstore import MemoryRows, TempFileRows
from vocabprune.train.tiled_ce import tiled_cross_entropy

pytestmark = pytest.mark.device

FP32_ATOL = 1e-5
# bf16 autocast: the matmuls round to bfloat16 (8 bits of mantissa); pruned and unpruned runs do
# the same arithmetic on the same rows, so they agree far closer than this, but kernels may pick
# another reduction order for another matrix size.
BF16_ATOL = 2e-3
PRECISIONS = ("fp32", "bf16")


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _train(model, batches, device, precision: str) -> list[float]:
    """A few AdamW steps (weight decay 0, dropout off) on the model's own loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for batch in batches:
        with _autocast(device, precision):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu() for n, p in model.named_parameters()}


def _assert_close(got: dict, want: dict, atol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        diff = (got[name] - want[name]).abs().max().item() if want[name].numel() else 0.0
        assert diff <= atol, f"{name}: {diff:.3g} > {atol}"


# -- training on the device equals unpruned training ------------------------------------------


def _encoder_case(device):
    tiny = build_encoder("bert", "cls", seed=3)
    rng = np.random.default_rng(4)
    text = rng.choice(tiny.text_ids, size=60, replace=False)
    counts = np.zeros(tiny.spec.vocab_size, dtype=np.int64)
    counts[text] = 1
    kept = KeptVocab.from_counts(counts, model=tiny.model, extra_ids=tiny.special_ids)
    batches = []
    for step in range(3):
        ids = torch.as_tensor(rng.choice(text, size=(4, 10)))
        ids[:, 0], ids[:, -1] = tiny.spec.specials["cls"], tiny.spec.specials["sep"]
        labels = torch.as_tensor(rng.integers(0, 3, size=4)) + 0 * step
        batches.append(_on({"input_ids": ids, "labels": labels}, device))
    return tiny.model, kept, batches, {}


def _lm_case(name: str, device):
    lm = build_lm(name, seed=5)
    kept = random_kept(lm, 6)
    batches = [_on(batch_for(lm, kept, 7 + i), device) for i in range(3)]
    return lm.model, kept, batches, {"output": "keep"}


CASES = {
    "bert-classifier": _encoder_case,  # inputs only: the classifier head has no vocabulary
    "llama-untied-keep": lambda d: _lm_case("llama-untied", d),  # untied head kept full
    "mt5-untied-keep": lambda d: _lm_case("mt5-untied", d),  # encoder-decoder, head kept full
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_training_and_restore_equal_unpruned(case, precision, device):
    model, kept, batches, options = CASES[case](device)
    model = model.to(device).eval()  # eval: no dropout, so both runs do the same arithmetic
    twin = copy.deepcopy(model)
    want_losses = _train(twin, batches, device, precision)
    vp.prune(model, kept, **options)
    assert model.get_input_embeddings().weight.device.type == device.type
    got_losses = _train(model, batches, device, precision)
    vp.restore(model)
    atol = FP32_ATOL if precision == "fp32" else BF16_ATOL
    np.testing.assert_allclose(got_losses, want_losses, atol=atol, rtol=0)
    _assert_close(_params(model), _params(twin), atol)
    assert model.get_input_embeddings().weight.device.type == device.type


# -- the id lookup and the label remap ---------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gemma3", "t5", "bert-mlm"])
def test_lookup_and_label_remap_on_device(name, device):
    lm: LM = build_lm(name, seed=11)
    model = lm.model.to(device)
    kept = random_kept(lm, 12)
    batch = _on(batch_for(lm, kept, 13), device)
    columns = torch.as_tensor(kept.kept_ids, device=device)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if lm.kind == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
            labels=batch["labels"]
        )
    with torch.no_grad():
        full = model(**inputs).logits
    vp.prune(model, kept, output="prune")  # the restricted head: labels remapped
    with torch.no_grad():  # evaluation: logits spread over the original vocabulary
        spread = model(**inputs).logits
    torch.testing.assert_close(spread[..., columns], full[..., columns], atol=1e-5, rtol=1e-5)
    dropped = torch.ones(full.shape[-1], dtype=torch.bool, device=device)
    dropped[columns] = False
    assert bool((spread[..., dropped] == torch.finfo(spread.dtype).min).all())
    # Training on its own loss: labels in original ids, loss over the kept columns.
    loss = model(**batch).loss
    labels = vp.IdRemapper(kept).to_new(batch["labels"].cpu()).to(device)
    restricted = full[..., columns]
    if lm.kind == "causal":
        restricted, labels = restricted[:, :-1], labels[:, 1:]
    want = F.cross_entropy(restricted.flatten(0, -2), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    vp.restore(model)


# -- restore with rows offloaded from the device -----------------------------------------------


def test_restore_with_rows_offloaded_from_the_device(device):
    lm = build_lm("llama", seed=21)
    model = lm.model.to(device)
    kept = random_kept(lm, 22)
    before = model.get_input_embeddings().weight.detach().cpu().clone()
    state = vp.prune(model, kept)
    store = state.tensors[0].store
    # Off the CPU the rows wait in CPU RAM; on the CPU, in a temporary file: never beside the
    # kept rows in the memory being saved.
    assert isinstance(store, MemoryRows if device.type != "cpu" else TempFileRows)
    _train(model, [_on(batch_for(lm, kept, 23), device)], device, "fp32")
    trained = model.get_input_embeddings().weight.detach().cpu().clone()
    vp.restore(model)
    after = model.get_input_embeddings().weight
    assert after.device.type == device.type and after.shape == before.shape
    ids = torch.as_tensor(kept.kept_ids)
    dropped = torch.ones(before.shape[0], dtype=torch.bool)
    dropped[ids] = False
    assert torch.equal(after.detach().cpu()[dropped], before[dropped])  # bitwise
    assert torch.equal(after.detach().cpu()[ids], trained)
    assert model.lm_head.weight is after  # the tie holds


# -- load_pruned onto the device ----------------------------------------------------------------


def _saved_llama(tmp_path):
    lm = build_lm("llama", seed=31)
    lm.model.save_pretrained(tmp_path / "llama")
    return lm, tmp_path / "llama"


def _device_map(device: torch.device):
    return device.type if device.index is None else {"": device.index}


def test_load_pruned_with_a_device_map(tmp_path, device):
    lm, folder = _saved_llama(tmp_path)
    kept = random_kept(lm, 32)
    batch = batch_for(lm, kept, 33)
    model = vp.load_pruned(AutoModelForCausalLM, folder, kept, device_map=_device_map(device))
    assert {p.device.type for p in model.parameters()} == {device.type}
    assert model.get_input_embeddings().weight.shape[0] == kept.size
    reference = AutoModelForCausalLM.from_pretrained(folder).to(device)
    vp.prune(reference, kept)
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"].to(device)).logits
        want = reference(input_ids=batch["input_ids"].to(device)).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    vp.restore(model)
    original = AutoModelForCausalLM.from_pretrained(folder)
    for name, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[name].cpu(), value), name


@pytest.mark.parametrize("device_map", ["auto", {"model.embed_tokens": 0, "lm_head": 1}])
def test_load_pruned_refuses_a_map_that_splits_the_model(tmp_path, device_map):
    lm, folder = _saved_llama(tmp_path)
    with pytest.raises(UnsupportedModelError, match="one device"):
        vp.load_pruned(AutoModelForCausalLM, folder, random_kept(lm, 34), device_map=device_map)


# -- the tiled cross-entropy and chunked_loss ---------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiled_cross_entropy_equals_the_plain_loss(precision, device):
    gen = torch.Generator().manual_seed(41)
    tokens, dim, columns = 37, 16, 53
    hidden = torch.randn(tokens, dim, generator=gen).to(device).requires_grad_()
    weight = torch.randn(columns, dim, generator=gen).to(device).requires_grad_()
    targets = torch.randint(0, columns, (tokens,), generator=gen).to(device)
    targets[::5] = -100
    with _autocast(device, precision):
        got = tiled_cross_entropy(hidden, weight, None, targets, tile=8).sum()
    got.backward()
    got_grads = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    with _autocast(device, precision):
        logits = hidden @ weight.T
    want = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    want.backward()
    tol = 1e-5 if precision == "fp32" else 1e-2
    torch.testing.assert_close(got.float(), want, atol=tol * tokens, rtol=tol)
    torch.testing.assert_close(got_grads[0].float(), hidden.grad.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(got_grads[1].float(), weight.grad.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_chunked_loss_equals_the_plain_loss(name, device):
    lm = build_lm(name, seed=51)
    kept = random_kept(lm, 52)
    batch = _on(batch_for(lm, kept, 53), device)
    plain = copy.deepcopy(lm.model).to(device).train()
    vp.prune(plain, kept)
    chunked = copy.deepcopy(lm.model).to(device).train()
    vp.prune(chunked, kept)
    vp.chunked_loss(chunked, tile_tokens=4)
    want = plain(**batch).loss
    got = chunked(**batch).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    want.backward()
    got.backward()
    for (name_, p), q in zip(plain.named_parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name_)


# -- stock generate() ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen3", "t5"])
def test_stock_generate_on_device_equals_unpruned(name, device):
    lm = build_lm(name, seed=61)
    model = lm.model.to(device)
    prompt = batch_for(lm, random_kept(lm, 62), 63, n=2)["input_ids"].to(device)
    args = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=lm.specials[0])
    mask = torch.ones_like(prompt)
    with torch.no_grad():
        want = model.generate(input_ids=prompt, attention_mask=mask, **args)
    # A kept vocabulary that covers everything the unpruned model reads and writes, and little
    # else: the pruned model must then generate the same tokens.
    rows = model.get_input_embeddings().weight.shape[0]
    counts = np.zeros(rows, dtype=np.int64)
    counts[torch.cat([prompt.flatten(), want.flatten()]).cpu().numpy()] = 1
    kept = KeptVocab.from_counts(counts, model=model, extra_ids=lm.specials)
    assert kept.size < rows
    vp.prune(model, kept)
    with torch.no_grad():
        got = model.generate(input_ids=prompt, attention_mask=mask, **args)
    assert torch.equal(got, want)
    vp.restore(model)


# -- the frozen head: full fine-tuning's softmax ------------------------------------------------


@pytest.mark.parametrize("tiled", [False, True], ids=["logits", "tiled"])
@pytest.mark.parametrize("name", ["llama", "llama-untied", "gemma3"])
def test_frozen_head_gives_the_unpruned_loss_and_gradients(name, tiled, device):
    """output='frozen': the loss over the whole vocabulary, and the gradient of every kept row and
    every other parameter equal to the unpruned model's at the same weights."""
    lm = build_lm(name, seed=71)
    kept = random_kept(lm, 72)
    batch = _on(batch_for(lm, kept, 73), device)
    full = copy.deepcopy(lm.model).to(device).train()
    want = full(**batch).loss
    want.backward()
    model = lm.model.to(device).train()
    vp.prune(model, kept, output="frozen")
    if tiled:
        vp.chunked_loss(model, tile_tokens=4)
    got = model(**batch).loss
    got.backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    rows = torch.as_tensor(kept.kept_ids, device=device)
    grads = dict(full.named_parameters())
    for name_, p in model.named_parameters():
        g = grads[name_].grad
        if p.shape != grads[name_].shape:  # a vocabulary matrix: its kept rows
            g = g.index_select(0, rows)
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4, msg=name_)
    vp.restore(model)
