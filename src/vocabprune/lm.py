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

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vocabprune.atomic import atomic_dir
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
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from vocabprune.accounting import count_params
    from vocabprune.finetune import default_data
    from vocabprune.loading import load_model, load_tokenizer
    from vocabprune.prune import prune
    from vocabprune.remap import RemapCollator
    from vocabprune.restore import restore
    from vocabprune.scan import count_token_ids
    from vocabprune.state import get_state
    from vocabprune.vocab import KeptVocab

    task = opts.task
    if task not in ("causal-lm", "masked-lm"):
        raise VocabPruneError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    for name in ("resume", "save_steps"):
        if getattr(opts, name, None):
            raise VocabPruneError(f"--{name.replace('_', '-')} is not supported with --task {task}")
    say = log or (lambda msg: None)
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise VocabPruneError(f"output folder already exists: {out} (use --overwrite)")
    if not 0 <= opts.eval_fraction < 1:
        raise VocabPruneError(f"--eval-fraction must be in [0, 1), got {opts.eval_fraction}")
    causal = task == "causal-lm"
    model_path = opts.model or default_model(task)
    data_paths = list(opts.data) or default_data()

    texts = load_texts(data_paths, opts.text_column)
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(len(texts))
    if opts.limit:
        order = order[: opts.limit]
    n_eval = int(round(len(order) * opts.eval_fraction))
    eval_rows, train_rows = order[:n_eval], order[n_eval:]
    if len(train_rows) == 0:
        raise ScanError("no training examples left after the evaluation split")
    say(f"data: {len(train_rows)} train / {len(eval_rows)} eval texts ({task})")

    tokenizer = load_tokenizer(model_path)
    kwargs: dict[str, Any] = (
        {"truncation": True, "max_length": opts.max_length} if opts.max_length else {}
    )
    input_ids: list[list[int]] = tokenizer(texts, **kwargs)["input_ids"]
    if causal and any(len(input_ids[int(r)]) < 2 for r in train_rows):
        train_rows = np.asarray([r for r in train_rows if len(input_ids[int(r)]) >= 2])

    set_seed(opts.seed)
    auto = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    model = load_model(auto, model_path)
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    full_trainable = count_params(model, trainable_only=True)

    seen = [input_ids[int(r)] for r in order]
    counts = count_token_ids(seen, vocab_size, source="training data")
    kept = KeptVocab.from_counts(
        counts,
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
    collator: Any = base
    t0 = time.perf_counter()
    if opts.prune:
        prune(model, kept)
        collator = RemapCollator(base, kept, tokenizer=tokenizer, remap_labels=True)
    prepare_seconds = time.perf_counter() - t0
    trainable = count_params(model, trainable_only=True)
    say(
        f"vocabulary: {kept.size:,} of {vocab_size:,} ids kept ({kept.size / vocab_size:.1%}); "
        f"trainable parameters {trainable:,} (full {full_trainable:,})"
        + ("" if opts.prune else " [--no-prune]")
    )

    scratch = tempfile.mkdtemp(
        prefix=".vocabprune-trainer-", dir=out.parent if out.parent.exists() else None
    )
    targs = TrainingArguments(
        output_dir=scratch,
        per_device_train_batch_size=opts.batch_size,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        learning_rate=opts.lr,
        weight_decay=opts.weight_decay,
        seed=opts.seed,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=opts.logging_steps,
        disable_tqdm=log is None,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        **opts.extra_training_args,
    )
    callbacks = []
    try:  # exact weight decay for the dropped rows (another module; absent in older trees)
        from vocabprune.trainer import VocabPruneCallback

        callbacks.append(VocabPruneCallback())
    except ImportError:  # pragma: no cover
        pass
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=_Rows(input_ids, train_rows),
        data_collator=collator,
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    decay_factor = None
    if opts.prune:
        state = get_state(model)
        decay_factor = dict(getattr(state, "dropped_scale", None) or {}) or None
        restore(model)
    restore_seconds = time.perf_counter() - t0
    del trainer
    _rmtree(scratch)

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

    report = {
        "task": task,
        "model": model_path,
        "data": data_paths,
        "pruned": opts.prune,
        "kept_tokens": kept.size,
        "vocab_size": vocab_size,
        "trainable_params": trainable,
        "full_trainable_params": full_trainable,
        "train_examples": len(train_rows),
        "eval_examples": len(eval_rows),
        "steps": int(train_output.global_step),
        "train_loss": float(train_output.training_loss),
        "eval_loss": eval_loss,
        "eval_perplexity": eval_perplexity,
        "eval_accuracy": None,
        "train_seconds": round(train_seconds, 3),
        "prepare_seconds": round(prepare_seconds, 4),
        "restore_seconds": round(restore_seconds, 4),
        "dropped_decay_factor": decay_factor,
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "out": str(out),
    }
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        kept.save(tmp / "kept_vocab.json")
        (tmp / "vocabprune_run.json").write_text(json.dumps(report, indent=2))
    report["eval_predictions"] = []
    return report


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
