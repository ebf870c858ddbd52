"""HF pipelines on pruned models, fed by the stock tokenizer: feature-extraction,
text-classification, fill-mask (MiniLM) and text-generation (SmolLM2)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    pipeline,
    set_seed,
)

import vocabprune as vp

TEXTS = ["shares in the bank fell sharply after the results", "the match ended in a draw"]


@pytest.fixture(scope="module")
def kept(minilm_tokenizer, bbc_texts):
    texts = [*bbc_texts["text"][:30], *TEXTS, "the [MASK] fell sharply"]
    return vp.build_kept_vocab(minilm_tokenizer, texts, max_length=128)


def _both(make, kept, run):
    """run(pipeline) on the unpruned model, then on the same model pruned."""
    model = make().eval()
    want = run(model)
    vp.prune(model, kept)
    got = run(model)
    vp.restore(model)
    return want, got


def test_feature_extraction(minilm_dir, minilm_tokenizer, kept):
    def run(model):
        pipe = pipeline("feature-extraction", model=model, tokenizer=minilm_tokenizer)
        return torch.tensor(pipe(TEXTS[0])[0])

    want, got = _both(lambda: AutoModel.from_pretrained(minilm_dir), kept, run)
    assert (got - want).abs().max().item() <= 1e-6


def test_text_classification(minilm_dir, minilm_tokenizer, kept):
    def make():
        set_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)

    def run(model):
        pipe = pipeline("text-classification", model=model, tokenizer=minilm_tokenizer, top_k=None)
        return {r["label"]: r["score"] for r in pipe(TEXTS)[0]}

    want, got = _both(make, kept, run)
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) <= 1e-6 for k in want)


def test_fill_mask_names_the_unpruned_models_tokens_within_the_kept_set(
    minilm_dir, minilm_tokenizer, kept
):
    tok = minilm_tokenizer
    targets = [t for t in tok.convert_ids_to_tokens(kept.kept_ids.tolist()) if t.isalpha()]

    def make():
        set_seed(0)  # MiniLM ships no MLM transform: a seeded one, tied to the embedding
        return AutoModelForMaskedLM.from_pretrained(minilm_dir)

    def run(model, restrict):
        pipe = pipeline("fill-mask", model=model, tokenizer=tok, top_k=5)
        out = pipe("the [MASK] fell sharply", **({"targets": targets} if restrict else {}))
        return [r["token_str"] for r in out], [r["score"] for r in out]

    model = make().eval()
    want, _ = run(model, restrict=True)  # the unpruned model's top 5 among the kept tokens
    unrestricted = run(model, restrict=False)
    vp.prune(model, kept, output="prune")  # the restricted head names kept tokens only
    got, scores = run(model, restrict=False)
    vp.restore(model)
    assert got == want
    assert all(t in targets for t in got)
    assert all(0 < s <= 1 for s in scores)
    vp.prune(model, kept)  # the default, frozen head: the unpruned model's answer
    default = run(model, restrict=False)
    vp.restore(model)
    assert default[0] == unrestricted[0]
    torch.testing.assert_close(default[1], unrestricted[1], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_text_generation(smollm2_dir, smollm2_tokenizer, bbc_texts):
    from transformers import AutoModelForCausalLM

    tok = smollm2_tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = [*bbc_texts["text"][:20], prompt, "The capital of France is Paris."]

    def run(model):
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        out = pipe(prompt, max_new_tokens=10, do_sample=False, return_full_text=False)
        return out[0]["generated_text"]

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    kept_lm = vp.build_kept_vocab(tok, texts, model=model)
    want = run(model)
    vp.prune(model, kept_lm)
    got = run(model)
    vp.restore(model)
    assert got == want and got.strip().startswith("The capital of France is Paris")


@pytest.mark.slow
def test_feature_extraction_e5(bbc_texts):
    from transformers import AutoTokenizer

    from vocabprune.fixtures import e5_path

    path = str(e5_path())
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["query: Die Regierung sagte am Montag", "passage: shares fell sharply"]
    model = AutoModel.from_pretrained(path)
    kept_e5 = vp.build_kept_vocab(tok, texts, list(bbc_texts["text"][:5]), model=model)

    def run(model):
        pipe = pipeline("feature-extraction", model=model, tokenizer=tok)
        return [torch.tensor(pipe(t)[0]) for t in texts]

    want, got = _both(lambda: model, kept_e5, run)
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) <= 1e-6
