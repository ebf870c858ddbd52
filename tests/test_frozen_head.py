"""prune(output="frozen"): the full softmax with the dropped head rows frozen.

The reference is the unpruned model trained under the same loss with a gradient mask on the
dropped rows (what the mode claims to equal): the loss, the gradient of the kept rows and of
every other parameter, a restored model after AdamW steps (with and without weight decay), the
HF Trainer, TRL's fused LM head, generate(), seq2seq and masked-LM heads; the tiled kernel's
frozen columns by float64 gradcheck."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_chunked import V, _config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    BertConfig,
    T5Config,
)

import vocabprune as vp
from vocabprune.train.tiled_ce import tiled_cross_entropy

TEXT = np.arange(10, V, 3)  # the ids the data uses


def _causal(name: str) -> torch.nn.Module:
    """A tiny causal LM: "tied" / "untied" Llama, or "gemma2" (tied, soft-capped logits); the
    configs of tests/test_chunked.py."""
    torch.manual_seed(0)
    config = _config({"tied": "llama", "untied": "llama-untied"}.get(name, name))
    return AutoModelForCausalLM.from_config(config)


def _kept(model: torch.nn.Module) -> vp.KeptVocab:
    counts = np.zeros(V, dtype=np.int64)
    counts[TEXT] = 1
    return vp.KeptVocab.from_counts(counts, model=model, extra_ids=[0, 1, 2])


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.as_tensor(np.random.default_rng(seed).choice(TEXT, size=(3, 40)))
    labels = ids.clone()
    labels[0, :6] = -100
    return {"input_ids": ids, "labels": labels}


def _masked(model: torch.nn.Module, kept: vp.KeptVocab) -> torch.nn.Module:
    """The reference: the unpruned model whose dropped vocabulary rows get no gradient."""
    dropped = torch.ones(V, dtype=torch.bool)
    dropped[torch.as_tensor(kept.kept_ids)] = False
    matrices = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    for weight in {id(w): w for w in matrices}.values():
        weight.register_hook(lambda g: g.masked_fill(dropped[:, None], 0))
    return model


def _grad_gap(pruned: torch.nn.Module, ref: torch.nn.Module, kept: vp.KeptVocab) -> float:
    """Largest difference between the pruned model's gradients and the reference's (the kept
    rows of vocabulary matrices)."""
    index = torch.as_tensor(kept.kept_ids)
    ref_params = dict(ref.named_parameters())
    gaps = []
    for name, param in pruned.named_parameters():
        want = ref_params[name].grad
        if param.shape != want.shape:
            want = want.index_select(0, index)
        assert param.grad is not None, name
        gaps.append(float((param.grad - want).abs().max()))
    assert len(gaps) == len(ref_params)
    return max(gaps)


def _state_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def _float64_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    )


@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("bias", [False, True])
def test_frozen_columns_gradcheck(softcap, bias):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    frozen = torch.randn(6, 5, dtype=torch.float64, generator=g)
    fb = torch.randn(6, dtype=torch.float64, generator=g) if bias else None
    targets = torch.randint(0, 13, (11,), generator=g)
    targets[[0, 5]] = -100
    targets[[1, 2]] = torch.tensor([8, 12])  # frozen columns as targets too

    def tiled(h, w, *rest):
        bb = rest[0] if rest else None
        return tiled_cross_entropy(
            h, w, bb, targets, tile=3, scale=0.7, softcap=softcap, frozen=frozen, frozen_bias=fb,
            frozen_scale=0.9,  # a weight-decay factor on the frozen rows, not their bias
        )  # fmt: skip

    inputs = (hidden, weight, b) if bias else (hidden, weight)
    assert torch.autograd.gradcheck(tiled, inputs)  # float64 throughout: the default tolerances
    columns = torch.cat([weight, 0.9 * frozen])
    z = (hidden @ columns.t() + (torch.cat([b, fb]) if bias else 0)) * 0.7
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    want = torch.nn.functional.cross_entropy(z, targets, reduction="none")
    assert torch.allclose(tiled(*inputs), want, atol=1e-12)


@pytest.mark.parametrize("name", ["tied", "untied", "gemma2"])
@pytest.mark.parametrize("tiled", [False, True])
def test_gradients_equal_the_masked_unpruned_model(name, tiled):
    base = _causal(name).double()
    kept = _kept(base)
    ref = _masked(copy.deepcopy(base), kept)
    model = copy.deepcopy(base)
    vp.prune(model, kept, output="frozen")
    assert model.get_input_embeddings().weight.shape[0] == kept.size  # only kept rows train
    assert torch.equal(vp.column_ids(model), torch.arange(V))  # logits columns are token ids
    if tiled:
        vp.chunked_loss(model, tile_tokens=17)  # 117 predicted tokens: 7 tiles
    batch = _batch()
    model.train(), ref.train()
    want = _float64_loss(ref(input_ids=batch["input_ids"]).logits, batch["labels"])
    if tiled:
        got = model(**batch).loss  # the tiled loss, float64 inside
        assert got.dtype == torch.float64
    else:  # logits over the whole vocabulary, token id = column
        logits = model(input_ids=batch["input_ids"]).logits
        assert logits.shape[-1] == V
        got = _float64_loss(logits, batch["labels"])
    assert abs(float((got - want).detach())) < 1e-12
    got.backward()
    want.backward()
    assert _grad_gap(model, ref, kept) < 1e-12


@pytest.mark.parametrize(("name", "decay"), [("tied", 0.1), ("untied", 0.0)])
def test_restored_after_adamw_equals_the_masked_run(name, decay):
    # float64 throughout (the reference's loss too: transformers' own is taken in float32), so
    # that AdamW, which normalizes every gradient, does not magnify float32 rounding.
    base = _causal(name).double()
    kept = _kept(base)
    ref = _masked(copy.deepcopy(base), kept)
    model = copy.deepcopy(base)
    vp.prune(model, kept, output="frozen")
    vp.chunked_loss(model, tile_tokens=25)
    runs = []
    for m in (model, ref):
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=decay)
        if m is model:
            vp.track_weight_decay(opt, m)  # the frozen rows decay as full fine-tuning's would
        losses = []
        for step in range(3):
            batch = _batch(step)
            if m is model:
                loss = m(**batch).loss  # the tiled loss, float64 inside
            else:
                loss = _float64_loss(m(input_ids=batch["input_ids"]).logits, batch["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        runs.append(losses)
    assert np.allclose(runs[0], runs[1], rtol=0, atol=1e-12)  # each step's: the full softmax's
    vp.restore(model)
    assert _state_gap(model, ref) < 1e-10
    if name == "tied":
        assert model.lm_head.weight is model.get_input_embeddings().weight
    prompt = _batch()["input_ids"][:1, :6]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=False)
        assert torch.equal(out, ref.generate(prompt, max_new_tokens=6, do_sample=False))


def test_through_the_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    base = _causal("tied").double()  # float64, as above: AdamW magnifies float32 rounding
    kept = _kept(base)
    rows = [{k: v[i] for k, v in _batch(s).items()} for s in range(2) for i in range(3)]

    def float64_loss(outputs, labels, num_items_in_batch=None):  # transformers' is float32
        logits = outputs.logits
        return (
            torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                reduction="sum",
            )
            / (labels[:, 1:] != -100).sum()
        )

    models = [copy.deepcopy(base), _masked(copy.deepcopy(base), kept)]
    vp.prune(models[0], kept, output="frozen")
    vp.chunked_loss(models[0], tile_tokens=30)
    for i, m in enumerate(models):
        args = TrainingArguments(
            output_dir=str(tmp_path / str(i)),
            max_steps=2,
            per_device_train_batch_size=3,
            learning_rate=1e-2,
            weight_decay=0.1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        callbacks = [vp.VocabPruneCallback()] if i == 0 else []
        loss = None if i == 0 else float64_loss  # the pruned model's: its tiled loss
        Trainer(
            model=m, args=args, train_dataset=rows, callbacks=callbacks, compute_loss_func=loss
        ).train()
    vp.restore(models[0])
    assert _state_gap(*models) < 1e-10


@pytest.mark.parametrize("tiled", [False, True])
def test_trl_fused_lm_head_scores_the_full_softmax(tiled):
    trl_utils = pytest.importorskip("trl.trainer.utils")
    base = _causal("untied")
    kept = _kept(base)
    ref = copy.deepcopy(base)
    model = copy.deepcopy(base)
    vp.prune(model, kept, output="frozen")
    if tiled:
        vp.chunked_loss(model, tile_tokens=20)
    outs = []
    for m in (model, ref):
        trl_utils.add_fused_lm_head(m, outputs=("log_probs", "entropy", "is_top1"))
        m.train()
        outs.append(m(**_batch(), fused_lm_head=True))
    got, want = outs
    for key in ("log_probs", "entropy"):
        assert torch.allclose(getattr(got, key), getattr(want, key), atol=1e-4), key
    assert torch.equal(got.is_top1.bool(), want.is_top1.bool())
    assert torch.equal(got.label_mask, want.label_mask)
    assert torch.allclose(got.loss, want.loss, atol=1e-5)
    got.loss.backward()
    assert model.lm_head.weight.grad is not None


def test_seq2seq_and_masked_lm_heads():
    torch.manual_seed(0)
    t5 = AutoModelForSeq2SeqLM.from_config(
        T5Config(
            vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0,
        )
    )  # fmt: skip
    bert = AutoModelForMaskedLM.from_config(
        BertConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64,
        )
    )  # fmt: skip
    for base in (t5.double(), bert.double()):
        kept = _kept(base)
        ref = _masked(copy.deepcopy(base), kept)
        model = copy.deepcopy(base)
        vp.prune(model, kept, output="frozen")
        batch = _batch()
        if base is bert:
            batch = {k: v[:, :20].contiguous() for k, v in batch.items()}
            batch["labels"][:, ::2] = -100
        model.train(), ref.train()
        torch.manual_seed(1)
        got = model(**batch).loss
        torch.manual_seed(1)  # the same dropout
        want = ref(**batch).loss
        assert abs(float((got - want).detach())) < 1e-6  # both are the model's own (float32) loss
        got.backward()
        want.backward()
        assert _grad_gap(model, ref, kept) < 1e-10
        vp.restore(model)


def test_refused_where_it_cannot_apply():
    base = _causal("tied")
    kept = _kept(base)
    with pytest.raises(vp.VocabPruneError, match="reads original ids"):
        vp.prune(copy.deepcopy(base), kept, output="frozen", ids="kept")
    with pytest.raises(vp.VocabPruneError, match="not kept"):
        vp.prune(copy.deepcopy(base), kept, output="frozen", logits="kept")
    encoder = AutoModelForMaskedLM.from_config(
        BertConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=4)
    ).bert  # fmt: skip
    with pytest.raises(vp.UnsupportedModelError, match="no output head to freeze"):
        vp.prune(encoder, _kept(encoder), output="frozen")


# -- the default: output="auto" is the frozen head ------------------------------------------------


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_the_default_is_the_frozen_head(name):
    base = _causal(name)
    kept = _kept(base)
    model = copy.deepcopy(base)
    state = vp.prune(model, kept)
    assert state.frozen_head and model.config.vocab_size == V
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == (name == "tied")
    batch = _batch()
    with torch.no_grad():
        got, want = model(**batch), base(**batch)
    assert got.logits.shape[-1] == V  # over the whole vocabulary, dropped ids included
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)
    assert abs(float(got.loss - want.loss)) < 1e-5  # the unpruned model's full-softmax loss
    copied = copy.deepcopy(model)  # a copy keeps its frozen rows
    with torch.no_grad():
        torch.testing.assert_close(copied(**batch).logits, got.logits, rtol=0, atol=0)
    vp.restore(model)
    assert _state_gap(model, base) == 0


def test_auto_keeps_the_restricted_head_for_kept_logits_and_kept_ids():
    base = _causal("tied")
    kept = _kept(base)
    state = vp.prune(copy.deepcopy(base), kept, logits="kept")
    assert not state.frozen_head and state.output_pruned
    with pytest.warns(UserWarning, match="output='prune'"):
        state = vp.prune(copy.deepcopy(base), kept, ids="kept")
    assert not state.frozen_head and state.output_pruned


def test_load_pruned_default_reads_the_frozen_rows(tmp_path):
    base = _causal("untied")
    base.save_pretrained(tmp_path)
    kept = _kept(base)
    eager = copy.deepcopy(base)
    vp.prune(eager, kept)
    lazy = vp.load_pruned(AutoModelForCausalLM, tmp_path, kept)
    assert vp.get_state(lazy).frozen_head
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(lazy(**batch).logits, eager(**batch).logits, rtol=0, atol=0)
    restricted = vp.load_pruned(AutoModelForCausalLM, tmp_path, kept, output="prune")
    assert not vp.get_state(restricted).frozen_head


def test_resume_refuses_a_checkpoint_of_the_other_head(tmp_path):
    import json

    from vocabprune.train.callback import CHECKPOINT_FILE, check_resume, write_checkpoint_record

    base = _causal("tied")
    kept = _kept(base)
    frozen, restricted = copy.deepcopy(base), copy.deepcopy(base)
    vp.prune(frozen, kept)
    vp.prune(restricted, kept, output="prune")
    write_checkpoint_record(frozen, tmp_path)
    assert check_resume(frozen, tmp_path)["head"] == "frozen"
    with pytest.raises(vp.MismatchError, match="prune with output='auto'"):
        check_resume(restricted, tmp_path)
    write_checkpoint_record(restricted, tmp_path)
    with pytest.raises(vp.MismatchError, match="prune with output='prune' to resume it"):
        check_resume(frozen, tmp_path)
    path = tmp_path / CHECKPOINT_FILE  # a record written before heads were recorded
    record = json.loads(path.read_text())
    del record["head"]
    path.write_text(json.dumps(record))
    assert check_resume(frozen, tmp_path)["kept_size"] == kept.size
