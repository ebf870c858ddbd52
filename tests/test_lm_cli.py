"""The language-model tasks from the command line: seq2seq on tiny T5 and BART folders, and
--resume for causal-lm, masked-lm and seq2seq (a resumed run equals the uninterrupted one)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vocabprune.cli.main import main

PAIRS = [
    ("translate: the markets fell sharply", "die maerkte fielen stark"),
    ("translate: the match ended in a draw", "das spiel endete unentschieden"),
    ("translate: shares rose again after results", "aktien stiegen wieder"),
    ("translate: the bank reported profits", "die bank meldete gewinne"),
] * 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_tokenizer):
    """Tiny T5, BART and Llama folders that read the MiniLM tokenizer's ids, and the pairs."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("lm-folders")
    vocab = len(minilm_tokenizer)
    torch.manual_seed(0)
    models = {
        "t5": T5ForConditionalGeneration(
            T5Config(
                vocab_size=vocab,
                d_model=16,
                d_kv=4,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                pad_token_id=0,
                eos_token_id=102,
                decoder_start_token_id=0,
            )
        ),
        "bart": BartForConditionalGeneration(
            BartConfig(
                vocab_size=vocab,
                d_model=16,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
                max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=101,
                eos_token_id=102,
                decoder_start_token_id=102,
                forced_eos_token_id=102,
            )
        ),
        "llama": LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=101,
                eos_token_id=102,
                tie_word_embeddings=True,
            )
        ),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        minilm_tokenizer.save_pretrained(root / name)
    data = root / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"src": s, "tgt": t}) for s, t in PAIRS))
    return root


def _finetune(*argv: str) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["finetune", *argv, "--json"])
    assert code == 0
    return json.loads(buf.getvalue())


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_seq2seq_task_prunes_trains_and_restores(folders, tmp_path, name):
    from transformers import AutoModelForSeq2SeqLM

    common = ["--task", "seq2seq", "--model", str(folders / name), "--data"]
    common += [str(folders / "pairs.jsonl"), "--text-column", "src,tgt", "--max-steps", "3"]
    common += ["--batch-size", "4", "--lr", "1e-3", "--max-length", "32"]
    report = _finetune(*common, "--out", str(tmp_path / "pruned"))
    assert report["task"] == "seq2seq" and report["pruned"]
    assert 10 < report["kept_tokens"] < 100 and report["eval_perplexity"] > 1
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "pruned")
    original = AutoModelForSeq2SeqLM.from_pretrained(folders / name)
    emb, emb0 = model.get_input_embeddings().weight, original.get_input_embeddings().weight
    assert emb.shape == emb0.shape == (30522, 16)
    assert model.get_output_embeddings().weight is emb  # the tie holds
    kept = json.loads((tmp_path / "pruned" / "kept_vocab.json").read_text())["kept_ids"]
    dropped = torch.ones(30522, dtype=torch.bool)
    dropped[kept] = False
    assert torch.equal(emb[dropped], emb0[dropped]) and not torch.equal(
        emb[~dropped], emb0[~dropped]
    )


def test_seq2seq_needs_pairs_and_a_model(folders, tmp_path, capsys):
    base = ["finetune", "--task", "seq2seq", "--out", str(tmp_path / "o")]
    assert main(base) == 2
    assert "needs --model" in capsys.readouterr().err
    assert (
        main([*base, "--model", str(folders / "t5"), "--data", str(folders / "pairs.jsonl")]) == 2
    )
    assert "--text-column source,target" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("task", "name"), [("causal-lm", "llama"), ("masked-lm", None), ("seq2seq", "t5")]
)
def test_resumed_lm_run_equals_the_uninterrupted_one(folders, tmp_path, task, name):
    argv = ["--task", task, "--max-steps", "4", "--save-steps", "2", "--batch-size", "4"]
    argv += ["--lr", "1e-3", "--weight-decay", "0.1", "--max-length", "32", "--seed", "3"]
    argv += ["--eval-fraction", "0"]
    if name:
        argv += ["--model", str(folders / name)]
    if task == "seq2seq":
        argv += ["--data", str(folders / "pairs.jsonl"), "--text-column", "src,tgt"]
    else:
        argv += ["--limit", "16"]
    a = _finetune(*argv, "--out", str(tmp_path / "a"), "--checkpoint-dir", str(tmp_path / "ck-a"))
    (tmp_path / "ck-b").mkdir()
    shutil.copytree(tmp_path / "ck-a" / "checkpoint-2", tmp_path / "ck-b" / "checkpoint-2")
    b = _finetune(
        *argv,
        "--out",
        str(tmp_path / "b"),
        "--checkpoint-dir",
        str(tmp_path / "ck-b"),
        "--resume",
        "auto",
    )
    assert a["resumed_from"] is None and b["resumed_from"].endswith("checkpoint-2")
    assert a["steps"] == b["steps"] == 4
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    start = load_file(tmp_path / "ck-a" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(start[k], wb[k]) for k in wb)  # the resumed run trained


