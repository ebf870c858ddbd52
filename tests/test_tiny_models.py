"""prune / remap / train / save / restore on tiny random models of every supported family."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import FAMILIES, HEADS, Tiny, build
from torch import nn
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

import vocabprune
from vocabprune import (
    IdRemapper,
    KeptVocab,
    MismatchError,
    RemapCollator,
    UnsupportedModelError,
    VocabPruneError,
)
from vocabprune.core.vocab import CONFIG_ID_ATTRS

CASES = [pytest.param(f, h, id=f"{f}-{h}") for f in FAMILIES for h in HEADS]
FAMILY_CASES = [pytest.param(f, id=f) for f in FAMILIES]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: intra-op threads only add synchronisation (100x slower on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers ----------------------------------------------------------------------------------


def seed_of(*parts: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate("-".join(parts))) % 10_000


def random_kept(tm: Tiny, rng: np.random.Generator, frac: float = 0.4) -> KeptVocab:
    """A random kept set of text ids, plus the family's specials (config ids via model=)."""
    text = np.asarray(tm.text_ids)
    chosen = rng.choice(text, size=int(len(text) * frac), replace=False)
    counts = np.zeros(tm.spec.vocab_size, dtype=np.int64)
    counts[chosen] = rng.integers(1, 50, size=chosen.size)
    kept = KeptVocab.from_counts(counts, model=tm.model, extra_ids=tm.special_ids)
    assert tm.spec.vocab_size // 4 < kept.size < tm.spec.vocab_size
    return kept


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name (tied names included), cloned."""
    out = {}
    for name, t in model.named_parameters(remove_duplicate=False):
        out[name] = t.detach().clone()
    for name, t in model.named_buffers(remove_duplicate=False):
        out["buffer:" + name] = t.detach().clone()
    return out


def sharing(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (the ties), as a comparable partition."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(sorted(g) for g in groups.values())


def module_sizes(model: nn.Module) -> dict[str, tuple]:
    sizes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            sizes[name] = ("emb", m.num_embeddings, m.embedding_dim, m.padding_idx)
        elif isinstance(m, nn.Linear):
            sizes[name] = ("lin", m.in_features, m.out_features)
    return sizes


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        assert g.dtype == w.dtype, name
        assert torch.equal(g, w), f"{name} differs"


def assert_tied(model: nn.Module) -> None:
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    assert out.weight is emb.weight
    assert out.weight.data_ptr() == emb.weight.data_ptr()


def ragged_features(
    tm: Tiny, kept: KeptVocab, rng: np.random.Generator, n: int = 5, mlm: bool = False
) -> list[dict]:
    """Sequences of different lengths framed by the family's cls/sep, only kept text ids."""
    text = [i for i in tm.text_ids if i in kept]
    lengths = [11, 3, 7, 1, 9][:n]
    feats = []
    for length in lengths:
        body = [int(x) for x in rng.choice(text, size=length)]
        ids = [tm.spec.specials["cls"], *body, tm.spec.specials["sep"]]
        feat: dict = {"input_ids": ids}
        if mlm:
            labels = [-100] * len(ids)
            masked = list(ids)
            for pos in range(1, len(ids) - 1):
                if pos == 1 or rng.random() < 0.3:
                    labels[pos] = ids[pos]
                    masked[pos] = tm.spec.specials["mask"]
            feat = {"input_ids": masked, "labels": labels}
        feats.append(feat)
    return feats


