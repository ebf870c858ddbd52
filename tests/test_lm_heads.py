"""Output heads on tiny language models of every family: prune, train, generate, restore.

Families: BERT and XLM-R masked LM (decoder tied, with bias), GPT-2, tied Llama (SmolLM2-style),
untied Llama, Gemma (scaled embedding), T5 (shared + encoder/decoder embed_tokens + lm_head),
mT5 with an untied lm_head (as real mT5 checkpoints load), BART and mBART (final_logits_bias).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    BartConfig,
    BertConfig,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MBartConfig,
    MT5Config,
    Qwen3Config,
    T5Config,
    XLMRobertaConfig,
)

import vocabprune as vp
from vocabprune import KeptVocab, RemapCollator, UnsupportedModelError, VocabPruneError
from vocabprune.core.vocab import CONFIG_ID_ATTRS

V = 300
H = 32


@dataclass
class LM:
    name: str
    kind: str  # "causal", "seq2seq" or "mlm"
    model: nn.Module
    tied: bool
    specials: tuple[int, ...]

    @property
    def text_ids(self) -> list[int]:
        rows = self.model.get_input_embeddings().weight.shape[0]
        return [i for i in range(rows) if i not in self.specials and i < V]


def _llama(tied: bool) -> tuple[LlamaConfig, tuple[int, ...]]:
    # bos/eos/pad away from 0 so that the kept numbering moves them.
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=11,
        eos_token_id=12,
        pad_token_id=12,
    )
    return cfg, (11, 12)


def _seq2seq_args() -> dict:
    return dict(
        d_model=H,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    )


def _untie_mt5(model: nn.Module, seed: int) -> nn.Module:
    """Real mT5 checkpoints hold their own lm_head; transformers then leaves it untied."""
    torch.manual_seed(seed + 1)
    model.lm_head.weight = nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    model.config.scale_decoder_outputs = False
    return model


def build(name: str, seed: int = 0) -> LM:
    torch.manual_seed(seed)
    if name in ("bert-mlm", "xlm-roberta-mlm"):
        if name == "bert-mlm":
            cfg = BertConfig(
                vocab_size=V,
                hidden_size=H,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            )
            specials = (0, 100, 101, 102, 103)
        else:
            cfg = XLMRobertaConfig(
                vocab_size=V,
                hidden_size=H,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=70,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
            )
            specials = (0, 1, 2, 3, V - 1)
        model = AutoModelForMaskedLM.from_config(cfg)
        return LM(name, "mlm", model.eval(), True, specials)
    if name == "gpt2":
        cfg = GPT2Config(
            vocab_size=V,
            n_embd=H,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=V - 1,
            eos_token_id=V - 1,
        )
        model = AutoModelForCausalLM.from_config(cfg)
        return LM(name, "causal", model.eval(), True, (V - 1,))
    if name == "gpt2-padded":
        # Like GPT-2 with a vocabulary padded to a multiple of 64: 320 rows, 300 real ids.
        cfg = GPT2Config(
            vocab_size=320,
            n_embd=H,
            n_layer=1,
            n_head=4,
            n_positions=128,
            bos_token_id=V - 1,
            eos_token_id=V - 1,
        )
        model = AutoModelForCausalLM.from_config(cfg)
        return LM(name, "causal", model.eval(), True, (V - 1,))
    if name in ("llama", "llama-untied"):
        cfg, specials = _llama(tied=name == "llama")
        model = AutoModelForCausalLM.from_config(cfg)
        return LM(name, "causal", model.eval(), name == "llama", specials)
    if name in ("qwen3", "qwen3-untied"):
        cfg = Qwen3Config(
            vocab_size=V,
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
            tie_word_embeddings=name == "qwen3",
            bos_token_id=13,
            eos_token_id=14,
            pad_token_id=14,
        )
        model = AutoModelForCausalLM.from_config(cfg)
        return LM(name, "causal", model.eval(), name == "qwen3", (13, 14))
    if name in ("gemma3", "gemma"):  # Gemma3 copies config.vocab_size to a module attribute
        config_class = Gemma3TextConfig if name == "gemma3" else GemmaConfig
        cfg = config_class(
            vocab_size=V,
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=128,
            bos_token_id=2,
            eos_token_id=1,
            pad_token_id=0,
        )
        model = AutoModelForCausalLM.from_config(cfg)
        return LM(name, "causal", model.eval(), True, (0, 1, 2))
    if name in ("t5", "mt5-untied"):
        common = dict(
            vocab_size=V,
            d_model=H,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        if name == "t5":
            model = AutoModelForSeq2SeqLM.from_config(T5Config(**common))
        else:
            cfg = MT5Config(**common, feed_forward_proj="gated-gelu")
            model = _untie_mt5(AutoModelForSeq2SeqLM.from_config(cfg), seed)
        return LM(name, "seq2seq", model.eval(), name == "t5", (0, 1, 2))
    if name in ("bart", "mbart"):
        cfg_cls = BartConfig if name == "bart" else MBartConfig
        model = AutoModelForSeq2SeqLM.from_config(cfg_cls(vocab_size=V, **_seq2seq_args()))
        # A non-zero final_logits_bias, so that pruning it wrongly shows.
        model.final_logits_bias.normal_(0, 0.5)
        return LM(name, "seq2seq", model.eval(), True, (0, 1, 2, 3))
    raise KeyError(name)


FAMILIES = [
    "bert-mlm",
    "xlm-roberta-mlm",
    "gpt2",
    "gpt2-padded",
    "llama",
    "llama-untied",
    "qwen3",
    "qwen3-untied",
    "gemma",
    "gemma3",
    "t5",
    "mt5-untied",
    "bart",
    "mbart",
]
GENERATIVE = [f for f in FAMILIES if not f.endswith("-mlm")]
UNTIED = ["llama-untied", "qwen3-untied", "mt5-untied"]


# -- helpers ----------------------------------------------------------------------------------


def random_kept(lm: LM, seed: int, frac: float = 0.35) -> KeptVocab:
    rng = np.random.default_rng(seed)
    rows = lm.model.get_input_embeddings().weight.shape[0]
    chosen = rng.choice(lm.text_ids, size=int(len(lm.text_ids) * frac), replace=False)
    counts = np.zeros(rows, dtype=np.int64)
    counts[chosen] = 1
    # Drop a low id so that the specials above it renumber.
    counts[5] = 0
    return KeptVocab.from_counts(counts, model=lm.model, extra_ids=lm.specials)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: t.detach().clone() for n, t in model.named_parameters(remove_duplicate=False)}
    out.update(
        {"buffer:" + n: t.detach().clone() for n, t in model.named_buffers(remove_duplicate=False)}
    )
    return out


def sharing(model: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(sorted(g) for g in groups.values())


def vocab_tensor_names(model: nn.Module, rows: int) -> list[str]:
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p.shape[0] == rows]
    names += [
        "buffer:" + n
        for n, b in model.named_buffers(remove_duplicate=False)
        if b.ndim and b.shape[-1] == rows and "logits_bias" in n
    ]
    return names


def vocab_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """The tensor with the vocabulary on axis 0."""
    return t.reshape(-1) if name.startswith("buffer:") else t


def batch_for(lm: LM, kept: KeptVocab, seed: int, n: int = 3) -> dict[str, torch.Tensor]:
    """A batch in ORIGINAL ids (kept text ids only), with labels for the family's objective."""
    rng = np.random.default_rng(seed)
    text = np.asarray([i for i in lm.text_ids if i in kept])
    ids = torch.as_tensor(rng.choice(text, size=(n, 9)))
    if lm.kind == "mlm":
        labels = torch.full_like(ids, -100)
        masked = ids.clone()
        labels[:, 2::3] = ids[:, 2::3]
        masked[:, 2::3] = lm.specials[-1] if lm.name == "xlm-roberta-mlm" else 103
        return {"input_ids": masked, "labels": labels}
    if lm.kind == "causal":
        labels = ids.clone()
        labels[0, :3] = -100
        return {"input_ids": ids, "labels": labels}
    target = torch.as_tensor(rng.choice(text, size=(n, 6)))
    target[0, -1] = -100
    return {"input_ids": ids, "labels": target}


