"""The steps every `vocabprune finetune` task shares, in the order of the method: choose the
vocabulary, prune, train through the stock HF Trainer (with its stock collator: the pruned model
reads original ids), restore, report and save.

The task-specific parts (model class, data set, collator, metrics) stay with the task jobs
(finetune.py for classification, lm.py for masked and causal LM) and are passed in.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.cli.options import DataOptions, FinetuneOptions
from vocabprune.core.errors import MismatchError, ScanError, VocabPruneError
from vocabprune.core.files import atomic_dir, remove, scratch_dir
from vocabprune.core.prune import prune
from vocabprune.core.restore import restore
from vocabprune.core.state import get_state
from vocabprune.core.vocab import KeptVocab, tokenizer_fingerprint
from vocabprune.data.accounting import count_params
from vocabprune.data.counts import load_counts
from vocabprune.data.scan import count_token_ids

Say = Callable[[str], Any]


def quiet(_msg: str) -> None:
    return None


class RunWarning(UserWarning):
    """Something about a run the user should know (a head that starts from random values)."""


def warn(message: str) -> None:
    """A job's warning for API callers (the CLI prints `vocabprune: warning: ...` instead)."""
    import warnings

    warnings.warn(message, RunWarning, stacklevel=3)


def check_options(opts: FinetuneOptions) -> Path:
    """Validate the options (one rule for every command) and return the output folder."""
    opts.validate()
    return Path(opts.out)


