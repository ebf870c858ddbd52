"""Language-model fine-tuning (`vocabprune finetune --task causal-lm|masked-lm`).

The same job as classification: read the texts, count the ids the run will see, prune (input
embedding and output head together; tied heads stay tied), train through the stock HF Trainer
with a collator that remaps inputs AND labels (-100 stays -100), restore, and write an ordinary
full model. The held-out loss is measured after restore, with the full model and the full
softmax, in original ids: that is the model you get.

A pruned head restricts the training softmax to the kept vocabulary: ids the data never used get
no probability mass pushed away from them. Use --no-prune for the exact full softmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vocabprune.errors import ScanError, VocabPruneError

TASKS = ("classification", "masked-lm", "causal-lm")


# -- data ---------------------------------------------------------------------------------------


def load_texts(paths: Sequence[str], text_column: str | None) -> list[str]:
    """Texts from files or labelled folders (labels, if any, are ignored); pairs are joined."""
    from vocabprune.sources import pick_text_columns, read_table, texts_of

    texts: list[str] = []
    for path in paths:
        columns = read_table(path)
        cols = pick_text_columns(list(columns), text_column, str(path))
        first, second = texts_of(columns, cols, str(path))
        if second is not None:
            first = [f"{a}\n{b}" for a, b in zip(first, second, strict=True)]
        texts.extend(first)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ScanError("the data holds no non-empty texts")
    return texts


class CausalLMCollator:
    """Right-pad `input_ids`; labels are the inputs with -100 at padding (found by length, so a
    pad id equal to eos, as in SmolLM2, is fine). Original ids: wrap in RemapCollator."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class MaskedLMCollator:
    """BERT masking (15%: 80% mask token, 10% a random id, 10% unchanged), seeded.

    Random replacements are drawn from `candidates` (the kept non-special ids), never from the
    whole vocabulary: a random id outside the kept vocabulary would have no row to read.
    """

    def __init__(
        self,
        tokenizer: Any,
        candidates: Sequence[int],
        *,
        probability: float = 0.15,
        seed: int = 0,
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise VocabPruneError("masked-lm needs a tokenizer with a mask token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mask_id = int(tokenizer.mask_token_id)
        self.special = torch.as_tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.candidates = torch.as_tensor(list(candidates), dtype=torch.long)
        self.probability = probability
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = CausalLMCollator(self.pad_id)(features)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        g = self.generator
        eligible = (mask == 1) & ~torch.isin(ids, self.special)
        chosen = (torch.rand(ids.shape, generator=g) < self.probability) & eligible
        labels = ids.masked_fill(~chosen, -100)
        roll = torch.rand(ids.shape, generator=g)
        to_mask = chosen & (roll < 0.8)
        to_random = chosen & (roll >= 0.8) & (roll < 0.9)
        picks = self.candidates[torch.randint(len(self.candidates), ids.shape, generator=g)]
        ids = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        ids = torch.where(to_random, picks, ids)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _Rows:
    def __init__(self, input_ids: list[list[int]], rows: np.ndarray) -> None:
        self.input_ids = input_ids
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[int(self.rows[i])]}


# -- evaluation with the full model -------------------------------------------------------------


@torch.no_grad()
def heldout_nll(
    model: Any, batches: Sequence[dict[str, torch.Tensor]], *, causal: bool
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and the number of predicted tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(device)
        logits = model(**inputs).logits.float()
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total, count


# -- the job ------------------------------------------------------------------------------------


def default_model(task: str) -> str:
    if task == "causal-lm":
        from vocabprune.fixtures import smollm2_path

        return str(smollm2_path())
    from vocabprune.fixtures import minilm_path

    return str(minilm_path())


def run_lm_finetune(opts: Any, *, log: Any = None) -> dict[str, Any]:
    """`vocabprune finetune --task causal-lm|masked-lm`; returns the report."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, set_seed

    from vocabprune import training
    from vocabprune.finetune import default_data
    from vocabprune.loading import load_model, load_tokenizer

    task = opts.task
    if task not in ("causal-lm", "masked-lm"):
        raise VocabPruneError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    for name in ("resume", "save_steps"):
        if getattr(opts, name, None):
            raise VocabPruneError(f"--{name.replace('_', '-')} is not supported with --task {task}")
    say = log or (lambda msg: None)
    out = training.check_options(opts)
    causal = task == "causal-lm"
    model_path = opts.model or default_model(task)
    data_paths = list(opts.data) or default_data()

    texts = load_texts(data_paths, opts.text_column)
    order, eval_rows, train_rows = training.split_rows(len(texts), opts)
    say(f"data: {len(train_rows)} train / {len(eval_rows)} eval texts ({task})")

    tokenizer = load_tokenizer(model_path)
    input_ids: list[list[int]] = tokenizer(texts, **training.tokenize_kwargs(opts.max_length))[
        "input_ids"
    ]
    if causal and any(len(input_ids[int(r)]) < 2 for r in train_rows):
        train_rows = np.asarray([r for r in train_rows if len(input_ids[int(r)]) >= 2])

    set_seed(opts.seed)
    auto = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    model = load_model(auto, model_path)
    vocab_size, full_trainable = training.model_sizes(model)

    kept = training.build_kept(
        input_ids,
        order,
        vocab_size,
        tokenizer=tokenizer,
        model=model,
        meta={"max_length": opts.max_length, "examples": len(order), "task": task},
    )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if causal:
        base: Any = CausalLMCollator(pad_id)
    else:
        special = set(tokenizer.all_special_ids)
        candidates = [int(i) for i in kept.kept_ids if int(i) not in special]
        base = MaskedLMCollator(tokenizer, candidates, seed=opts.seed)
    collator, trainable, prepare_seconds = training.prune_for_training(
        model,
        kept,
        base,
        tokenizer=tokenizer,
        enabled=opts.prune,
        vocab_size=vocab_size,
        full_trainable=full_trainable,
        say=say,
        remap_labels=True,
    )

    scratch = training.make_scratch(out)
    targs = training.training_args(opts, scratch, log=log, remove_unused_columns=False)
    trainer, train_output, train_seconds = training.train(
        model, targs, _Rows(input_ids, train_rows), collator
    )
    decay_factor, restore_seconds = training.restore_trained(model, opts.prune)
    del trainer
    training.rmtree(scratch, check=False)

    # Held-out loss of the model we write: restored, full softmax, original ids.
    eval_loss = eval_perplexity = None
    if len(eval_rows):
        eval_collate = (
            CausalLMCollator(pad_id)
            if causal
            else MaskedLMCollator(tokenizer, base.candidates.tolist(), seed=opts.seed + 1)
        )
        size = max(1, opts.batch_size)
        batches = [
            eval_collate([{"input_ids": input_ids[int(r)]} for r in eval_rows[i : i + size]])
            for i in range(0, len(eval_rows), size)
        ]
        total, count = heldout_nll(model, batches, causal=causal)
        if count:
            eval_loss = total / count
            eval_perplexity = math.exp(eval_loss)

    report = training.build_report(
        head={"task": task},
        model_path=model_path,
        data_paths=data_paths,
        pruned=opts.prune,
        kept=kept,
        vocab_size=vocab_size,
        trainable=trainable,
        full_trainable=full_trainable,
        train_examples=len(train_rows),
        eval_examples=len(eval_rows),
        train_output=train_output,
        metrics={
            "eval_loss": eval_loss,
            "eval_perplexity": eval_perplexity,
            "eval_accuracy": None,
        },
        train_seconds=train_seconds,
        prepare_seconds=prepare_seconds,
        restore_seconds=restore_seconds,
        tail={"dropped_decay_factor": decay_factor, "device": training.device_of(model)},
        out=out,
    )
    training.save_run(
        out, overwrite=opts.overwrite, model=model, tokenizer=tokenizer, kept=kept, report=report
    )
    report["eval_predictions"] = []
    return report
