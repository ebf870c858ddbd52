"""The real SmolLM2-135M-Instruct (tied Llama, 49,152 ids): prune/restore identity, generation in
original ids, and causal-LM fine-tuning from the command line to a restored full model."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gguf")

import vocabprune as vp  # noqa: E402
from vocabprune.fixtures import smollm2_path  # noqa: E402
from vocabprune.fixtures.packaged import FixtureMissingError  # noqa: E402

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def folder():
    try:
        return smollm2_path()
    except FixtureMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()


def chat(tokenizer, text: str) -> dict:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def test_prune_generate_restore(folder, tokenizer, bbc_texts):
    model = load(folder)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    emb = model.get_input_embeddings()
    assert model.lm_head.weight is emb.weight

    inputs = chat(tokenizer, QUESTION)
    # Kept: a few BBC articles plus the chat turn and its expected answer.
    texts = list(bbc_texts["text"][:20]) + [tokenizer.decode(inputs["input_ids"][0]), ANSWER]
    kept = vp.build_kept_vocab(tokenizer, texts, model=model)
    assert 1000 < kept.size < 10_000
    with torch.no_grad():
        want = model.generate(**inputs, max_new_tokens=10, do_sample=False)

    vp.prune(model, kept, output="prune")  # the restricted head generates kept ids only
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.shape == (kept.size, 576)
    assert model.config.vocab_size == kept.size
    assert model.generation_config.eos_token_id == 2  # config ids stay original
    with torch.no_grad():
        got = vp.generate(model, **inputs, max_new_tokens=10, do_sample=False)
        stock = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert torch.equal(stock, got)  # the pruned model takes and returns original ids itself
    # The kept ids include every token of the answer: the restricted head finds the same words.
    assert torch.equal(got, want)
    answer = tokenizer.decode(got[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip().startswith("The capital of France is Paris"), answer

    vp.restore(model)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert model.config.vocab_size == 49152


def test_cli_causal_lm_writes_a_restored_model(folder, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from vocabprune.cli.main import main

    out = tmp_path / "lm"
    argv = [
        "finetune",
        "--task",
        "causal-lm",
        "--out",
        str(out),
        "--limit",
        "8",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--max-length",
        "32",
        "--eval-fraction",
        "0.25",
        "--lr",
        "1e-3",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads((out / "vocabprune_run.json").read_text())
    assert report["task"] == "causal-lm" and report["pruned"] and report["steps"] == 1
    assert report["eval_perplexity"] > 1
    kept = vp.KeptVocab.load(out)
    assert kept.vocab_size == 49152

    trained = AutoModelForCausalLM.from_pretrained(out)  # stock transformers
    assert trained.config.vocab_size == 49152
    assert trained.config.eos_token_id == 2
    w = trained.get_input_embeddings().weight
    assert trained.lm_head.weight is w
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        original = f.get_tensor("model.embed_tokens.weight")
    dropped = torch.ones(49152, dtype=torch.bool)
    dropped[torch.as_tensor(kept.kept_ids)] = False
    assert torch.equal(w[dropped], original[dropped])  # bitwise: rows not kept never moved
    assert not torch.equal(w[~dropped], original[~dropped])  # the kept rows were trained


def test_prune_keeps_the_chat_templates_ids(folder, tokenizer, tmp_path, capsys):
    """An instruct model is prompted through its chat template: `prune` keeps the ids the
    template writes around the messages (markers, role names, its default system prompt) though
    plain data never has them, so a compact export reads a chat prompt of covered text."""
    from vocabprune.cli.main import main

    data = tmp_path / "data.txt"
    data.write_text(f"{QUESTION}\n{ANSWER}\n", encoding="utf-8")
    out = tmp_path / "compact"
    argv = ["prune", "--model", str(folder), "--data", str(data), "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    ids = chat(tokenizer, QUESTION)["input_ids"][0]
    kept = vp.KeptVocab.load(out / "kept_vocab.json")
    assert report["chat_template_ids"] > 10
    assert all(int(i) in kept for i in ids)
    model, tok = vp.load_compact(out)
    with torch.no_grad():
        model.generate(**chat(tok, QUESTION), max_new_tokens=2, do_sample=False)
