"""TRL: SFTTrainer on the packaged SmolLM2 with a pruned model and TRL's own collator
(conversational prompt/completion data, completion-only loss)."""

from __future__ import annotations

import pytest
import torch

import vocabprune as vp

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

pytestmark = pytest.mark.slow


def _rows(bbc_texts, n=12):
    articles = [t for t in bbc_texts["text"] if "\n" in t][:n]
    return [
        {
            "prompt": [{"role": "user", "content": "Title this: " + a.split("\n", 1)[1][:160]}],
            "completion": [{"role": "assistant", "content": a.split("\n", 1)[0].strip()}],
        }
        for a in articles
    ]


@pytest.mark.parametrize("output", ["auto", "prune"])  # the default (frozen head), restricted
def test_sft_trainer_with_a_pruned_model(
    smollm2_dir, smollm2_tokenizer, bbc_texts, tmp_path, output
):
    from transformers import AutoModelForCausalLM

    tok = smollm2_tokenizer
    rows = _rows(bbc_texts)
    texts = [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    before = model.get_input_embeddings().weight.detach().clone()
    kept = vp.build_kept_vocab(tok, texts, model=model)  # the chat-templated text, as TRL sees it
    state = vp.prune(model, kept, output=output)
    assert state.frozen_head == (output == "auto")
    if state.frozen_head:
        vp.chunked_loss(model)  # the full softmax in tiles; TRL's fused calls answered by it
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        max_length=128,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[vp.VocabPruneCallback()],
    )
    output = trainer.train()
    assert torch.isfinite(torch.tensor(output.training_loss))
    logs = [h for h in trainer.state.log_history if "mean_token_accuracy" in h]
    assert logs and all(0 <= h["mean_token_accuracy"] <= 1 for h in logs)

    # TRL scores tokens outside the model (its fused LM head, in chunks, from the head weight):
    # on a restricted head those are log-probabilities under the kept softmax, in original ids;
    # on a frozen head under the full softmax. Either way they are the logits' log-softmax.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels = batch["labels"]
    assert (labels == -100).any() and (labels != -100).any()  # completion-only loss
    model.eval()
    with torch.no_grad():
        fused = model(**batch, fused_lm_head=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape[-1] == kept.vocab_size  # outside training: logits by token id
    target = labels[:, 1:]
    mask = target != -100
    want = logits[:, :-1].float().log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(fused.log_probs[mask], want[mask], rtol=1e-4, atol=1e-4)
    top1 = logits[:, :-1].argmax(-1) == target
    assert torch.equal(fused.is_top1[mask].bool(), top1[mask])

    vp.restore(model)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the tie holds
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape == before.shape
    dropped = torch.ones(weight.shape[0], dtype=torch.bool)
    dropped[torch.as_tensor(kept.kept_ids)] = False
    assert torch.equal(weight[dropped], before[dropped])  # weight decay 0: untouched
    assert not torch.equal(weight[~dropped], before[~dropped])  # trained