def remap_batch(batch: dict, model: nn.Module, labels: bool = True) -> dict:
    """The data-side remap, for a model pruned with ids='kept'."""
    collate = RemapCollator(lambda feats: dict(feats[0]), model, remap_labels=labels)
    return collate([batch])


def new_ids(batch: dict, kept: KeptVocab) -> dict:
    """A batch in kept ids (inputs and labels), without a model: the reference's view."""
    remapper = vp.IdRemapper(kept)
    return {k: remapper.to_new(v) for k, v in batch.items()}


IDS = [pytest.param("original", id="original-ids"), pytest.param("kept", id="kept-ids")]


# -- prune then restore, untouched: bitwise identity --------------------------------------------


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_prune_restore_identity(name, ids):
    lm = build(name)
    model = lm.model
    before, ties = snapshot(model), sharing(model)
    config = model.config.to_dict()
    gen = model.generation_config.to_dict() if lm.kind != "mlm" else None
    rows = model.get_input_embeddings().weight.shape[0]
    kept = random_kept(lm, 1)

    vp.prune(model, kept, ids=ids, output="prune")
    assert model.get_input_embeddings().weight.shape[0] == kept.size
    out = model.get_output_embeddings()
    assert out.weight.shape[0] == kept.size
    assert out.out_features == kept.size
    assert (out.weight is model.get_input_embeddings().weight) == lm.tied
    if getattr(out, "bias", None) is not None:
        assert out.bias.shape == (kept.size,)
    if hasattr(model, "final_logits_bias"):
        assert model.final_logits_bias.shape == (1, kept.size)
    assert model.config.vocab_size == kept.size
    moved = 0
    for cfg in (model.config, getattr(model, "generation_config", None)):
        for attr in CONFIG_ID_ATTRS:
            value = getattr(cfg, attr, None) if cfg is not None else None
            orig = (config if cfg is model.config else gen or {}).get(attr)
            if isinstance(orig, int) and orig >= 0:
                assert value == (kept.new_id(orig) if ids == "kept" else orig), attr
                moved += kept.new_id(orig) != orig
    if lm.kind != "mlm" and max(lm.specials) > 5:
        assert moved, "no config id is renumbered: the test would not see a wrong remap"
    # Every vocabulary tensor under every name is the kept rows of the original.
    index = torch.as_tensor(kept.kept_ids)
    pruned = snapshot(model)
    for key in vocab_tensor_names(copy.deepcopy(model), kept.size):
        want = before[key].index_select(before[key].ndim - 1 if "buffer:" in key else 0, index)
        assert torch.equal(pruned[key], want), key

    vp.restore(model)
    after = snapshot(model)
    assert sorted(after) == sorted(before)
    for key, want in before.items():
        assert after[key].shape == want.shape and torch.equal(after[key], want), key
    assert sharing(model) == ties
    assert model.config.to_dict() == config
    if gen is not None:
        assert model.generation_config.to_dict() == gen
    assert model.get_input_embeddings().weight.shape[0] == rows
    assert model.get_output_embeddings().out_features == rows


