"""The families users fine-tune (vision-language, speech, translation, MoE, logit scaling,
state-space, token/span encoders), one tiny config-built model each (tests/tiny_models.ZOO), each
checked the same way against the unpruned model: forward, greedy generate, restore, save while
pruned, one training step, and the pruned model's own LM loss.

The last check is the one that catches a silently wrong loss (labels remapped twice, a vocabulary
size left full in a sub-config): it compares the pruned model's loss with the cross-entropy over
the kept columns of the UNPRUNED logits. A new family is one entry in ZOO.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import FV, ZOO, Family

import vocabprune as vp
from vocabprune import KeptVocab
from vocabprune.core.model import embedding_shape

ENTRIES = [pytest.param(f, id=f.name) for f in ZOO]
GENERATIVE = [pytest.param(f, id=f.name) for f in ZOO if f.generative]
SPEECH_FRAMES = 16  # 2 x max_source_positions of the tiny Whisper
SRC, TGT = 8, 6


def text_pool(fam: Family, seed: int) -> list[int]:
    """The ids the data uses: 40% of the text ids, never id 8 (so every id above renumbers)."""
    rng = np.random.default_rng(seed)
    text = [i for i in range(9, FV - 8) if i not in fam.specials and i not in range(100, 104)]
    return sorted(rng.choice(text, size=int(0.4 * len(text)), replace=False).tolist())


def batch_for(fam: Family, pool: list[int], seed: int, labels: bool = True) -> dict:
    """A batch in original ids, with the family's labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.as_tensor(pool)
    pick = lambda *shape: ids[torch.randint(len(pool), shape, generator=g)]  # noqa: E731
    batch: dict = {}
    if fam.kind == "speech":
        batch["input_features"] = torch.randn(2, 8, SPEECH_FRAMES, generator=g)
    else:
        batch["input_ids"] = pick(2, SRC)
        batch["attention_mask"] = torch.ones(2, SRC, dtype=torch.long)
    if not labels:
        return batch
    if fam.kind == "causal":
        batch["labels"] = batch["input_ids"].clone()
        batch["labels"][0, :2] = -100
    elif fam.kind in ("seq2seq", "speech"):
        batch["labels"] = pick(2, TGT)
        batch["labels"][0, -1] = -100
    elif fam.kind == "tokens":
        batch["labels"] = torch.randint(3, (2, SRC), generator=g)
    else:
        batch["start_positions"] = torch.tensor([1, 2])
        batch["end_positions"] = torch.tensor([3, 5])
    return batch


def kept_for(model, fam: Family, *ids) -> KeptVocab:
    counts = np.zeros(embedding_shape(model)[0], dtype=np.int64)
    for group in ids:
        counts[np.asarray(group, dtype=np.int64).reshape(-1)] += 1
    return KeptVocab.from_counts(counts, model=model, extra_ids=fam.specials)


def decoder_inputs(fam: Family, pool: list[int]) -> dict:
    if fam.kind not in ("seq2seq", "speech"):
        return {}
    return {"decoder_input_ids": torch.as_tensor([pool[:TGT], pool[-TGT:]])}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def hidden(out) -> torch.Tensor:
    states = getattr(out, "decoder_hidden_states", None) or out.hidden_states
    return states[-1]


def head_kind(model) -> str:
    """'tied', 'untied' or 'none': how the model's output head relates to its input embedding."""
    head = model.get_output_embeddings()
    if head is None:
        return "none"
    return "tied" if head.weight is model.get_input_embeddings().weight else "untied"


# -- forward ----------------------------------------------------------------------------------


@pytest.mark.device
@pytest.mark.parametrize("output", ["auto", "prune"])
@pytest.mark.parametrize("fam", ENTRIES)
def test_forward_equals_the_unpruned_model(fam, output, device):
    """Hidden states equal; logits: the default (frozen) head's equal everywhere, the restricted
    head's (output="prune") equal at the kept columns, impossible elsewhere (on the test device:
    tests/conftest.py)."""
    model = fam.build().to(device)
    if output == "prune" and head_kind(model) == "none":
        pytest.skip("no output head: the default prunes the input embedding alone")
    pool = text_pool(fam, 0)
    inputs = {**batch_for(fam, pool, 1, labels=False), **decoder_inputs(fam, pool)}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
    kept = kept_for(model, fam, pool)
    state = vp.prune(model, kept, output=output)
    assert state.frozen_head == (output == "auto" and head_kind(model) != "none")
    with torch.no_grad():
        small = model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(hidden(small), hidden(full), rtol=0, atol=1e-6)
    if head_kind(model) == "none":
        for key in ("logits", "start_logits", "end_logits"):
            if getattr(full, key, None) is not None:
                torch.testing.assert_close(getattr(small, key), getattr(full, key))
    elif state.frozen_head:
        torch.testing.assert_close(small.logits, full.logits)
    else:
        assert small.logits.shape == full.logits.shape
        cols = torch.as_tensor(kept.kept_ids, device=device)
        torch.testing.assert_close(small.logits[..., cols], full.logits[..., cols])
        dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0), device=device)
        assert (small.logits[..., dropped] == torch.finfo(small.logits.dtype).min).all()
    vp.restore(model)