def pad_collate(pad_id: int):
    """Dynamic padding to the longest sequence of the batch (like DataCollatorWithPadding)."""

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
        for f in features:
            gap = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [pad_id] * gap)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * gap)
            if "labels" in f:
                batch.setdefault("labels", []).append(f["labels"] + [-100] * gap)
            elif "label" in f:
                batch.setdefault("labels", []).append(f["label"])
        return {k: torch.tensor(v) for k, v in batch.items()}

    return collate


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- the factory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family,head", CASES)
def test_factory_builds_what_it_says(family, head):
    tm = build(family, head, seed=seed_of(family, head))
    model, spec = tm.model, tm.spec
    assert not model.training
    emb = model.get_input_embeddings()
    assert type(emb) is nn.Embedding
    assert emb.num_embeddings == spec.vocab_size == model.config.vocab_size
    assert 300 <= spec.vocab_size <= 500
    assert emb.padding_idx == spec.pad == model.config.pad_token_id == spec.specials["pad"]
    for attr in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        value = getattr(model.config, attr, None)
        if value is not None:
            assert value in spec.specials.values(), attr
    assert all(0 <= i < spec.vocab_size for i in tm.special_ids)
    assert not set(tm.text_ids) & set(tm.special_ids)
    out = model.get_output_embeddings()
    if head == "cls":
        assert out is None
        assert model.config.num_labels == 3
    else:
        assert isinstance(out, nn.Linear) and out.out_features == spec.vocab_size
        assert (out.weight is emb.weight) == tm.tied
        assert not torch.equal(out.weight, emb.weight) or tm.tied
    assert sum(p.numel() for p in model.parameters()) < 60_000
    # Seeded: the same seed builds the same weights, another seed other weights.
    again, other = build(family, head, seed=seed_of(family, head)), build(family, head, seed=1)
    assert_same_tensors(snapshot(again.model), snapshot(model))
    assert not torch.equal(other.model.get_input_embeddings().weight, emb.weight)


# -- prune then restore, untouched: the identity -----------------------------------------------


@pytest.mark.parametrize("family,head", CASES)
def test_prune_restore_is_bitwise_identity(family, head):
    tm = build(family, head, seed=seed_of(family, head))
    model = tm.model
    model.get_input_embeddings().weight.requires_grad_(head != "mlm-untied")  # frozen stays so
    before = snapshot(model)
    order = [n for n, _ in model.named_parameters()]
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    ties = sharing(model)
    sizes = module_sizes(model)
    config = model.config.to_dict()
    emb_before = model.get_input_embeddings()
    kept = random_kept(tm, np.random.default_rng(seed_of(family, head, "kept")))

    vocabprune.prune(model, kept)  # the default: an LM head is the frozen one
    assert vocabprune.is_pruned(model)
    assert model.get_input_embeddings().weight.shape[0] == kept.size
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    frozen = model.get_output_embeddings() is not None
    assert vocabprune.get_state(model).frozen_head == frozen
    # A frozen head's logits (and so config.vocab_size) stay over the whole vocabulary.
    assert model.config.vocab_size == (tm.spec.vocab_size if frozen else kept.size)
    vocabprune.restore(model)

    assert not vocabprune.is_pruned(model)
    assert_same_tensors(snapshot(model), before)
    assert [n for n, _ in model.named_parameters()] == order  # optimizer state order
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert sharing(model) == ties
    assert module_sizes(model) == sizes
    assert model.config.to_dict() == config
    emb = model.get_input_embeddings()
    assert emb is emb_before
    assert emb.num_embeddings == tm.spec.vocab_size
    assert emb.padding_idx == tm.spec.pad
    assert model.config.vocab_size == tm.spec.vocab_size
    assert model.config.pad_token_id == tm.spec.pad
    if tm.tied:
        assert_tied(model)
    assert "save_pretrained" not in model.__dict__


# -- while pruned: same modules, consistent config, same outputs --------------------------------


