"""Compact inference models: loading, remapping, unseen-token policies, HF pipelines."""

from __future__ import annotations

import json

import pytest
import torch

from vocabprune.cli.options import PruneOptions
from vocabprune.cli.prune import run_prune
from vocabprune.core.errors import MismatchError, UnknownTokenError, VocabPruneError
from vocabprune.deploy.compact import compact_pipeline, get_adapter, load_compact

UNSEEN = "Zygote quokka xylophone ptarmigan: the narwhal's kumquat flambé, 1848."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bbc_texts):
    path = tmp_path_factory.mktemp("corpus") / "news.jsonl"
    rows = [
        {"text": t, "label": lab}
        for t, lab in zip(bbc_texts["text"][::50], bbc_texts["label"][::50], strict=True)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path, [r["text"] for r in rows]


@pytest.fixture(scope="module")
def compact(tmp_path_factory, corpus, minilm_dir):
    out = tmp_path_factory.mktemp("exports") / "compact"
    report = run_prune(PruneOptions(out=str(out), data=[str(corpus[0])], max_length=64))
    return out, report


@pytest.fixture(scope="module")
def full_minilm(minilm_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_dir).eval()


def _hidden(model, tokenizer, texts, max_length=64):
    enc = tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model(**enc).last_hidden_state


def test_compact_folder_layout(compact):
    out, report = compact
    assert (out / "model.safetensors").is_file()
    assert (out / "kept_vocab.json").is_file()
    assert (out / "original_tokenizer" / "tokenizer.json").is_file()
    assert not (out / "tokenizer.json").exists()  # stock code must not pair it with the model
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == report["kept_tokens"] < 30522 // 2
    assert report["export_weights_bytes"] < report["source_weights_bytes"]


def test_compact_equals_full_on_corpus(compact, corpus, full_minilm, minilm_tokenizer):
    model, tokenizer = load_compact(compact[0])
    assert model.get_input_embeddings().weight.shape[0] == compact[1]["kept_tokens"]
    texts = corpus[1][:8]
    got = _hidden(model, tokenizer, texts)
    want = _hidden(full_minilm, minilm_tokenizer, texts)
    assert torch.equal(got, want)


def test_feature_extraction_pipeline(compact, corpus, full_minilm, minilm_tokenizer):
    from transformers import pipeline

    pipe = compact_pipeline("feature-extraction", compact[0])
    ref = pipeline("feature-extraction", model=full_minilm, tokenizer=minilm_tokenizer)
    text = corpus[1][3]
    kwargs = {"tokenize_kwargs": {"truncation": True, "max_length": 64}}
    assert torch.tensor(pipe(text, **kwargs)).equal(torch.tensor(ref(text, **kwargs)))


def test_unknown_error_names_the_token(compact):
    model, tokenizer = load_compact(compact[0])
    enc = tokenizer([UNSEEN], return_tensors="pt")
    with pytest.raises(UnknownTokenError, match=r"token '.+' \(id \d+\)"):
        model(**enc)


def test_unknown_unk_maps_to_unk(compact, full_minilm, minilm_tokenizer):
    model, tokenizer = load_compact(compact[0], unknown="unk")
    adapter = get_adapter(model)
    enc = tokenizer([UNSEEN], return_tensors="pt")
    ids = enc["input_ids"]
    unseen = torch.tensor([int(i) not in adapter.kept for i in ids[0]])
    assert unseen.any()
    with torch.no_grad():
        got = model(**enc).last_hidden_state
        ref_ids = torch.where(unseen, tokenizer.unk_token_id, ids)
        want = full_minilm(**{**enc, "input_ids": ref_ids}).last_hidden_state
    assert torch.equal(got, want)


def test_unknown_grow_equals_full_model(compact, full_minilm, minilm_tokenizer):
    model, tokenizer = load_compact(compact[0], unknown="grow")
    rows = model.get_input_embeddings().weight.shape[0]
    texts = [UNSEEN, "Glockenspiel and theremin recitals in Reykjavik tonight."]
    got = _hidden(model, tokenizer, texts)
    want = _hidden(full_minilm, minilm_tokenizer, texts)
    assert torch.equal(got, want)
    adapter = get_adapter(model)
    assert adapter.grown > 0
    assert model.get_input_embeddings().weight.shape[0] == rows + adapter.grown
    assert model.config.vocab_size == rows + adapter.grown
    # grown ids are remembered: the same text again grows nothing
    before = adapter.grown
    assert torch.equal(_hidden(model, tokenizer, texts), want)
    assert adapter.grown == before


def test_grow_refuses_another_checkpoint(compact, tmp_path):
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(compact[0] / "model.safetensors", other / "model.safetensors")
    with pytest.raises(MismatchError, match="not the one this export was made from|has no tensor"):
        load_compact(compact[0], unknown="grow", source=other)


def test_bad_policy(compact):
    with pytest.raises(VocabPruneError, match="unknown must be"):
        load_compact(compact[0], unknown="ignore")


def test_text_classification_pipeline(tmp_path, corpus, minilm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=3).eval()
    full_dir = tmp_path / "clf"
    clf.save_pretrained(full_dir)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    tokenizer.save_pretrained(full_dir)
    out = tmp_path / "clf-compact"
    run_prune(PruneOptions(out=str(out), model=str(full_dir), data=[str(corpus[0])], max_length=64))
    pipe = compact_pipeline("text-classification", out, top_k=None, truncation=True, max_length=64)
    assert type(pipe.model).__name__ == "BertForSequenceClassification"
    ref = pipeline(
        "text-classification",
        model=clf,
        tokenizer=tokenizer,
        top_k=None,
        truncation=True,
        max_length=64,
    )
    texts = corpus[1][:4]
    got, want = pipe(texts), ref(texts)
    for g, w in zip(got, want, strict=True):
        assert [d["label"] for d in g] == [d["label"] for d in w]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(g, w, strict=True)) < 1e-6


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama with the SmolLM2 byte-level BPE tokenizer and a tied head."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from vocabprune.fixtures import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_text_generation_pipeline(tmp_path, corpus, tiny_llama):
    from transformers import pipeline

    folder, full, tokenizer = tiny_llama
    out = tmp_path / "llama-compact"
    report = run_prune(
        PruneOptions(out=str(out), model=str(folder), data=[str(corpus[0])], max_length=48)
    )
    model, tok = load_compact(out)
    adapter = get_adapter(model)
    assert adapter.vocab_logits
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied
    prompt = corpus[1][0][:60]
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    widths: list[int] = []
    handle = model.register_forward_hook(lambda m, a, o: widths.append(o.logits.shape[-1]))
    got = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    # generate() decodes over the compact ids (no spread over the whole vocabulary per step)
    assert set(widths) == {adapter.size}
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():  # scores asked for: by token id, the stock way, the same tokens
        fast = model.generate(**enc, max_new_tokens=8, do_sample=False)
        scored = model.generate(
            **enc,
            max_new_tokens=8,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    assert scored.scores[0].shape[-1] == len(tokenizer)
    assert torch.equal(scored.sequences, fast)
    handle.remove()
    # The full model restricted to the kept ids generates the same text.
    dropped = sorted(set(range(len(tokenizer))) - set(adapter.kept.kept_ids.tolist()))
    ref = pipeline("text-generation", model=full, tokenizer=tokenizer)
    want = ref(prompt, max_new_tokens=8, do_sample=False, suppress_tokens=dropped)
    assert got == want[0]["generated_text"]
    assert report["kept_tokens"] == model.get_input_embeddings().weight.shape[0]
    # logits come back over the original ids
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        full_logits = full(**enc).logits
    assert logits.shape == full_logits.shape
    kept = torch.as_tensor(adapter.kept.kept_ids)
    assert torch.allclose(logits[..., kept], full_logits[..., kept], atol=1e-5)
    assert torch.isinf(logits[..., dropped[:10]]).all()
    # unknown="grow" grows the tied head with the embedding: logits over the grown ids match
    model, tok = load_compact(out, unknown="grow")
    enc = tok([UNSEEN], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        full_logits = full(**enc).logits
    adapter = get_adapter(model)
    assert adapter.grown > 0
    assert model.lm_head.weight is model.get_input_embeddings().weight
    have = adapter.original_ids
    assert torch.allclose(logits[..., have], full_logits[..., have], atol=1e-5)