@pytest.mark.parametrize("fam", [pytest.param(f, id=f.name) for f in ZOO if f.config_ids])
def test_config_ids_of_every_modality_are_kept(fam):
    """Image/video/boi/eoi/vision ids and the decoder start, wherever the config names them
    (sub-configs included), are kept by a kept vocabulary built with model=..."""
    model = fam.build()
    kept = kept_for(model, fam, text_pool(fam, 0))
    missing = [i for i in fam.config_ids if i not in kept]
    assert not missing, f"config ids {missing} not kept"


# -- generate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["auto", "prune"])
@pytest.mark.parametrize("fam", GENERATIVE)
def test_greedy_generate_is_identical(fam, output):
    """The kept vocabulary holds every token the full model generates: the frozen head (the
    default) and the restricted one, whose stock generate() decodes over the kept ids
    (core/decoding.py), give the full model's tokens."""
    model = fam.build()
    pool = text_pool(fam, 2)
    inputs = batch_for(fam, pool, 3, labels=False)
    args = {"max_new_tokens": 4, "do_sample": False, "min_new_tokens": 4}
    with torch.no_grad():
        want = model.generate(**inputs, **args)
    vp.prune(model, kept_for(model, fam, pool, want), output=output)
    with torch.no_grad():
        got = model.generate(**inputs, **args)
    assert torch.equal(got, want)
    vp.restore(model)


# -- restore and saves ------------------------------------------------------------------------


@pytest.mark.parametrize("fam", ENTRIES)
def test_restore_is_bitwise(fam):
    model = fam.build()
    before = snapshot(model)
    config = model.config.to_dict()
    pool = text_pool(fam, 4)
    batch = batch_for(fam, pool, 5)
    vp.prune(model, kept_for(model, fam, pool))
    with torch.no_grad():
        model(**batch)
    vp.restore(model)
    after = snapshot(model)
    assert sorted(after) == sorted(before)
    for key, want in before.items():
        assert after[key].shape == want.shape and torch.equal(after[key], want), key
    assert model.config.to_dict() == config


@pytest.mark.parametrize("fam", ENTRIES)
def test_save_while_pruned_loads_with_stock_from_pretrained(fam, tmp_path):
    model = fam.build()
    before = snapshot(model)
    pool = text_pool(fam, 6)
    vp.prune(model, kept_for(model, fam, pool))
    model.save_pretrained(tmp_path)
    assert vp.is_pruned(model)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.get_text_config().vocab_size == FV
    state = loaded.state_dict()
    for key, want in before.items():
        assert torch.equal(state[key], want), key
    vp.restore(model)


# -- training ---------------------------------------------------------------------------------