# -- while pruned: the logits are the kept columns of the full logits --------------------------


def full_and_pruned_logits(lm: LM, kept: KeptVocab, batch: dict, ids: str = "kept") -> tuple:
    """(full logits, pruned logits as the model gives them) for one batch without labels."""
    model = lm.model
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if lm.kind == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
            labels=batch["labels"]
        )
    with torch.no_grad():
        full = model(**inputs).logits
    vp.prune(model, kept, ids=ids, output="prune")
    with torch.no_grad():
        small = model(**(remap_batch(inputs, model) if ids == "kept" else inputs)).logits
    return full, small


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_logits_are_kept_columns(name, ids):
    """ids='kept': the kept columns; ids='original': spread over the original vocabulary (the
    dropped ids impossible), the kept columns equal to the full model's."""
    lm = build(name, seed=2)
    kept = random_kept(lm, 3)
    full, small = full_and_pruned_logits(lm, kept, batch_for(lm, kept, 4), ids)
    if ids == "original":
        assert small.shape == full.shape
        dropped = np.flatnonzero(kept.old_to_new < 0)
        assert (small[..., dropped] == torch.finfo(small.dtype).min).all()
        small = small[..., vp.column_ids(lm.model)]
    assert small.shape[-1] == kept.size
    torch.testing.assert_close(small, full[..., kept.kept_ids], rtol=1e-5, atol=1e-5)
    if name == "gemma":  # the sqrt(hidden) scaling of the embedding is preserved
        emb = lm.model.get_input_embeddings()
        assert float(emb.embed_scale) == pytest.approx(H**0.5)
    vp.restore(lm.model)


