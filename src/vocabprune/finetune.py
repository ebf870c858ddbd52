"""The main job: fine-tune a sequence classifier through HF Trainer, pruned, then restore and save.

Tokenize the data the run will see, count its ids, prune, train with a remapping collator,
restore the trained rows into the full matrix, and write an ordinary full model + tokenizer.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.accounting import count_params
from vocabprune.atomic import atomic_dir
from vocabprune.errors import ScanError, VocabPruneError
from vocabprune.loading import load_model, load_tokenizer
from vocabprune.sources import pick_label_column, pick_text_columns, read_table, texts_of


@dataclass
class FinetuneOptions:
    """Options of `vocabprune finetune` (the CLI flags carry the same names)."""

    out: str
    model: str | None = None
    data: Sequence[str] = ()
    text_column: str | None = None
    label_column: str | None = None
    max_length: int | None = 128
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.0
    seed: int = 42
    eval_fraction: float = 0.1
    prune: bool = True
    overwrite: bool = False
    limit: int | None = None
    logging_steps: int = 50
    save_steps: int | None = None  # write a Trainer checkpoint every N steps
    checkpoint_dir: str | None = None  # default: OUT.checkpoints beside OUT
    resume: str | None = None  # a checkpoint folder, or "auto" (the latest in checkpoint_dir)
    task: str = "classification"  # or "causal-lm" / "masked-lm" (vocabprune.lm)
    extra_training_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelledData:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    label_names: list[str]


def default_model() -> str:
    from vocabprune.fixtures import minilm_path

    return str(minilm_path())


def default_data() -> list[str]:
    from vocabprune.fixtures import bbc_news_dir

    return [str(bbc_news_dir())]


def load_labelled(
    paths: Sequence[str], text_column: str | None, label_column: str | None
) -> LabelledData:
    """Read texts and labels from files or labelled folders (labels become 0..n-1)."""
    texts: list[str] = []
    pairs: list[str] | None = None
    raw_labels: list[Any] = []
    for path in paths:
        columns = read_table(path)
        names = list(columns)
        cols = pick_text_columns(names, text_column, str(path))
        label = pick_label_column(names, label_column, str(path))
        t, p = texts_of(columns, cols, str(path))
        texts.extend(t)
        if p is not None:
            pairs = (pairs or []) + p
        raw_labels.extend(columns[label])
    if not texts:
        raise ScanError("the data holds no examples")
    if any(v is None for v in raw_labels):
        raise ScanError("some examples have no label")
    names_sorted = sorted({str(v) for v in raw_labels}, key=_label_key)
    if len(names_sorted) < 2:
        raise ScanError(f"classification needs at least 2 labels, found {names_sorted}")
    index = {name: i for i, name in enumerate(names_sorted)}
    return LabelledData(texts, pairs, [index[str(v)] for v in raw_labels], names_sorted)


def _label_key(name: str) -> tuple[int, Any]:
    try:
        return (0, int(name))
    except ValueError:
        return (1, name)


class _Examples:
    """A list of tokenized examples that Trainer can index (no datasets dependency needed)."""

    def __init__(
        self, encodings: dict[str, list[Any]], labels: list[int], rows: np.ndarray
    ) -> None:
        self.encodings = encodings
        self.labels = labels
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        item = {k: v[r] for k, v in self.encodings.items()}
        item["labels"] = self.labels[r]
        return item


def run_finetune(opts: FinetuneOptions, *, log: Any = None) -> dict[str, Any]:
    """Run the job; returns the report (also written to OUT/vocabprune_run.json)."""
    if opts.task != "classification":
        from vocabprune.lm import run_lm_finetune

        return run_lm_finetune(opts, log=log)
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from vocabprune import distributed as vpdist
    from vocabprune.prune import prune
    from vocabprune.remap import RemapCollator
    from vocabprune.restore import restore
    from vocabprune.scan import count_token_ids
    from vocabprune.state import get_state
    from vocabprune.trainer import VocabPruneCallback, check_resume
    from vocabprune.vocab import KeptVocab

    vpdist.init_from_env()  # under torchrun: the process group Trainer will use
    is_main = vpdist.rank() == 0
    say = (log if is_main else None) or (lambda msg: None)
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise VocabPruneError(f"output folder already exists: {out} (use --overwrite)")
    if not 0 <= opts.eval_fraction < 1:
        raise VocabPruneError(f"--eval-fraction must be in [0, 1), got {opts.eval_fraction}")
    model_path = opts.model or default_model()
    data_paths = list(opts.data) or default_data()

    data = load_labelled(data_paths, opts.text_column, opts.label_column)
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(len(data.texts))
    if opts.limit:
        order = order[: opts.limit]
    n_eval = int(round(len(order) * opts.eval_fraction))
    eval_rows, train_rows = order[:n_eval], order[n_eval:]
    if len(train_rows) == 0:
        raise ScanError("no training examples left after the evaluation split")
    say(
        f"data: {len(train_rows)} train / {len(eval_rows)} eval examples, "
        f"{len(data.label_names)} labels"
    )

    tokenizer = load_tokenizer(model_path)
    kwargs: dict[str, Any] = (
        {"truncation": True, "max_length": opts.max_length} if opts.max_length else {}
    )
    args = (data.texts,) if data.pairs is None else (data.texts, data.pairs)
    encodings = dict(tokenizer(*args, **kwargs))

    set_seed(opts.seed)  # the classifier head is initialised at load time
    model = load_model(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)),
        label2id={n: i for i, n in enumerate(data.label_names)},
    )
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    full_trainable = count_params(model, trainable_only=True)

    # Every id the run will see: the training and evaluation inputs, as tokenized.
    seen = [encodings["input_ids"][int(r)] for r in order]
    counts = count_token_ids(seen, vocab_size, source="training data")
    # Every rank prunes to one vocabulary: counts combined (max: each rank read all the data),
    # then the kept digests compared; a rank that differs fails on every rank.
    counts = vpdist.agree_counts(counts, op="max")
    kept = KeptVocab.from_counts(
        counts,
        tokenizer=tokenizer,
        model=model,
        meta={"max_length": opts.max_length, "examples": len(order)},
    )
    rank_digests = vpdist.check_same_kept(kept)
    collator: Any = DataCollatorWithPadding(tokenizer)
    t0 = time.perf_counter()
    if opts.prune:
        prune(model, kept)
        collator = RemapCollator(collator, kept, tokenizer=tokenizer)
    prepare_seconds = time.perf_counter() - t0
    trainable = count_params(model, trainable_only=True)
    say(
        f"vocabulary: {kept.size:,} of {vocab_size:,} ids kept ({kept.size / vocab_size:.1%}); "
        f"trainable parameters {trainable:,} (full {full_trainable:,})"
        + ("" if opts.prune else " [--no-prune]")
    )

    train_set = _Examples(encodings, data.labels, train_rows)
    eval_set = _Examples(encodings, data.labels, eval_rows)
    checkpoint_dir = None
    if opts.save_steps or opts.resume:
        checkpoint_dir = Path(opts.checkpoint_dir or out.with_name(out.name + ".checkpoints"))
        scratch = str(checkpoint_dir)
    else:  # one scratch folder for all ranks (Trainer writes per-rank files into it)
        scratch = vpdist.broadcast_object(
            tempfile.mkdtemp(
                prefix=".vocabprune-trainer-", dir=out.parent if out.parent.exists() else None
            )
            if is_main
            else None
        )
    resume = _resume_checkpoint(opts.resume, checkpoint_dir)
    targs = TrainingArguments(
        output_dir=scratch,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=max(opts.batch_size, 32),
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
        # torchrun on CPU: Trainer runs DDP over gloo only when told the run is CPU-only.
        **({"use_cpu": True} if vpdist.is_distributed() and not torch.cuda.is_available() else {}),
        **opts.extra_training_args,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_set,
        data_collator=collator,
        callbacks=[VocabPruneCallback()],  # exact weight decay; vocabprune.json in checkpoints
    )
    if resume is not None:
        check_resume(model, resume)  # refuses another model / kept vocabulary
        say(f"resuming from {resume}")
    t0 = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.perf_counter() - t0

    predictions: list[int] = []
    eval_accuracy = None
    eval_loss = None
    if len(eval_set):
        pred = trainer.predict(eval_set)
        predictions = np.asarray(pred.predictions).argmax(-1).tolist()
        eval_accuracy = float(np.mean(np.asarray(predictions) == np.asarray(pred.label_ids)))
        eval_loss = float(pred.metrics.get("test_loss", float("nan")))

    t0 = time.perf_counter()
    decay_factor = None
    if opts.prune:
        decay_factor = dict(get_state(model).dropped_scale) or None  # type: ignore[union-attr]
        restore(model)  # once per rank; dropped rows get the tracked weight-decay factor
    restore_seconds = time.perf_counter() - t0
    del trainer
    vpdist.barrier()
    if checkpoint_dir is None and is_main:
        _rmtree(scratch)

    report = {
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
        "eval_accuracy": eval_accuracy,
        "train_seconds": round(train_seconds, 3),
        "prepare_seconds": round(prepare_seconds, 4),
        "restore_seconds": round(restore_seconds, 4),
        "device": str(next(model.parameters()).device),
        "world_size": vpdist.world_size(),
        "rank": vpdist.rank(),
        "kept_digest": rank_digests[0],
        "rank_kept_digests": rank_digests,
        "dropped_decay_factor": decay_factor,
        "resumed_from": str(resume) if resume else None,
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        "torch": torch.__version__,
        "out": str(out),
    }
    if is_main:  # the full model is written once
        with atomic_dir(out, overwrite=opts.overwrite) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            kept.save(tmp / "kept_vocab.json")
            import json

            (tmp / "vocabprune_run.json").write_text(json.dumps(report, indent=2))
    vpdist.barrier()
    report["eval_predictions"] = predictions
    return report


def _resume_checkpoint(resume: str | None, checkpoint_dir: Path | None) -> Path | None:
    """The checkpoint to resume from: a folder, or "auto" = the latest in checkpoint_dir."""
    if not resume:
        return None
    if resume == "auto":
        from transformers.trainer_utils import get_last_checkpoint

        if checkpoint_dir is None or not checkpoint_dir.is_dir():
            return None
        last = get_last_checkpoint(str(checkpoint_dir))
        return Path(last) if last else None
    path = Path(resume)
    if not path.is_dir():
        raise VocabPruneError(f"checkpoint to resume from not found: {path}")
    return path


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # pragma: no cover
        raise VocabPruneError(f"could not remove scratch folder {path}")