IDS = [pytest.param("original", id="original-ids"), pytest.param("kept", id="kept-ids")]


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize("family,head", CASES)
def test_pruned_forward_matches_full(family, head, ids):
    """ids='original': tokenizer ids in, config ids untouched, logits over the original
    vocabulary outside training; ids='kept': remapped ids in, config ids follow the map."""
    tm = build(family, head, seed=seed_of(family, head))
    model = tm.model
    rng = np.random.default_rng(seed_of(family, head, "fwd"))
    kept = random_kept(tm, rng)
    feats = ragged_features(tm, kept, rng, mlm=head != "cls")
    batch = pad_collate(tm.spec.pad)(feats)
    assert batch["attention_mask"].sum(1).unique().numel() == len(feats)  # really ragged
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    emb = model.get_input_embeddings()
    emb_class = type(emb)
    n_full = trainable(model)
    config_ids = {a: getattr(model.config, a, None) for a in CONFIG_ID_ATTRS}
    config_ids = {a: v for a, v in config_ids.items() if isinstance(v, int)}
    assert config_ids["pad_token_id"] == tm.spec.pad
    # The restricted head (output="prune"): kept-column logits; the frozen default's are
    # tests/test_frozen_head.py's and tests/test_families.py's.
    vocabprune.prune(model, kept, ids=ids, output="auto" if head == "cls" else "prune")

    assert model.get_input_embeddings() is emb and type(emb) is emb_class
    assert emb.num_embeddings == kept.size == emb.weight.shape[0]
    assert emb.padding_idx == kept.new_id(tm.spec.pad)
    assert model.config.vocab_size == kept.size
    for attr, old_id in config_ids.items():
        want_id = kept.new_id(old_id) if ids == "kept" else old_id
        assert getattr(model.config, attr) == want_id, attr
    dim = emb.weight.shape[1]
    n_pruned = trainable(model)
    assert n_pruned < n_full
    if head == "cls":
        assert n_full - n_pruned == (tm.spec.vocab_size - kept.size) * dim
    else:
        head_layer = model.get_output_embeddings()
        assert head_layer.out_features == kept.size == head_layer.weight.shape[0]
        if tm.tied:
            assert_tied(model)

    remapper = IdRemapper(kept)
    new_ids = remapper.to_new(batch["input_ids"])
    assert torch.equal(remapper.to_old(new_ids), batch["input_ids"])
    if head == "cls":
        labels = torch.tensor([0, 2, 1, 1, 0])[: len(feats)]
        new_labels = labels  # class labels are not token ids
    else:
        labels = batch["labels"]
        new_labels = remapper.to_new(labels)
        assert torch.equal(new_labels == -100, labels == -100)
    fed = (batch["input_ids"], labels) if ids == "original" else (new_ids, new_labels)
    with torch.no_grad():
        out = model(input_ids=fed[0], attention_mask=batch["attention_mask"], labels=fed[1])
    small = out.logits
    if head == "cls":
        assert small.shape == full.shape
        assert (small - full).abs().max().item() <= 1e-6
        want_loss = F.cross_entropy(full, labels)
    else:
        want = full[..., torch.as_tensor(kept.kept_ids)]
        if ids == "original":  # spread over the original ids: kept columns, the rest impossible
            assert small.shape == full.shape
            dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
            assert (small[..., dropped] == torch.finfo(small.dtype).min).all()
            small = small[..., torch.as_tensor(kept.kept_ids)]
            assert torch.equal(vocabprune.column_ids(model), torch.as_tensor(kept.kept_ids))
        assert small.shape == want.shape
        assert (small - want).abs().max().item() <= 1e-6
        # The model's own loss (which views logits by config.vocab_size) is the kept softmax.
        want_loss = F.cross_entropy(want.reshape(-1, kept.size), new_labels.reshape(-1))
    assert abs(out.loss.item() - want_loss.item()) <= 1e-6
    vocabprune.restore(model)
    if ids == "original":  # restored: original ids read the full matrix again, no remap
        with torch.no_grad():
            again = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert torch.equal(again.logits, full)


# -- training while pruned equals full fine-tuning ----------------------------------------------


def _train(model, batches, steps, loss_fn, lr=1e-3, own_loss=False):
    # A masked-LM reference (full matmul, dropped columns sliced away) differs from the pruned
    # head by ~1e-7 of float rounding, and Adam divides by the gradient's own scale, so weights
    # with near-zero gradients turn that noise into steps of ~lr. eps=1e-6 (BERT's own AdamW
    # epsilon) and lr=1e-3 keep 4 steps ~16x inside 1e-5 (measured: <= 7e-7); classification
    # and inputs-only pruning are bitwise equal anyway.
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, eps=1e-6)
    for step in range(steps):
        batch = batches[step % len(batches)]
        torch.manual_seed(1000 + step)  # same dropout masks in both runs
        if own_loss:  # the model's own loss: labels go in (in original ids: remapped inside)
            out = model(**batch)
            loss = out.loss
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss = loss_fn(out.logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def _cls_loss(logits, batch):
    return F.cross_entropy(logits, batch["labels"])


def _mlm_loss(columns: torch.Tensor | None):
    """Masked-LM loss; `columns` restricts the full softmax to the kept columns (the objective
    a pruned output head optimises), with labels given as new ids."""

    def loss(logits, batch):
        if columns is not None:
            logits = logits[..., columns]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))

    return loss