# -- training: labels remapped, dropped rows untouched, ties held -------------------------------


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_training_touches_only_kept_rows(name, ids):
    """The model's own loss on labels is the kept-softmax loss (ids='original': labels in
    tokenizer ids, remapped inside; seq2seq decoder inputs derived from them), and training moves
    only kept rows."""
    lm = build(name, seed=5)
    model = lm.model
    before, ties = snapshot(model), sharing(model)
    rows = model.get_input_embeddings().weight.shape[0]
    kept = random_kept(lm, 6)
    batch = batch_for(lm, kept, 7)
    assert (batch["labels"] == -100).any()

    # The reference loss: the full model's logits restricted to the kept columns, in kept ids.
    labels_new = new_ids(batch, kept)["labels"]
    assert torch.equal(labels_new == -100, batch["labels"] == -100)
    assert not torch.equal(labels_new, batch["labels"])
    full, _ = full_and_pruned_logits(lm, kept, batch, ids)
    fed = remap_batch(batch, model) if ids == "kept" else batch
    restricted = full[..., kept.kept_ids]
    if lm.kind == "causal":
        ref = F.cross_entropy(
            restricted[:, :-1].reshape(-1, kept.size), labels_new[:, 1:].reshape(-1)
        )
    else:
        ref = F.cross_entropy(restricted.reshape(-1, kept.size), labels_new.reshape(-1))

    with torch.no_grad():  # the model's own loss is the restricted loss
        loss = model(**fed).loss
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)

    model.train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        out = model(**fed)
        if ids == "original":  # training on its own loss: the logits are the kept columns
            assert out.logits.shape[-1] == kept.size
        loss = out.loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    vp.restore(model)

    after = snapshot(model)
    assert sharing(model) == ties
    dropped = torch.ones(rows, dtype=torch.bool)
    dropped[torch.as_tensor(kept.kept_ids)] = False
    kept_mask = ~dropped
    names = vocab_tensor_names(model, rows)
    assert names
    changed_kept = False
    for key in names:
        a, b = vocab_rows(after[key], key), vocab_rows(before[key], key)
        assert torch.equal(a[dropped], b[dropped]), f"{key}: a dropped row moved"
        changed_kept |= not torch.equal(a[kept_mask], b[kept_mask])
    assert changed_kept, "no kept row was trained"
    others = [k for k in before if k not in names and not k.startswith("buffer:")]
    assert any(not torch.equal(after[k], before[k]) for k in others)
    if lm.tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


# -- generation: original ids in and out ---------------------------------------------------------


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize("name", GENERATIVE)
def test_generate_returns_original_ids(name, ids):
    """ids='original': stock generate() takes and returns original ids; ids='kept': vp.generate
    does (and raw generate() works in kept ids). Either way the kept-restricted full model's
    output, in original ids."""
    lm = build(name, seed=8)
    model = lm.model
    kept = random_kept(lm, 9)
    prompt = batch_for(lm, kept, 10, n=2)["input_ids"]
    rows = model.get_input_embeddings().weight.shape[0]
    eos = model.generation_config.eos_token_id
    args = dict(
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=eos,
        min_new_tokens=6,
        attention_mask=torch.ones_like(prompt),
    )
    # Reference: the full model with every id outside the kept vocabulary suppressed.
    banned = [i for i in range(rows) if i not in kept]
    with torch.no_grad():
        want = model.generate(input_ids=prompt, suppress_tokens=banned, **args)
        unrestricted = model.generate(input_ids=prompt, **args)
    assert unrestricted.shape == want.shape

    vp.prune(model, kept, ids=ids, output="prune")
    with torch.no_grad():
        got = vp.generate(model, prompt, **args)
        out = vp.generate(model, prompt, return_dict_in_generate=True, output_scores=True, **args)
    assert torch.equal(got, want)
    assert all(int(i) in kept for i in got.flatten())
    assert torch.equal(out.sequences, want)  # a dict output: sequences in original ids
    if ids == "original":
        with torch.no_grad():
            stock = model.generate(input_ids=prompt, **args)
        assert torch.equal(stock, want)
        assert out.scores[0].shape[-1] == rows  # scores by token id
    else:
        assert out.scores[0].shape[-1] == kept.size  # scores over the kept columns
        with torch.no_grad():  # raw generate() works in kept ids (the config ids follow the map)
            raw = model.generate(
                input_ids=remap_batch({"input_ids": prompt}, model)["input_ids"],
                **{**args, "pad_token_id": kept.new_id(eos)},
            )
        assert torch.equal(torch.as_tensor(kept.kept_ids)[raw], want)
    vp.restore(model)
    with torch.no_grad():
        assert torch.equal(vp.generate(model, prompt, **args), unrestricted)
        assert torch.equal(model.generate(input_ids=prompt, **args), unrestricted)


