"""The steps `vocabprune finetune` shares across tasks (classification in vocabprune.finetune,
masked-/causal-LM in vocabprune.lm): split, keep, prune, train through HF Trainer, restore, save.

The task-specific parts (model class, data set, collator, metrics, distributed handling) stay
with the callers and are passed in.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.atomic import atomic_dir
from vocabprune.errors import ScanError, VocabPruneError


def check_options(opts: Any) -> Path:
    """The output folder, after the checks every task makes on the options."""
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise VocabPruneError(f"output folder already exists: {out} (use --overwrite)")
    if not 0 <= opts.eval_fraction < 1:
        raise VocabPruneError(f"--eval-fraction must be in [0, 1), got {opts.eval_fraction}")
    return out


def split_rows(n: int, opts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded shuffle of n examples, cut to --limit: (order, eval rows, train rows)."""
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(n)
    if opts.limit:
        order = order[: opts.limit]
    n_eval = int(round(len(order) * opts.eval_fraction))
    eval_rows, train_rows = order[:n_eval], order[n_eval:]
    if len(train_rows) == 0:
        raise ScanError("no training examples left after the evaluation split")
    return order, eval_rows, train_rows


def tokenize_kwargs(max_length: int | None) -> dict[str, Any]:
    return {"truncation": True, "max_length": max_length} if max_length else {}


def model_sizes(model: Any) -> tuple[int, int]:
    """(vocabulary size, trainable parameters) of the full model."""
    from vocabprune.accounting import count_params

    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    return vocab_size, count_params(model, trainable_only=True)


def build_kept(
    input_ids: Sequence[Sequence[int]],
    order: np.ndarray,
    vocab_size: int,
    *,
    tokenizer: Any,
    model: Any,
    meta: dict[str, Any],
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Any:
    """The kept vocabulary: every id the run will see (the rows in `order`, as tokenized)."""
    from vocabprune.scan import count_token_ids
    from vocabprune.vocab import KeptVocab

    seen = [input_ids[int(r)] for r in order]
    counts = count_token_ids(seen, vocab_size, source="training data")
    if combine is not None:
        counts = combine(counts)
    return KeptVocab.from_counts(counts, tokenizer=tokenizer, model=model, meta=meta)


def prune_for_training(
    model: Any,
    kept: Any,
    collator: Any,
    *,
    tokenizer: Any,
    enabled: bool,
    vocab_size: int,
    full_trainable: int,
    say: Callable[[str], Any],
    **remap: Any,
) -> tuple[Any, int, float]:
    """Prune (when enabled) and wrap the collator in RemapCollator; logs the vocabulary line.

    Returns (collator, trainable parameters, prepare seconds).
    """
    from vocabprune.accounting import count_params
    from vocabprune.prune import prune
    from vocabprune.remap import RemapCollator

    t0 = time.perf_counter()
    if enabled:
        prune(model, kept)
        collator = RemapCollator(collator, kept, tokenizer=tokenizer, **remap)
    prepare_seconds = time.perf_counter() - t0
    trainable = count_params(model, trainable_only=True)
    say(
        f"vocabulary: {kept.size:,} of {vocab_size:,} ids kept ({kept.size / vocab_size:.1%}); "
        f"trainable parameters {trainable:,} (full {full_trainable:,})"
        + ("" if enabled else " [--no-prune]")
    )
    return collator, trainable, prepare_seconds


def make_scratch(out: Path) -> str:
    """A scratch folder for Trainer's output_dir, beside OUT when its parent exists."""
    return tempfile.mkdtemp(
        prefix=".vocabprune-trainer-", dir=out.parent if out.parent.exists() else None
    )


def training_args(opts: Any, output_dir: str, *, log: Any, **task_args: Any) -> Any:
    """TrainingArguments of every task; task_args and --extra training args are added (a key
    given twice is an error, as in a plain call)."""
    import torch
    from transformers import TrainingArguments

    save_steps = getattr(opts, "save_steps", None)
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=opts.batch_size,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        learning_rate=opts.lr,
        weight_decay=opts.weight_decay,
        seed=opts.seed,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        eval_strategy="no",
        report_to="none",
        logging_steps=opts.logging_steps,
        disable_tqdm=log is None,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **task_args,
        **opts.extra_training_args,
    )


def train(
    model: Any,
    targs: Any,
    train_set: Any,
    collator: Any,
    *,
    resume: Path | None = None,
    say: Callable[[str], Any] = lambda msg: None,
) -> tuple[Any, Any, float]:
    """Train through the stock Trainer with VocabPruneCallback (exact weight decay for the
    dropped rows; vocabprune.json in checkpoints). Returns (trainer, output, seconds)."""
    from transformers import Trainer

    from vocabprune.trainer import VocabPruneCallback, check_resume

    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_set,
        data_collator=collator,
        callbacks=[VocabPruneCallback()],
    )
    if resume is not None:
        check_resume(model, resume)  # refuses another model / kept vocabulary
        say(f"resuming from {resume}")
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, output, time.perf_counter() - t0


def restore_trained(model: Any, pruned: bool) -> tuple[dict[str, Any] | None, float]:
    """Restore the trained rows into the full matrices (dropped rows get the tracked
    weight-decay factor). Returns (the decay factors, or None; seconds)."""
    from vocabprune.restore import restore
    from vocabprune.state import get_state

    t0 = time.perf_counter()
    decay_factor = None
    if pruned:
        state = get_state(model)
        decay_factor = dict(getattr(state, "dropped_scale", None) or {}) or None
        restore(model)
    return decay_factor, time.perf_counter() - t0


def device_of(model: Any) -> str:
    return str(next(model.parameters()).device)


def build_report(
    *,
    head: dict[str, Any],
    model_path: str,
    data_paths: list[str],
    pruned: bool,
    kept: Any,
    vocab_size: int,
    trainable: int,
    full_trainable: int,
    train_examples: int,
    eval_examples: int,
    train_output: Any,
    metrics: dict[str, Any],
    train_seconds: float,
    prepare_seconds: float,
    restore_seconds: float,
    tail: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """The run report; head, metrics and tail are the task's own keys, in that place."""
    import torch

    return {
        **head,
        "model": model_path,
        "data": data_paths,
        "pruned": pruned,
        "kept_tokens": kept.size,
        "vocab_size": vocab_size,
        "trainable_params": trainable,
        "full_trainable_params": full_trainable,
        "train_examples": train_examples,
        "eval_examples": eval_examples,
        "steps": int(train_output.global_step),
        "train_loss": float(train_output.training_loss),
        **metrics,
        "train_seconds": round(train_seconds, 3),
        "prepare_seconds": round(prepare_seconds, 4),
        "restore_seconds": round(restore_seconds, 4),
        **tail,
        "torch": torch.__version__,
        "out": str(out),
    }


def save_run(
    out: Path, *, overwrite: bool, model: Any, tokenizer: Any, kept: Any, report: dict[str, Any]
) -> None:
    """Write the full model, tokenizer, kept_vocab.json and vocabprune_run.json, atomically."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        kept.save(tmp / "kept_vocab.json")
        (tmp / "vocabprune_run.json").write_text(json.dumps(report, indent=2))


def rmtree(path: str, *, check: bool = True) -> None:
    """Remove a scratch folder; with check, fail if it is still there."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if check and os.path.exists(path):  # pragma: no cover
        raise VocabPruneError(f"could not remove scratch folder {path}")