def _exactness(family: str, head: str, output: str, ids: str, loss: str) -> None:
    """Pruned training + restore equals full training. ids='kept': batches remapped by
    RemapCollator; ids='original': the stock batches. loss='outside': computed from the logits
    (in original mode, spread over the original vocabulary); 'own': the model's own loss."""
    seed = seed_of(family, head, output)
    tm_full = build(family, head, seed=seed)
    tm = build(family, head, seed=seed)
    original = snapshot(tm.model)
    assert_same_tensors(snapshot(tm_full.model), original)
    rng = np.random.default_rng(seed)
    kept = random_kept(tm, rng)
    mlm = head != "cls"
    feats = [ragged_features(tm, kept, rng, mlm=mlm) for _ in range(2)]
    if not mlm:
        for group in feats:
            for f in group:
                f["label"] = int(rng.integers(0, 3))
    collate = pad_collate(tm.spec.pad)
    full_batches = [collate(g) for g in feats]
    restricted = mlm and output != "keep"  # the pruned head's softmax: kept ids only
    remapper = IdRemapper(kept)

    index = torch.as_tensor(kept.kept_ids)
    if not mlm:
        full_loss = small_loss = _cls_loss
        ref_batches = full_batches
    elif restricted:  # the reference restricts the full logits; labels as kept columns
        full_loss, small_loss = _mlm_loss(index), _mlm_loss(None)
        ref_batches = [{**b, "labels": remapper.to_new(b["labels"])} for b in full_batches]
    else:  # inputs-only pruning: the full softmax, labels stay original ids
        full_loss = small_loss = _mlm_loss(None)
        ref_batches = full_batches

    with torch.no_grad():  # dropout really is on in training mode
        tm_full.model.train()
        runs = []
        for seed_ in (1, 2):
            torch.manual_seed(seed_)
            b = full_batches[0]
            runs.append(tm_full.model(b["input_ids"], attention_mask=b["attention_mask"]).logits)
        tm_full.model.eval()
        assert not torch.equal(*runs)

    steps = 4
    _train(tm_full.model, ref_batches, steps, full_loss)
    vocabprune.prune(tm.model, kept, output=output, ids=ids)
    if ids == "kept":
        remap = RemapCollator(collate, tm.model, remap_labels=restricted)
        small_batches = [remap(g) for g in feats]
        assert not torch.equal(small_batches[0]["input_ids"], full_batches[0]["input_ids"])
    else:
        small_batches = full_batches
    _train(tm.model, small_batches, steps, small_loss, own_loss=loss == "own")
    vocabprune.restore(tm.model)

    got, want = snapshot(tm.model), snapshot(tm_full.model)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        diff = (got[name] - want[name]).abs().max().item() if want[name].numel() else 0.0
        assert diff <= 1e-5, f"{name}: max abs diff {diff}"
    assert sharing(tm.model) == sharing(tm_full.model)
    if tm.tied:
        assert_tied(tm.model)

    dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
    emb_name = next(
        n for n, p in tm.model.named_parameters() if p is tm.model.get_input_embeddings().weight
    )
    restored_emb = got[emb_name]
    assert torch.equal(restored_emb[dropped], original[emb_name][dropped])
    used = full_batches[0]["input_ids"][full_batches[0]["attention_mask"].bool()].unique()
    used_old = used
    assert not torch.equal(restored_emb[used_old], original[emb_name][used_old]), "no training?"
    if mlm and output != "keep":
        head_layer = tm.model.get_output_embeddings()
        for pname, p in head_layer.named_parameters():
            key = next(n for n, q in tm.model.named_parameters() if q is p)
            assert torch.equal(p.detach()[dropped], original[key][dropped]), pname
    if mlm and output == "keep":  # the untouched full head trained over every row
        key = next(
            n
            for n, q in tm.model.named_parameters()
            if q is tm.model.get_output_embeddings().weight
        )
        assert not torch.equal(got[key][dropped], original[key][dropped])


TRAININGS = [
    pytest.param("kept", "outside", id="kept-ids"),
    pytest.param("original", "outside", id="original-ids"),
    pytest.param("original", "own", id="original-ids-own-loss"),
]


@pytest.mark.parametrize("ids,loss", TRAININGS)
@pytest.mark.parametrize("family,head", CASES)
def test_training_while_pruned_equals_full_finetuning(family, head, ids, loss):
    _exactness(family, head, "auto" if head == "cls" else "prune", ids, loss)  # restricted head


@pytest.mark.parametrize("ids,loss", TRAININGS)
@pytest.mark.parametrize("family", FAMILY_CASES)
def test_inputs_only_pruning_trains_like_full_softmax(family, ids, loss):
    _exactness(family, "mlm-untied", "keep", ids, loss)