@pytest.mark.parametrize("ids", IDS)
def test_generate_refuses_ids_outside_the_kept_vocabulary(ids):
    lm = build("llama")
    kept = random_kept(lm, 1)
    vp.prune(lm.model, kept, ids=ids, output="prune")
    outside = next(i for i in lm.text_ids if i not in kept)
    with pytest.raises(VocabPruneError, match="not in the kept vocabulary"):
        vp.generate(lm.model, torch.tensor([[outside]]), max_new_tokens=2)
    if ids == "original":
        with pytest.raises(
            VocabPruneError,
            match=f"token id {outside} in example 0 of the batch, position 0, is not in the kept",
        ):
            lm.model.generate(input_ids=torch.tensor([[outside]]), max_new_tokens=2)
    else:
        with pytest.raises(VocabPruneError, match="eos_token_id"):
            vp.generate(lm.model, torch.tensor([[11]]), max_new_tokens=2, eos_token_id=outside)
    vp.restore(lm.model)


@pytest.mark.parametrize("ids", IDS)
def test_generate_remaps_id_lists_of_the_generation_config(ids):
    lm = build("llama", seed=3)
    model = lm.model
    kept = random_kept(lm, 4)
    prompt = batch_for(lm, kept, 5, n=1)["input_ids"]
    args = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=12)
    banned = [i for i in range(V) if i not in kept]
    with torch.no_grad():  # what the restricted head would emit without the lists
        free = model.generate(input_ids=prompt, suppress_tokens=banned, **args)
    free = free[0, prompt.shape[1] :].tolist()
    assert free[0] in kept and free[1] in kept
    # Suppress the first two tokens the model would emit (in original ids), as Whisper-style
    # configs do; a suppressed id outside the kept vocabulary is simply dropped.
    outside = next(i for i in lm.text_ids if i not in kept)
    model.generation_config.suppress_tokens = [free[0], outside]
    model.generation_config.bad_words_ids = [[free[1]], [outside, free[0]]]
    with torch.no_grad():
        want = model.generate(
            input_ids=prompt, bad_words_ids=[[free[1]]], suppress_tokens=[free[0], *banned], **args
        )
    vp.prune(model, kept, ids=ids, output="prune")
    with torch.no_grad():
        got = vp.generate(model, prompt, **args)
    assert torch.equal(got, want)
    assert free[0] not in got[0, prompt.shape[1] :].tolist()
    vp.restore(model)
    assert model.generation_config.suppress_tokens == [free[0], outside]


# -- generate() over the kept ids: the decoding fast path (core/decoding.py) ----------------------


def _logit_widths(model: nn.Module) -> tuple[list[int], Any]:
    """The width of every logits tensor the model returns (after vocabprune's own hooks)."""
    widths: list[int] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            widths.append(int(logits.shape[-1]))

    return widths, model.register_forward_hook(record)


def _config_ids(model: nn.Module) -> dict[str, Any]:
    from vocabprune.core.configs import config_tree
    from vocabprune.core.ids import config_id_updates

    found = {}
    for n, cfg in enumerate(config_tree(model)):
        for attr, old, _ in config_id_updates(cfg, lambda attr: lambda i: -1):
            found[f"{n}.{attr}"] = old
    return found