def split_rows(
    n: int, opts: FinetuneOptions, n_eval: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows the run sees, eval rows, train rows) of examples [0, n) + n_eval given ones.

    With --eval-data (n_eval > 0) the examples after the first n are the evaluation set, used
    as given; else a seeded --eval-fraction of the first n is held out. --limit cuts the
    training examples."""
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(n)
    if n_eval:
        train_rows = order[: opts.limit] if opts.limit else order
        eval_rows = np.arange(n, n + n_eval)
        seen = np.concatenate([train_rows, eval_rows])
    else:
        seen = order[: opts.limit] if opts.limit else order
        n_held = int(round(len(seen) * opts.eval_fraction))
        eval_rows, train_rows = seen[:n_held], seen[n_held:]
    if len(train_rows) == 0:
        raise ScanError("no training examples left after the evaluation split")
    return seen, eval_rows, train_rows


def max_length(opts: DataOptions, tokenizer: Any, model: Any) -> int:
    """The truncation length: --max-length, within the model's limit ('none': the limit). One
    rule for finetune and for analyze, which counts what finetune will see."""
    limits = [getattr(tokenizer, "model_max_length", None)]
    limits.append(getattr(getattr(model, "config", None), "max_position_embeddings", None))
    sane = [n for n in limits if isinstance(n, int) and 1 < n < 10**7]
    limit = min(sane) if sane else (opts.max_length or 512)
    if opts.max_length is None:
        return limit
    if opts.max_length > limit:
        raise VocabPruneError(
            f"--max-length {opts.max_length} is above the {limit} tokens the model reads"
        )
    return opts.max_length


def tokenize_kwargs(length: int | None) -> dict[str, Any]:
    return {"truncation": True, "max_length": length} if length else {}


@dataclass
class Pruning:
    """What choosing the vocabulary and pruning for training gave."""

    kept: KeptVocab
    vocab_size: int
    full_trainable: int
    trainable: int = 0
    collator: Any = None
    prepare_seconds: float = 0.0
    digests: list[str] = field(default_factory=list)


def choose_vocabulary(
    input_ids: Sequence[Sequence[int]],
    order: np.ndarray,
    *,
    tokenizer: Any,
    model: Any,
    meta: dict[str, Any],
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
    kept_file: str | None = None,
) -> Pruning:
    """The kept vocabulary: every id the run will see (the rows in `order`, as tokenized), or
    the one in --kept (a kept vocabulary, which must cover those ids; or counts, added to them)."""
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    seen = [input_ids[int(r)] for r in order]
    counts = count_token_ids(seen, vocab_size, source="training data")
    if combine is not None:
        counts = combine(counts)
    full = count_params(model, trainable_only=True)
    if kept_file and Path(kept_file).suffix.lower() == ".json":
        kept = KeptVocab.load(kept_file)
        kept.check_model(model)
        kept.check_tokenizer(tokenizer)
        _check_covers(kept, counts, tokenizer, kept_file)
        return Pruning(kept, vocab_size, full)
    if kept_file:
        given = load_counts(kept_file)
        given.check_tokenizer(tokenizer_fingerprint(tokenizer), kept_file)
        if given.vocab_size != vocab_size:
            raise MismatchError(
                f"{kept_file} counts {given.vocab_size} ids, the model has {vocab_size} rows"
            )
        counts = counts + given.counts
        meta = {**meta, "counts_file": str(kept_file)}
    kept = KeptVocab.from_counts(counts, tokenizer=tokenizer, model=model, meta=meta)
    return Pruning(kept, vocab_size, full)


def _check_covers(kept: KeptVocab, counts: np.ndarray, tokenizer: Any, source: str) -> None:
    missing = np.flatnonzero((counts > 0) & (kept.old_to_new < 0))
    if missing.size:
        first = int(missing[0])
        token = tokenizer.convert_ids_to_tokens(first) if tokenizer is not None else None
        name = f"{token!r} (id {first})" if token is not None else f"id {first}"
        raise MismatchError(
            f"the kept vocabulary in {source} lacks {name} and {missing.size - 1} more ids of "
            "this run's data; scan this data too"
        )


def prune_for_training(
    model: Any,
    pruning: Pruning,
    collator: Any,
    *,
    tokenizer: Any,
    enabled: bool,
    say: Say,
    output: Any = "auto",
) -> Pruning:
    """Prune (when enabled; `output` as prune's); the model reads the collator's original ids
    itself. Logs the vocabulary line."""
    t0 = time.perf_counter()
    if enabled:
        prune(model, pruning.kept, tokenizer=tokenizer, output=output)
    pruning.prepare_seconds = time.perf_counter() - t0
    pruning.collator = collator
    pruning.trainable = count_params(model, trainable_only=True)
    kept, size = pruning.kept, pruning.vocab_size
    say(
        f"vocabulary: {kept.size:,} of {size:,} ids kept ({kept.size / size:.1%}); "
        f"trainable parameters {pruning.trainable:,} (full {pruning.full_trainable:,})"
        + ("" if enabled else " [--no-prune]")
    )
    return pruning


def checkpoint_dir(opts: FinetuneOptions) -> Path | None:
    """Where checkpoints go (--checkpoint-dir, default OUT.checkpoints), when they are written
    or resumed from; None otherwise."""
    if not (opts.save_steps or opts.resume):
        return None
    out = Path(opts.out)
    return Path(opts.checkpoint_dir or out.with_name(out.name + ".checkpoints"))


def resume_checkpoint(resume: str | None, folder: Path | None) -> Path | None:
    """The checkpoint to resume from: a folder, or "auto" = the latest in `folder` (none:
    start fresh)."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(folder) if folder is not None else []
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise VocabPruneError(f"checkpoint to resume from not found: {path}")
    return path


def complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint-N folders in `folder` that are complete, by step: those holding
    vocabprune.json, which VocabPruneCallback writes (atomically) after Trainer saved all the
    rest. A checkpoint cut short (a signal, a full disk, kill -9) has none."""
    from vocabprune.train.callback import CHECKPOINT_FILE

    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()]
    found = [p for p in found if (p / CHECKPOINT_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def drop_partial_checkpoints(folder: Path, before: set[Path]) -> None:
    """Remove the checkpoints this run began and did not finish (checkpoints are complete or
    absent)."""
    done = set(complete_checkpoints(folder))
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if path not in before and path not in done and path.is_dir():
            remove(path)


def trainer_scratch(out: Path) -> contextlib.AbstractContextManager[Path]:
    """Trainer's output_dir: a scratch folder beside OUT, removed when the block ends, however
    it ends (an error, Ctrl-C, SIGTERM)."""
    return scratch_dir(out, "trainer")


def training_kwargs(opts: FinetuneOptions, output_dir: str, *, log: Any) -> dict[str, Any]:
    """The TrainingArguments every front-end shares (stock and sentence-transformers)."""
    import torch

    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=opts.batch_size,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        learning_rate=opts.lr,
        weight_decay=opts.weight_decay,
        seed=opts.seed,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        eval_strategy="no",
        report_to="none",
        logging_steps=opts.logging_steps,
        disable_tqdm=log is None,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def training_args(opts: FinetuneOptions, output_dir: str, *, log: Any, **task_args: Any) -> Any:
    """TrainingArguments of every task; task_args and --extra training args are added (a key
    given twice is an error, as in a plain call)."""
    from transformers import TrainingArguments

    common = training_kwargs(opts, output_dir, log=log)
    return TrainingArguments(**common, **task_args, **opts.extra_training_args)


def train(
    model: Any,
    targs: Any,
    train_set: Any,
    collator: Any,
    *,
    resume: Path | None = None,
    say: Say = quiet,
) -> tuple[Any, Any, float]:
    """Train through the stock Trainer with VocabPruneCallback (exact weight decay for the
    dropped rows; vocabprune.json in checkpoints). Returns (trainer, output, seconds)."""
    from transformers import Trainer

    from vocabprune.train.callback import VocabPruneCallback, check_resume

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
    folder = Path(targs.output_dir)
    before = set(folder.glob("checkpoint-*")) if folder.is_dir() else set()
    t0 = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BaseException:  # an error, a full disk, a signal: no half-written checkpoint stays
        drop_partial_checkpoints(folder, before)
        raise
    return trainer, output, time.perf_counter() - t0


def restore_trained(model: Any, pruned: bool) -> tuple[dict[str, Any] | None, float]:
    """Restore the trained rows into the full matrices (dropped rows get the tracked
    weight-decay factor). Returns (the decay factors, or None; seconds)."""
    t0 = time.perf_counter()
    decay_factor = None
    if pruned:
        state = get_state(model)
        decay_factor = dict(getattr(state, "dropped_scale", None) or {}) or None
        restore(model)
    return decay_factor, time.perf_counter() - t0


def device_of(model: Any) -> str:
    return str(next(model.parameters()).device)


@dataclass
class Trained:
    """What training gave, for the report."""

    output: Any
    seconds: float
    restore_seconds: float = 0.0
    decay_factor: dict[str, Any] | None = None


def build_report(
    opts: FinetuneOptions,
    *,
    head: dict[str, Any],
    paths: tuple[str, list[str]],
    pruning: Pruning,
    examples: tuple[int, int],
    trained: Trained,
    metrics: dict[str, Any],
    tail: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """The run report; head, metrics and tail are the task's own keys, in that place."""
    import torch

    return {
        **head,
        "model": paths[0],
        "data": paths[1],
        "pruned": opts.prune,
        "kept_tokens": pruning.kept.size,
        "vocab_size": pruning.vocab_size,
        "trainable_params": pruning.trainable,
        "full_trainable_params": pruning.full_trainable,
        "train_examples": examples[0],
        "eval_examples": examples[1],
        "steps": int(trained.output.global_step),
        "train_loss": float(trained.output.training_loss),
        **metrics,
        "train_seconds": round(trained.seconds, 3),
        "prepare_seconds": round(pruning.prepare_seconds, 4),
        "restore_seconds": round(trained.restore_seconds, 4),
        **tail,
        "torch": torch.__version__,
        "out": str(out),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / "vocabprune_run.json").write_text(json.dumps(report, indent=2, default=str))


def save_run(
    out: Path, *, overwrite: bool, model: Any, tokenizer: Any, kept: Any, report: dict[str, Any]
) -> None:
    """Write the full model, tokenizer, kept_vocab.json and vocabprune_run.json, atomically."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        kept.save(tmp / "kept_vocab.json")
        write_report(tmp, report)