@pytest.mark.parametrize("family", FAMILY_CASES)
def test_keep_refuses_a_tied_head(family):
    tm = build(family, "mlm")
    kept = random_kept(tm, np.random.default_rng(1))
    before = snapshot(tm.model)
    with pytest.raises(UnsupportedModelError):
        vocabprune.prune(tm.model, kept, output="keep")
    assert not vocabprune.is_pruned(tm.model)
    assert_same_tensors(snapshot(tm.model), before)


# -- saves while pruned are full-vocabulary -----------------------------------------------------


def _auto(head: str):
    return AutoModelForSequenceClassification if head == "cls" else AutoModelForMaskedLM


def config_dict(model: nn.Module) -> dict:
    """The config, less what stock save_pretrained itself records (architectures, dtype)."""
    return {k: v for k, v in model.config.to_dict().items() if k not in ("architectures", "dtype")}


def _perturb_kept_rows(model: nn.Module, seed: int) -> None:
    """Stand in for training: change every live (kept) vocabulary tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for record in vocabprune.get_state(model).tensors:
            live = record.live()
            live.add_(torch.randn(live.shape, generator=gen))


@pytest.mark.parametrize("family,head", CASES)
def test_save_pretrained_while_pruned_is_full_and_stock_loadable(family, head, tmp_path):
    tm = build(family, head, seed=seed_of(family, head))
    model = tm.model
    original = snapshot(model)
    full_config = config_dict(model)
    kept = random_kept(tm, np.random.default_rng(seed_of(family, head, "save")))
    vocabprune.prune(model, kept)
    _perturb_kept_rows(model, seed_of(family, "perturb"))
    pruned_config = config_dict(model)
    pruned_sd = model.state_dict()

    model.save_pretrained(tmp_path / "saved")
    # Still pruned, config still the pruned one, state_dict unchanged by saving.
    assert vocabprune.is_pruned(model)
    assert config_dict(model) == pruned_config
    assert model.get_input_embeddings().weight.shape[0] == kept.size
    for key, value in model.state_dict().items():
        assert torch.equal(value, pruned_sd[key]), key

    loaded = _auto(head).from_pretrained(tmp_path / "saved")
    loaded.eval()
    assert loaded.config.vocab_size == tm.spec.vocab_size
    assert loaded.config.pad_token_id == tm.spec.pad
    assert loaded.get_input_embeddings().weight.shape == (
        tm.spec.vocab_size,
        model.get_input_embeddings().weight.shape[1],
    )
    assert loaded.get_input_embeddings().padding_idx == tm.spec.pad

    vocabprune.restore(model)
    assert config_dict(model) == full_config
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["vocab_size"] == tm.spec.vocab_size
    for attr, value in full_config.items():
        if attr.endswith("token_id") and value is not None:
            assert saved_config[attr] == value, attr
    restored = snapshot(model)
    assert_same_tensors(snapshot(loaded), restored)
    assert sharing(loaded) == sharing(model)
    if tm.tied:
        assert_tied(loaded)
    # The state_dict taken while pruned was the full one, equal to the restored model's.
    for key, value in model.state_dict().items():
        assert torch.equal(pruned_sd[key], value), key
    # Training changed kept rows only: dropped rows are the original ones.
    emb_name = next(
        n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight
    )
    dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
    kept_rows = torch.as_tensor(kept.kept_ids)
    assert torch.equal(restored[emb_name][dropped], original[emb_name][dropped])
    assert not torch.equal(restored[emb_name][kept_rows], original[emb_name][kept_rows])


@pytest.mark.parametrize("family,head", CASES)
def test_prune_restore_of_a_checkpoint_loaded_model(family, head, tmp_path):
    """Loaded from safetensors, the original rows come back from the checkpoint itself; a
    matrix changed after loading, even in one row, is offloaded instead."""
    tm = build(family, head, seed=seed_of(family, head))
    tm.model.save_pretrained(tmp_path)
    model = _auto(head).from_pretrained(tmp_path)
    model.eval()
    before = snapshot(model)
    ties = sharing(model)
    kept = random_kept(Tiny(family, head, model, tm.spec), np.random.default_rng(7))
    state = vocabprune.prune(model, kept)
    stores = [t.store.description for t in state.tensors]
    assert all(d.startswith("checkpoint") for d in stores), stores
    vocabprune.restore(model)
    assert_same_tensors(snapshot(model), before)
    assert sharing(model) == ties

    # Change one dropped row, away from evenly spaced sample rows (a sampled check misses it).
    n = tm.spec.vocab_size
    sampled = {round(i * (n - 1) / 7) for i in range(8)}
    row = next(i for i in range(n // 2, n) if i not in kept and i not in sampled)
    with torch.no_grad():
        model.get_input_embeddings().weight[row] += 1.0
    changed = snapshot(model)
    state = vocabprune.prune(model, kept)
    emb_store = next(
        t.store
        for t in state.tensors
        if any(m is model.get_input_embeddings() for m, _, _ in t.owners)
    )
    assert not emb_store.description.startswith("checkpoint")
    vocabprune.restore(model)
    assert_same_tensors(snapshot(model), changed)
    assert sharing(model) == ties


@pytest.mark.parametrize("family", FAMILY_CASES)
def test_save_while_pruned_into_the_source_folder(family, tmp_path):
    """Saving over the checkpoint that holds the original rows moves them out first, so restore
    still applies the tracked weight decay once (not twice)."""
    from vocabprune.train.decay import track_weight_decay

    tm = build(family, "mlm", seed=seed_of(family, "src"))
    tm.model.save_pretrained(tmp_path)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path)
    before = snapshot(model)
    emb_name = next(
        n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight
    )
    kept = random_kept(Tiny(family, "mlm", model, tm.spec), np.random.default_rng(5))
    vocabprune.prune(model, kept)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    track_weight_decay(opt, model)
    for _ in range(3):
        model.zero_grad()
        ids = torch.as_tensor([tm.special_ids])
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    factor = (1 - 0.1 * 0.5) ** 3
    model.save_pretrained(tmp_path)
    vocabprune.restore(model)
    dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
    got = model.get_input_embeddings().weight.detach()[dropped]
    want = before[emb_name][dropped] * factor
    assert (got - want).abs().max().item() <= 1e-6
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert_same_tensors(snapshot(reloaded), snapshot(model))


def test_a_checkpoint_rewritten_behind_our_back_is_refused(tmp_path):
    tm = build("bert", "cls", seed=1)
    tm.model.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    kept = random_kept(Tiny("bert", "cls", model, tm.spec), np.random.default_rng(5))
    state = vocabprune.prune(model, kept)
    assert state.tensors[0].store.description.startswith("checkpoint")
    build("bert", "cls", seed=2).model.save_pretrained(tmp_path)  # another model, same folder
    pruned = snapshot(model)
    with pytest.raises(MismatchError, match="rewritten"):
        vocabprune.restore(model)
    assert vocabprune.is_pruned(model)  # nothing changed: restore reads before it writes
    assert_same_tensors(snapshot(model), pruned)


@pytest.mark.parametrize("family,head", CASES)
def test_load_full_state_dict_into_pruned_model(family, head):
    seed = seed_of(family, head)
    tm = build(family, head, seed=seed)
    other = build(family, head, seed=seed + 1).model
    other_sd = {k: v.clone() for k, v in other.state_dict().items()}
    kept = random_kept(tm, np.random.default_rng(seed_of(family, head, "load")))
    model = tm.model
    vocabprune.prune(model, kept)
    index = torch.as_tensor(kept.kept_ids)

    result = model.load_state_dict(other_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    emb = model.get_input_embeddings()
    assert emb.weight.shape[0] == kept.size
    assert torch.equal(emb.weight.detach(), other.get_input_embeddings().weight.detach()[index])
    if head != "cls":
        out = model.get_output_embeddings()
        other_out = other.get_output_embeddings()
        assert torch.equal(out.weight.detach(), other_out.weight.detach()[index])
        assert torch.equal(out.bias.detach(), other_out.bias.detach()[index])
        if tm.tied:
            assert_tied(model)
    # A state dict taken while pruned (full) round-trips into a fresh pruned copy bitwise.
    sd = model.state_dict()
    fresh = build(family, head, seed=seed).model
    vocabprune.prune(fresh, kept)
    fresh.load_state_dict(sd, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, sd[key]), key
    vocabprune.restore(fresh)
    vocabprune.restore(model)
    assert_same_tensors(snapshot(fresh), snapshot(model))


# -- refusals ------------------------------------------------------------------------------------


class WrappedEmbedding(nn.Module):
    def __init__(self, inner: nn.Embedding) -> None:
        super().__init__()
        self.inner = inner
        self.weight = inner.weight

    def forward(self, ids):
        return self.inner(ids)


@pytest.mark.parametrize("family", FAMILY_CASES)
def test_refusals(family):
    tm = build(family, "cls")
    model = tm.model
    kept = random_kept(tm, np.random.default_rng(3))
    before = snapshot(model)

    with pytest.raises(VocabPruneError, match="not pruned"):
        vocabprune.restore(model)

    other = KeptVocab.from_counts(np.ones(tm.spec.vocab_size + 5, dtype=np.int64))
    with pytest.raises(MismatchError):
        vocabprune.prune(model, other)
    smaller = KeptVocab.from_counts(np.ones(tm.spec.vocab_size - 5, dtype=np.int64))
    with pytest.raises(MismatchError):
        vocabprune.prune(model, smaller)
    assert not vocabprune.is_pruned(model)
    assert_same_tensors(snapshot(model), before)

    vocabprune.prune(model, kept)
    pruned = snapshot(model)
    with pytest.raises(VocabPruneError, match="already pruned"):
        vocabprune.prune(model, kept)
    assert_same_tensors(snapshot(model), pruned)
    vocabprune.restore(model)
    with pytest.raises(VocabPruneError, match="not pruned"):
        vocabprune.restore(model)
    assert_same_tensors(snapshot(model), before)

    wrapped = copy.deepcopy(model)
    wrapped.set_input_embeddings(WrappedEmbedding(wrapped.get_input_embeddings()))
    assert not isinstance(wrapped.get_input_embeddings(), nn.Embedding)
    with pytest.raises(UnsupportedModelError):
        vocabprune.prune(wrapped, kept)
    assert not vocabprune.is_pruned(wrapped)


@pytest.mark.parametrize("family", FAMILY_CASES)
def test_pruned_context_restores_after_an_error(family):
    tm = build(family, "mlm")
    before = snapshot(tm.model)
    kept = random_kept(tm, np.random.default_rng(11))
    with pytest.raises(RuntimeError, match="boom"), vocabprune.pruned(tm.model, kept):
        assert tm.model.get_input_embeddings().weight.shape[0] == kept.size
        with torch.no_grad():
            tm.model.get_input_embeddings().weight.zero_()
        raise RuntimeError("boom")
    assert not vocabprune.is_pruned(tm.model)
    after = snapshot(tm.model)
    emb_name = next(
        n for n, p in tm.model.named_parameters() if p is tm.model.get_input_embeddings().weight
    )
    dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
    assert torch.equal(after[emb_name][dropped], before[emb_name][dropped])
    assert not after[emb_name][torch.as_tensor(kept.kept_ids)].any()  # trained rows written back
    assert_tied(tm.model)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "mpnet"])
def test_a_pad_id_used_as_position_offset_may_move_with_original_ids(family):
    """RoBERTa-style embeddings count positions from the pad id. A kept vocabulary without id 0
    renumbers the pad (1 -> 0): reading original ids the model needs no workaround; reading kept
    ids it would, so ids='kept' refuses it."""
    tm = build(family, "cls", seed=seed_of(family, "offset"))
    model = tm.model
    pad = tm.spec.pad
    ids = [i for i in range(1, tm.spec.vocab_size) if i % 3 == 0 or i in (pad, 2, 3)]
    kept = KeptVocab(
        kept_ids=np.array(ids), counts=np.ones(len(ids)), vocab_size=tm.spec.vocab_size
    )
    assert kept.new_id(pad) != pad
    text = [i for i in ids if i > 3]
    batch = pad_collate(pad)([{"input_ids": text[:9]}, {"input_ids": text[10:14]}])
    with torch.no_grad():
        full = model(**batch).logits
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="position offset"):
        vocabprune.prune(model, kept, ids="kept")
    assert not vocabprune.is_pruned(model)
    assert_same_tensors(snapshot(model), before)
    vocabprune.prune(model, kept)
    assert model.config.pad_token_id == pad
    assert model.get_input_embeddings().padding_idx == kept.new_id(pad)
    with torch.no_grad():
        got = model(**batch).logits
    assert (got - full).abs().max().item() <= 1e-6
    vocabprune.restore(model)