@pytest.mark.parametrize("name", GENERATIVE)
def test_stock_generate_decodes_over_the_kept_columns(name):
    """A restricted head's stock generate() runs over the kept columns (no spread to the whole
    vocabulary at every step) and gives the tokens the spread logits give: greedy and beam
    search, against the stock path; the config ids are the original ones again afterwards."""
    lm = build(name, seed=21)
    model = lm.model
    kept = random_kept(lm, 22)
    prompt = batch_for(lm, kept, 23, n=2)["input_ids"]
    rows = model.get_input_embeddings().weight.shape[0]
    eos = model.generation_config.eos_token_id
    args = dict(max_new_tokens=5, min_new_tokens=5, pad_token_id=eos)
    vp.prune(model, kept, output="prune")
    ids_before = _config_ids(model)
    widths, handle = _logit_widths(model)
    with torch.no_grad():
        for beams in (1, 2):
            widths.clear()
            fast = model.generate(input_ids=prompt, num_beams=beams, do_sample=False, **args)
            assert widths and set(widths) == {kept.size}, widths
            widths.clear()
            stock = type(model).generate(model, prompt, num_beams=beams, do_sample=False, **args)
            assert set(widths) == {rows}
            assert torch.equal(fast, stock)
            assert all(int(i) in kept for i in fast.flatten())
        widths.clear()  # scores asked for: they are by token id, so the stock way
        out = model.generate(
            input_ids=prompt, return_dict_in_generate=True, output_scores=True, **args
        )
        assert set(widths) == {rows} and out.scores[0].shape[-1] == rows
        assert torch.equal(out.sequences, model.generate(input_ids=prompt, **args))
    handle.remove()
    assert _config_ids(model) == ids_before
    assert not vp.get_state(model).over_kept
    vp.restore(model)
    assert "generate" not in vars(model)


def test_generate_over_kept_ids_streams_original_ids_and_undoes_itself_on_error():
    lm = build("llama", seed=24)
    model = lm.model
    kept = random_kept(lm, 25)
    prompt = batch_for(lm, kept, 26, n=1)["input_ids"]
    vp.prune(model, kept, output="prune")
    ids_before = _config_ids(model)
    with torch.no_grad():
        logits = model(prompt).logits

    class Streamer:
        def __init__(self, fail_after: int | None = None) -> None:
            self.seen: list[int] = []
            self.fail_after = fail_after

        def put(self, value: torch.Tensor) -> None:
            self.seen += value.flatten().tolist()
            if self.fail_after is not None and len(self.seen) > self.fail_after:
                raise RuntimeError("streamer failed")

        def end(self) -> None:
            pass

    streamer = Streamer()
    with torch.no_grad():
        out = model.generate(input_ids=prompt, max_new_tokens=4, streamer=streamer)
    assert streamer.seen == out[0].tolist()  # the prompt, then each new token: original ids
    with pytest.raises(RuntimeError, match="streamer failed"), torch.no_grad():
        model.generate(input_ids=prompt, max_new_tokens=4, streamer=Streamer(fail_after=10))
    assert _config_ids(model) == ids_before
    assert not vp.get_state(model).over_kept
    with torch.no_grad():  # original ids in, logits by token id out, as before
        assert torch.equal(model(prompt).logits, logits)
    copied = copy.deepcopy(model)  # the copy's generate is its own
    with torch.no_grad():
        assert torch.equal(copied.generate(input_ids=prompt, max_new_tokens=4), out)
    assert copied.generate.__self__ is copied
    vp.restore(model)
    vp.restore(copied)