def test_chunked_loss_run_equals_the_plain_one(folders, tmp_path, tiled_calls):
    argv = ["--task", "causal-lm", "--model", str(folders / "llama"), "--max-steps", "2"]
    argv += ["--batch-size", "4", "--lr", "1e-4", "--max-length", "32", "--limit", "16"]
    argv += ["--eval-fraction", "0", "--seed", "3", "--lm-head", "restricted"]
    plain = _finetune(*argv, "--out", str(tmp_path / "plain"))
    assert not tiled_calls
    assert plain["lm_head"] == "restricted" and "train_loss" not in plain
    assert plain["train_loss_kept_columns"] > 0  # the loss over the kept columns, named so
    _finetune(*argv, "--out", str(tmp_path / "chunked"), "--chunked-loss")
    assert len(tiled_calls) == 2  # each training step's loss was tiled
    want = load_file(tmp_path / "plain" / "model.safetensors")
    got = load_file(tmp_path / "chunked" / "model.safetensors")
    assert want.keys() == got.keys()
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-5


def test_frozen_head_run_has_full_fine_tunings_loss_and_updates(folders, tmp_path, tiled_calls):
    """The default head (--lm-head frozen): the full softmax in tiles, dropped rows frozen. One
    step from the same weights: the same loss as --no-prune, and the same update of every
    parameter but the dropped rows (which full fine-tuning pushes down and this run keeps)."""
    argv = ["--task", "causal-lm", "--model", str(folders / "llama"), "--max-steps", "1"]
    argv += ["--batch-size", "4", "--lr", "1e-3", "--max-length", "32", "--limit", "20"]
    argv += ["--eval-fraction", "0.2", "--seed", "3"]
    full = _finetune(*argv, "--out", str(tmp_path / "full"), "--no-prune")
    assert not tiled_calls
    frozen = _finetune(*argv, "--out", str(tmp_path / "frozen"))
    assert frozen["lm_head"] == "frozen" and frozen["pruned"]
    assert len(tiled_calls) == 1  # the training step's loss in tiles
    # float32 rounding over 30,522 columns (the tiles sum in another order): relative 1e-5
    assert abs(frozen["train_loss"] - full["train_loss"]) <= 1e-5 * full["train_loss"]
    assert frozen["eval_loss"] > 0  # the restored model's, over the full vocabulary
    want = load_file(tmp_path / "full" / "model.safetensors")
    got = load_file(tmp_path / "frozen" / "model.safetensors")
    start = load_file(folders / "llama" / "model.safetensors")
    kept = json.loads((tmp_path / "frozen" / "kept_vocab.json").read_text())["kept_ids"]
    dropped = torch.ones(frozen["vocab_size"], dtype=torch.bool)
    dropped[kept] = False
    assert want.keys() == got.keys()
    for key in want:
        if want[key].shape[:1] == dropped.shape:  # vocabulary rows
            assert torch.equal(got[key][dropped], start[key][dropped]), key
            assert not torch.equal(want[key][dropped], start[key][dropped]), key
            assert (want[key][~dropped] - got[key][~dropped]).abs().max() <= 1e-5, key
        else:
            assert (want[key] - got[key]).abs().max() <= 1e-5, key
