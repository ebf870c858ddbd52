"""The SmolLM2 fixture converts to a folder that stock transformers loads and chats with."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gguf")

from vocabprune.fixtures import smollm2_path  # noqa: E402
from vocabprune.fixtures.packaged import FixtureMissingError  # noqa: E402


@pytest.fixture(scope="module")
def folder():
    try:
        return smollm2_path()
    except FixtureMissingError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_folder_is_plain_safetensors_and_json(folder):
    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in names
    assert all(n.endswith((".json", ".safetensors")) for n in names), names
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert smollm2_path() == folder  # cached: no second conversion


@pytest.mark.slow
def test_stock_transformers_loads_and_answers(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()

    assert model.config.vocab_size == 49152
    assert len(tokenizer) == 49152
    assert model.get_input_embeddings().weight.shape == (49152, 576)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.pad_token_id == model.config.eos_token_id == 2
    assert tokenizer.chat_template

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip().startswith("The capital of France is Paris"), answer