# -- inputs-only pruning: output="keep" ----------------------------------------------------------


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize("name", UNTIED)
def test_inputs_only_keeps_the_full_softmax(name, ids):
    lm = build(name, seed=11)
    model = lm.model
    rows = model.get_input_embeddings().weight.shape[0]
    before = snapshot(model)
    kept = random_kept(lm, 12)
    batch = batch_for(lm, kept, 13)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if lm.kind == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
            labels=batch["labels"]
        )
    with torch.no_grad():
        full = model(**inputs, labels=batch["labels"])

    vp.prune(model, kept, output="keep", ids=ids)
    head = model.get_output_embeddings()
    assert head.weight.shape[0] == rows
    assert model.config.vocab_size == rows  # the loss reshapes logits by config.vocab_size
    # Labels are NOT remapped: the head is full (RemapCollator knows, by default).
    fed = {**(remap_batch(inputs, model) if ids == "kept" else inputs), "labels": batch["labels"]}
    if ids == "kept":
        assert torch.equal(
            RemapCollator(lambda f: dict(f[0]), model)([batch])["labels"], batch["labels"]
        )
    with torch.no_grad():
        small = model(**fed)
    assert small.logits.shape[-1] == rows
    torch.testing.assert_close(small.logits, full.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small.loss, full.loss, rtol=1e-5, atol=1e-6)
    with pytest.raises(VocabPruneError, match="output='keep'"):
        vp.generate(model, batch["input_ids"], max_new_tokens=2)
    # Training moves the whole head and only the kept input rows.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(**fed).loss.backward()
    opt.step()
    vp.restore(model)
    after = snapshot(model)
    head_name = "lm_head.weight"
    dropped = [i for i in range(rows) if i not in kept]
    assert not torch.equal(after[head_name][dropped], before[head_name][dropped])
    emb_name = next(n for n in before if n.endswith("embed_tokens.weight") or n == "shared.weight")
    assert torch.equal(after[emb_name][dropped], before[emb_name][dropped])


def test_inputs_only_refuses_a_tied_head():
    lm = build("llama")
    before = snapshot(lm.model)
    with pytest.raises(UnsupportedModelError, match="ties its output head"):
        vp.prune(lm.model, random_kept(lm, 1), output="keep")
    assert not vp.is_pruned(lm.model)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(lm.model).items())


# -- bad heads -------------------------------------------------------------------------------------


class FactorizedHead(nn.Module):
    """Not a plain linear layer over the vocabulary (an adaptive-softmax-like head)."""

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, 8, bias=False)
        self.weight = nn.Parameter(torch.randn(vocab, 8))

    def forward(self, x):
        return self.down(x) @ self.weight.T


@pytest.mark.parametrize("name", ["llama-untied", "gpt2"])
def test_bad_heads_are_refused(name):
    lm = build(name)
    model = lm.model
    kept = random_kept(lm, 1)
    model.set_output_embeddings(FactorizedHead(H, V))
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="not a plain linear layer"):
        vp.prune(model, kept)
    assert not vp.is_pruned(model)
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    # A linear head whose rows differ from the input embedding's (say a padded head).
    model.set_output_embeddings(nn.Linear(H, V + 4, bias=False))
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="304 rows but the input embedding has 300"):
        vp.prune(model, kept)
    assert not vp.is_pruned(model)
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())


# -- padded vocabularies with a real tokenizer -----------------------------------------------


@pytest.mark.slow
def test_padded_vocabulary_generates_text_the_tokenizer_decodes(bbc_texts):
    """Head and embedding of 49,216 rows (a multiple of 64) for a 49,152-id tokenizer."""
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from vocabprune.fixtures import smollm2_path
    from vocabprune.fixtures.packaged import FixtureMissingError

    try:
        tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    except FixtureMissingError as exc:
        pytest.skip(str(exc))
    rows = 49_216
    assert len(tokenizer) == 49_152
    cfg, _ = _llama(tied=True)
    cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size = rows, 16, 32
    cfg.num_hidden_layers, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 1, 2, 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    texts = list(bbc_texts["text"][:5])
    kept = vp.build_kept_vocab(tokenizer, texts, model=model, max_length=64)
    assert kept.vocab_size == rows
    assert int(kept.kept_ids.max()) < len(tokenizer)  # padded rows are never used
    first = tokenizer(texts[0])["input_ids"][:12]
    prompt = {
        "input_ids": torch.tensor([first]),
        "attention_mask": torch.ones(1, 12, dtype=torch.long),
    }
    args = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=2)
    banned = [i for i in range(rows) if i not in kept]
    with torch.no_grad():
        want = model.generate(**prompt, suppress_tokens=banned, **args)
    vp.prune(model, kept, output="prune")
    assert model.lm_head.weight.shape[0] == kept.size
    with torch.no_grad():
        got = vp.generate(model, **prompt, tokenizer=tokenizer, **args)
    assert torch.equal(got, want)
    text = tokenizer.decode(got[0])
    assert text.startswith(tokenizer.decode(first))
    assert tokenizer(text, add_special_tokens=False)["input_ids"]  # decodes to real text
    vp.restore(model)
    assert model.lm_head.weight.shape[0] == rows