def _step(model, fam: Family, batch: dict, lm_loss: bool) -> None:
    """One SGD step: the model's own loss when `lm_loss` or a task head, else a loss on the
    last hidden states (reaches the embedding through its inputs only)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(7)
    if lm_loss or fam.kind in ("tokens", "spans"):
        loss = model(**batch).loss
    else:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(
            **inputs,
            **decoder_inputs(fam, sorted(set(batch["labels"][1].tolist()))),
            output_hidden_states=True,
        )
        loss = hidden(out).pow(2).mean()
    loss.backward()
    opt.step()
    model.eval()


@pytest.mark.parametrize("fam", ENTRIES)
def test_one_training_step_then_restore_equals_the_unpruned_run(fam):
    """Input-only loss (tied or no head), or the LM loss with output='keep' (untied head)."""
    pool = text_pool(fam, 8)
    batch = batch_for(fam, pool, 9)
    lm_loss = head_kind(fam.build()) == "untied"
    full = fam.build()
    _step(full, fam, batch, lm_loss)
    model = fam.build()
    vp.prune(model, kept_for(model, fam, pool), output="keep" if lm_loss else "auto")
    _step(model, fam, batch, lm_loss)
    vp.restore(model)
    want, got = snapshot(full), snapshot(model)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


# -- the model's own LM loss ------------------------------------------------------------------


def kept_column_loss(fam: Family, logits: torch.Tensor, labels: torch.Tensor, kept: KeptVocab):
    """Cross-entropy over the kept columns of full logits, labels as kept ids."""
    cols = torch.as_tensor(kept.kept_ids)
    small = logits[..., cols].float()
    target = vp.IdRemapper(kept).to_new(labels)
    if fam.kind == "causal":  # next-token: the model shifts its labels itself
        small, target = small[:, :-1], target[:, 1:]
    return F.cross_entropy(small.reshape(-1, small.shape[-1]), target.reshape(-1))


# Head mode -> the loss the pruned model's own loss must equal, from the unpruned logits. A new
# head mode is one entry here.
HEAD_LOSSES = {"prune": kept_column_loss}


@pytest.mark.parametrize("output", list(HEAD_LOSSES))
@pytest.mark.parametrize("fam", [p for p in GENERATIVE])
def test_pruned_lm_loss_is_the_kept_column_cross_entropy(fam, output):
    """The LM training path (labels given, head pruned): its loss is the cross-entropy over the
    kept columns of the unpruned logits, with or without gradients."""
    model = fam.build()
    pool = text_pool(fam, 10)
    batch = batch_for(fam, pool, 11)
    with torch.no_grad():
        full = model(**batch)
    kept = kept_for(model, fam, pool)
    want = HEAD_LOSSES[output](fam, full.logits, batch["labels"], kept)
    vp.prune(model, kept, output=output)
    with torch.no_grad():
        assert float(model(**batch).loss) == pytest.approx(float(want), rel=1e-5)
    out = model(**batch)  # training: kept-column logits
    if output == "prune":
        assert out.logits.shape[-1] == kept.size
    assert float(out.loss) == pytest.approx(float(want), rel=1e-5)
    out.loss.backward()
    vp.restore(model)


# -- every way a model is handed over ---------------------------------------------------------


def _peft(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return peft.get_peft_model(model, config)


WRAPPERS = {
    "compiled": lambda m: torch.compile(m, backend="eager"),
    "data-parallel": torch.nn.DataParallel,
    "peft": _peft,
}


@pytest.mark.parametrize("wrap", list(WRAPPERS))
def test_every_public_function_takes_a_wrapped_model(wrap):
    """One unwrap rule: compiled, `.module` and PEFT wrappers are the model inside for
    KeptVocab/build_kept_vocab(model=...), prune, get_state and restore."""
    fam = next(f for f in ZOO if f.name == "cohere")
    model = fam.build()
    before = snapshot(model)
    pool = text_pool(fam, 12)
    batch = batch_for(fam, pool, 13, labels=False)
    with torch.no_grad():
        want = model(**batch).logits
    wrapped = WRAPPERS[wrap](model)
    kept = kept_for(wrapped, fam, pool)
    assert kept == kept_for(model, fam, pool)
    vp.prune(wrapped, kept)
    assert vp.get_state(wrapped) is vp.get_state(model) is not None
    assert model.get_input_embeddings().weight.shape[0] == kept.size
    runner = model if wrap == "compiled" else wrapped  # compiling takes minutes on a CPU
    with torch.no_grad():
        got = runner(**batch).logits
    cols = torch.as_tensor(kept.kept_ids)
    torch.testing.assert_close(got[..., cols], want[..., cols])
    vp.restore(wrapped)
    assert not vp.is_pruned(model)
    after = snapshot(model)  # LoRA renames the layers it wraps: compare what is still there
    assert "model.embed_tokens.weight" in after
    for key in before.keys() & after.keys():
        assert torch.equal(after[key], before[key]), key


def test_build_kept_vocab_takes_a_sentence_transformer_as_model(minilm_dir, minilm_tokenizer):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    texts = ["Shares rose after the results.", "The match ended in a draw."]
    by_model = vp.build_kept_vocab(minilm_tokenizer, texts, model=model)
    by_wrapper = vp.build_kept_vocab(model, texts)
    assert by_model.kept_ids.tolist() == by_wrapper.kept_ids.tolist()
    assert by_model.embedding_shape == (30522, 384)


# -- resizing, copying, pickling while pruned ---------------------------------------------------


def _pruned(name: str = "granite", seed: int = 14):
    fam = next(f for f in ZOO if f.name == name)
    model = fam.build()
    pool = text_pool(fam, seed)
    kept = kept_for(model, fam, pool)
    before = snapshot(model)
    vp.prune(model, kept)
    return fam, model, pool, kept, before


def test_resizing_while_pruned_is_refused_before_anything_changes():
    fam, model, pool, kept, before = _pruned()
    emb = model.get_input_embeddings()
    with pytest.raises(vp.VocabPruneError, match="add tokens before pruning"):
        model.resize_token_embeddings(FV + 8)
    assert vp.is_pruned(model) and model.get_input_embeddings() is emb
    assert emb.weight.shape[0] == kept.size
    # A resize to the size the vocabulary already has (TRL's chat-format helper) changes nothing.
    assert model.resize_token_embeddings(FV) is emb
    assert model.resize_token_embeddings(FV - 2, pad_to_multiple_of=8) is emb
    vp.restore(model)
    after = snapshot(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    model.resize_token_embeddings(FV + 8)  # an ordinary model again
    assert model.get_input_embeddings().weight.shape[0] == FV + 8


def test_a_matrix_swapped_while_pruned_is_named_at_restore():
    """A resize that bypasses resize_token_embeddings is caught before restore changes anything."""
    fam, model, pool, kept, before = _pruned()
    emb = model.get_input_embeddings()
    emb.weight = torch.nn.Parameter(torch.zeros(kept.size + 3, emb.embedding_dim))
    with pytest.raises(vp.VocabPruneError, match="resized while pruned"):
        vp.restore(model)
    assert vp.is_pruned(model)


def test_tokens_added_before_pruning_are_kept_and_restored():
    fam = next(f for f in ZOO if f.name == "granite")
    model = fam.build()
    model.resize_token_embeddings(FV + 3)
    model.config.eos_token_id = FV + 2  # a new special named by the config
    before = snapshot(model)
    pool = [*text_pool(fam, 15), FV, FV + 1]
    kept = kept_for(model, fam, pool)
    assert kept.vocab_size == FV + 3 and FV + 2 in kept
    batch = batch_for(fam, pool, 16)
    with torch.no_grad():
        want = kept_column_loss(fam, model(**batch).logits, batch["labels"], kept)
    vp.prune(model, kept, output="prune")  # the restricted head: the kept-column loss
    with torch.no_grad():
        assert float(model(**batch).loss) == pytest.approx(float(want), rel=1e-5)
    vp.restore(model)
    after = snapshot(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_deepcopy_is_an_independent_pruned_model_that_restores():
    import copy

    fam, model, pool, kept, before = _pruned()
    twin = copy.deepcopy(model)
    batch = batch_for(fam, pool, 17)
    _step(twin, fam, batch, lm_loss=True)  # train the copy only
    vp.restore(model)  # the original restores untouched, and its store goes away
    after = snapshot(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert vp.is_pruned(twin)
    with torch.no_grad():  # the copy's hooks are its own: still live after the original's went
        twin(**batch)
    vp.restore(twin)
    trained = snapshot(twin)
    reference = fam.build()  # the same step on a model pruned directly
    vp.prune(reference, kept)
    _step(reference, fam, batch, lm_loss=True)
    vp.restore(reference)
    for key, value in snapshot(reference).items():
        assert torch.equal(trained[key], value), key
    dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
    key = "model.embed_tokens.weight"
    assert torch.equal(trained[key][dropped], before[key][dropped])
    assert not torch.equal(trained[key], before[key])
    twin2 = copy.deepcopy(twin)  # a restored model copies as an ordinary model
    assert not vp.is_pruned(twin2)


def test_pickle_is_refused_in_one_line_naming_the_alternatives():
    import pickle

    fam, model, *_ = _pruned()
    with pytest.raises(vp.VocabPruneError, match="deepcopy") as info:
        pickle.dumps(model)
    assert "\n" not in str(info.value)
    vp.restore(model)
    assert isinstance(pickle.loads(pickle.dumps(model)), type(model))


# -- the command line: translation with language codes, a vision-language model's text --------

PAIRS = [
    ("the markets fell sharply", "die maerkte fielen stark"),
    ("the match ended in a draw", "das spiel endete unentschieden"),
    ("shares rose again", "aktien stiegen wieder"),
] * 4


def _cli(*argv: str) -> tuple[int, dict | None, str]:
    import contextlib
    import io
    import json

    from vocabprune.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["finetune", *argv, "--json"])
    return code, (json.loads(out.getvalue()) if code == 0 else None), err.getvalue()


@pytest.fixture(scope="module")
def nllb_folder(tmp_path_factory):
    """A tiny M2M100 (NLLB architecture) and an NLLB tokenizer (characters + language codes)."""
    import json

    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    chars = sorted({c for pair in PAIRS for text in pair for c in text.replace(" ", "")})
    chars += list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # pieces the data never uses
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    vocab.update({c: 5 + i for i, c in enumerate(chars)})
    tokenizer = NllbTokenizer(vocab=vocab)
    root = tmp_path_factory.mktemp("nllb")
    torch.manual_seed(0)
    cfg = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    M2M100ForConditionalGeneration(cfg).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "pairs.jsonl").write_text("\n".join(json.dumps({"src": s, "tgt": t}) for s, t in PAIRS))
    return root


SEQ2SEQ = ["--task", "seq2seq", "--text-column", "src,tgt", "--max-steps", "2"]
SEQ2SEQ += ["--batch-size", "4", "--lr", "1e-3", "--max-length", "32", "--eval-fraction", "0"]


def test_cli_seq2seq_with_language_codes(nllb_folder, tmp_path):
    from safetensors.torch import load_file

    model, data = str(nllb_folder / "model"), str(nllb_folder / "pairs.jsonl")
    common = [*SEQ2SEQ, "--model", model, "--data", data]
    code, _, err = _cli(*common, "--out", str(tmp_path / "none"))
    assert code == 2 and "--source-lang and --target-lang" in err
    code, _, err = _cli(
        *common,
        "--source-lang",
        "eng_Latn",
        "--target-lang",
        "xx_Latn",
        "--out",
        str(tmp_path / "bad"),
    )
    assert code == 2 and "'xx_Latn' is not a language code" in err
    code, report, err = _cli(
        *common,
        "--source-lang",
        "eng_Latn",
        "--target-lang",
        "deu_Latn",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    assert report["target_lang"] == "deu_Latn"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    kept = vp.KeptVocab.load(tmp_path / "out" / "kept_vocab.json")
    assert tok.convert_tokens_to_ids("eng_Latn") in kept
    assert tok.convert_tokens_to_ids("deu_Latn") in kept
    assert tok.convert_tokens_to_ids("Q") not in kept
    before = load_file(nllb_folder / "model" / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    key = "model.shared.weight"
    dropped = torch.as_tensor(np.flatnonzero(kept.old_to_new < 0))
    assert after[key].shape == before[key].shape
    assert torch.equal(after[key][dropped], before[key][dropped])


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory, minilm_tokenizer):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    root = tmp_path_factory.mktemp("llava")
    vocab = len(minilm_tokenizer)
    torch.manual_seed(0)
    text = {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 101,
        "eos_token_id": 102,
    }
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    }
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_index=vocab - 1)
    LlavaForConditionalGeneration(cfg).save_pretrained(root)
    minilm_tokenizer.save_pretrained(root)
    return root


def test_cli_causal_lm_on_a_vision_language_models_text(llava_folder, nllb_folder, tmp_path):
    from transformers import AutoModelForImageTextToText

    argv = ["--task", "causal-lm", "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3"]
    argv += ["--max-length", "32", "--limit", "12", "--eval-fraction", "0.25"]
    code, report, err = _cli(*argv, "--model", str(llava_folder), "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert report["pruned"] and report["eval_perplexity"] > 1
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "o")
    assert model.config.text_config.vocab_size == 30522
    assert model.get_input_embeddings().weight.shape[0] == 30522
    # An encoder-decoder has no causal-LM head: refused before anything runs, naming the task.
    code, _, err = _cli(*argv, "--model", str(nllb_folder / "model"), "--out", str(tmp_path / "x"))
    assert code == 2 and "--task seq2seq" in err


def test_a_sub_config_of_another_vocabulary_is_left_alone():
    """bert2gpt2-style: the decoder's config describes another vocabulary (its eos is no id of
    the encoder's): its ids are neither forced into the kept vocabulary nor renumbered."""
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, GPT2Config

    enc = BertConfig(
        vocab_size=FV,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    dec = GPT2Config(
        vocab_size=FV + 200,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=FV + 199,
        eos_token_id=FV + 199,
    )
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    torch.manual_seed(0)
    model = EncoderDecoderModel(config=cfg).eval()
    counts = np.zeros(FV, dtype=np.int64)
    counts[text_pool(ZOO[0], 0)] = 1
    kept = KeptVocab.from_counts(counts, model=model)  # the decoder's eos is no encoder id
    assert kept.forced_ids == (0,)  # the encoder's pad
    vp.prune(model, kept, output="keep")
    assert model.config.decoder.vocab_size == FV + 200
    assert model.get_input_embeddings().weight.shape[0] == kept.size
    vp.restore(model)