# -- masked-LM data: random replacements never leave the kept vocabulary --------------------------


def test_masked_lm_collator_draws_kept_ids(minilm_tokenizer):
    from vocabprune.train.collators import MaskedLMCollator

    tok = minilm_tokenizer
    ids = tok(["the quick brown fox jumps over the lazy dog " * 6], truncation=True)["input_ids"]
    kept_text = sorted(set(ids[0]) - set(tok.all_special_ids))
    counts = np.zeros(len(tok), dtype=np.int64)
    counts[kept_text] = 1
    kept = KeptVocab.from_counts(counts, tokenizer=tok)
    collate = MaskedLMCollator(tok, kept_text, probability=0.5, seed=1)
    batch = collate([{"input_ids": ids[0]}] * 16)
    assert all(int(i) in kept for i in batch["input_ids"].flatten())  # random ids are kept ids
    labels = batch["labels"]
    assert (labels == -100).any() and (labels != -100).any()
    masked = batch["input_ids"] == tok.mask_token_id
    assert 0.3 < masked.sum() / (labels != -100).sum() < 0.95
    # Labels are the original ids at the chosen positions.
    orig = torch.as_tensor(ids[0]).expand_as(labels)
    chosen = labels != -100
    assert torch.equal(labels[chosen], orig[chosen])
    assert not (chosen & (batch["attention_mask"] == 0)).any()


@pytest.mark.slow
def test_cli_masked_lm_on_minilm(tmp_path, minilm_dir):
    import json

    from transformers import AutoModelForMaskedLM

    from vocabprune.cli.main import main

    out = tmp_path / "mlm"
    argv = ["finetune", "--task", "masked-lm", "--out", str(out), "--limit", "12"]
    argv += ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--lr", "1e-3"]
    assert main([*argv, "--json"]) == 0
    report = json.loads((out / "vocabprune_run.json").read_text())
    assert report["task"] == "masked-lm" and report["eval_perplexity"] > 1
    kept = KeptVocab.load(out)
    model = AutoModelForMaskedLM.from_pretrained(out)
    original = AutoModelForMaskedLM.from_pretrained(minilm_dir)
    emb, emb0 = model.get_input_embeddings().weight, original.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb
    dropped = torch.ones(emb.shape[0], dtype=torch.bool)
    dropped[torch.as_tensor(kept.kept_ids)] = False
    assert torch.equal(emb[dropped], emb0[dropped])
    assert not torch.equal(emb[~dropped], emb0[~dropped])


@pytest.mark.parametrize("output", ["auto", "keep"])
def test_head_that_reads_the_input_embedding_is_refused(output):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    cfg = DebertaV2Config(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        legacy=False,
    )
    model = DebertaV2ForMaskedLM(cfg)
    kept = vp.KeptVocab.from_counts(np.ones(50, dtype=np.int64), model=model)
    with pytest.raises(vp.UnsupportedModelError, match="input embedding matrix itself"):
        vp.prune(model, kept, output=output)
    assert not vp.is_pruned(model)
    assert model.get_input_embeddings().num_embeddings == 200


def test_generate_over_kept_ids_returns_the_prompt_as_given_with_unknown_unk():
    """unknown="unk" reads a dropped prompt id as UNK; the sequences still begin with the prompt
    the caller gave (as stock generate returns it), beams and several sequences included."""
    from types import SimpleNamespace

    lm = build("llama", seed=31)
    model = lm.model
    kept = random_kept(lm, 32)
    prompt = batch_for(lm, kept, 33, n=2)["input_ids"]
    dropped = next(i for i in lm.text_ids if i not in kept)
    prompt[:, 2] = dropped
    unk = SimpleNamespace(unk_token_id=int(lm.specials[0]))
    vp.prune(model, kept, output="prune", unknown="unk", tokenizer=unk)
    with torch.no_grad():
        greedy = model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
        beams = model.generate(
            input_ids=prompt, max_new_tokens=3, num_beams=2, num_return_sequences=2
        )
    assert torch.equal(greedy[:, : prompt.shape[1]], prompt)
    assert torch.equal(beams[:, : prompt.shape[1]], prompt.repeat_interleave(2, 0))
    assert all(int(i) in kept for i in greedy[:, prompt.shape[1] :].flatten())
    vp.restore(model)
