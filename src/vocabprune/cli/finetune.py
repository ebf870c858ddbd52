"""`vocabprune finetune` (classification): fine-tune a sequence classifier through the stock HF
Trainer, pruned, then restore and save an ordinary full model + tokenizer.

Tokenize the data the run will see, count its ids, prune, train, restore the trained rows into
the full matrix, evaluate, and write the model. Under torchrun every rank prunes to the same
kept vocabulary (counts combined, digests compared).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import vocabprune.cli.steps as steps
from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import FinetuneOptions
from vocabprune.core.errors import ScanError
from vocabprune.core.loaders import load_model, load_tokenizer
from vocabprune.data.sources import read_examples
from vocabprune.data.tasks import task_texts
from vocabprune.train import distributed as vpdist


@dataclass
class LabelledData:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    label_names: list[str]


def load_labelled(
    paths: list[str],
    text_column: str | None,
    label_column: str | None,
    eval_paths: list[str] | None = None,
) -> tuple[LabelledData, int]:
    """Texts and labels (0..n-1, one numbering for both) of the training files and then the
    evaluation files; returns the data and how many rows at its end are evaluation rows."""
    parts = [read_examples(paths, text_column, label_column, labels=True)]
    if eval_paths:
        parts.append(read_examples(eval_paths, text_column, label_column, labels=True))
    if len({p.pairs is None for p in parts}) > 1:
        raise ScanError("--data and --eval-data must both give one text, or both a pair")
    raw = [v for p in parts for v in (p.labels or [])]
    if any(v is None for v in raw):
        raise ScanError("some examples have no label")
    if len(parts) > 1:
        _check_eval_labels(parts[0].labels or [], parts[1].labels or [], eval_paths or [])
    names = sorted({str(v) for v in raw}, key=_label_key)
    if len(names) < 2:
        raise ScanError(f"classification needs at least 2 labels, found {names}")
    index = {name: i for i, name in enumerate(names)}
    texts = [t for p in parts for t in p.texts]
    pairs = None if parts[0].pairs is None else [t for p in parts for t in p.pairs or []]
    n_eval = len(parts[1]) if len(parts) > 1 else 0
    return LabelledData(texts, pairs, [index[str(v)] for v in raw], names), n_eval


def _check_eval_labels(train: list[Any], held: list[Any], eval_paths: list[str]) -> None:
    """Every evaluation label is one training gave the model (same value, same type): an
    unseen label can never be predicted, and `1.0` is not the class `1`."""
    seen = {str(v) for v in train}
    unseen = sorted({str(v) for v in held} - seen, key=_label_key)
    if not unseen:
        return
    kinds = sorted({type(v).__name__ for v in train}), sorted({type(v).__name__ for v in held})
    of_type = f" (labels of type {'/'.join(kinds[1])}, training has {'/'.join(kinds[0])})"
    raise ScanError(
        f"--eval-data {', '.join(eval_paths)} has the label {unseen[0]!r}"
        f"{of_type if kinds[0] != kinds[1] else ''} that --data never has "
        f"(training labels: {', '.join(sorted(seen, key=_label_key)[:8])})"
    )


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


@dataclass
class Loaded:
    """The job's inputs: data (training rows, then any --eval-data rows), split, tokenizer,
    encodings, and the model with a fresh classifier head."""

    model_path: str
    data: LabelledData
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # (seen, eval, train)
    tokenizer: Any
    encodings: dict[str, Any]
    model: Any


def _load(opts: FinetuneOptions, say: steps.Say) -> Loaded:
    from transformers import AutoModelForSequenceClassification, set_seed

    model_path = opts.model or default_model()
    paths = list(opts.data) or default_data()
    data, n_eval = load_labelled(paths, opts.text_column, opts.label_column, list(opts.eval_data))
    rows = steps.split_rows(len(data.texts) - n_eval, opts, n_eval)
    say(
        f"data: {len(rows[2])} train / {len(rows[1])} eval examples, {len(data.label_names)} labels"
    )
    tokenizer = load_tokenizer(model_path)
    set_seed(opts.seed)  # the classifier head is initialised at load time
    model = load_model(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)),
        label2id={n: i for i, n in enumerate(data.label_names)},
    )
    texts, pairs = task_texts(data.texts, data.pairs, opts.task)  # the rule analyze counts by
    args = (texts,) if pairs is None else (texts, pairs)
    length = steps.max_length(opts, tokenizer, model)
    encodings = dict(tokenizer(*args, **steps.tokenize_kwargs(length)))
    return Loaded(model_path, data, rows, tokenizer, encodings, model)


def _prepare(opts: FinetuneOptions, job: Loaded, say: steps.Say) -> steps.Pruning:
    """Every id the run will see (train and evaluation inputs, as tokenized), agreed by every
    rank (max: each rank read all the data), then pruned."""
    from transformers import DataCollatorWithPadding

    pruning = steps.choose_vocabulary(
        job.encodings["input_ids"],
        job.rows[0],
        tokenizer=job.tokenizer,
        model=job.model,
        meta={"max_length": opts.max_length, "examples": len(job.rows[0])},
        combine=lambda counts: vpdist.agree_counts(counts, op="max"),
        kept_file=opts.kept,
    )
    pruning.digests = vpdist.check_same_kept(pruning.kept)
    return steps.prune_for_training(
        job.model,
        pruning,
        DataCollatorWithPadding(job.tokenizer),
        tokenizer=job.tokenizer,
        enabled=opts.prune,
        say=say,
    )


def _evaluate(trainer: Any, eval_set: _Examples) -> tuple[list[int], dict[str, Any]]:
    """Predictions and metrics on the held-out examples (accuracy, loss)."""
    if not len(eval_set):
        return [], {"eval_loss": None, "eval_accuracy": None}
    pred = trainer.predict(eval_set)
    predictions = np.asarray(pred.predictions).argmax(-1).tolist()
    accuracy = float(np.mean(np.asarray(predictions) == np.asarray(pred.label_ids)))
    loss = float(pred.metrics.get("test_loss", float("nan")))
    return predictions, {"eval_loss": loss, "eval_accuracy": accuracy}


def _train(
    opts: FinetuneOptions, job: Loaded, pruning: steps.Pruning, scratch: str, log: Any
) -> tuple[steps.Trained, list[int], dict[str, Any], Path | None]:
    """Train, evaluate, restore. Returns (trained, predictions, metrics, resumed from)."""
    import torch

    checkpoint_dir = steps.checkpoint_dir(opts)
    resume = steps.resume_checkpoint(opts.resume, checkpoint_dir)
    targs = steps.training_args(
        opts,
        str(checkpoint_dir) if checkpoint_dir else scratch,
        log=log,
        per_device_eval_batch_size=max(opts.batch_size, 32),
        # torchrun on CPU: Trainer runs DDP over gloo only when told the run is CPU-only.
        **({"use_cpu": True} if vpdist.is_distributed() and not torch.cuda.is_available() else {}),
    )
    _, eval_rows, train_rows = job.rows
    train_set = _Examples(job.encodings, job.data.labels, train_rows)
    say = (log if vpdist.rank() == 0 else None) or steps.quiet
    say = (log if vpdist.rank() == 0 else None) or steps.quiet
    trainer, output, seconds = steps.train(
        job.model, targs, train_set, pruning.collator, resume=resume, say=say
    )
    trained = steps.Trained(output, seconds)
    predictions, metrics = _evaluate(trainer, _Examples(job.encodings, job.data.labels, eval_rows))
    # once per rank; dropped rows get the tracked weight-decay factor
    trained.decay_factor, trained.restore_seconds = steps.restore_trained(job.model, opts.prune)
    return trained, predictions, metrics, resume


def run_finetune(opts: FinetuneOptions, *, log: Any = None) -> dict[str, Any]:
    """Run the classification job; returns the report (also written to OUT/vocabprune_run.json)."""
    vpdist.init_from_env()  # under torchrun: the process group Trainer will use
    is_main = vpdist.rank() == 0
    say = (log if is_main else None) or steps.quiet
    out = steps.check_options(opts)
    job = _load(opts, say)
    pruning = _prepare(opts, job, say)
    with contextlib.ExitStack() as stack:
        # one scratch folder for all ranks (Trainer writes per-rank files into it)
        scratch = stack.enter_context(steps.trainer_scratch(out)) if is_main else None
        scratch = vpdist.broadcast_object(str(scratch) if scratch else None)
        trained, predictions, metrics, resume = _train(opts, job, pruning, scratch, log)
        vpdist.barrier()
    checkpoint_dir = steps.checkpoint_dir(opts)
    report = steps.build_report(
        opts,
        head={},
        paths=(job.model_path, list(opts.data) or default_data()),
        pruning=pruning,
        examples=(len(job.rows[2]), len(job.rows[1])),
        trained=trained,
        metrics=metrics,
        tail={
            "device": steps.device_of(job.model),
            "world_size": vpdist.world_size(),
            "rank": vpdist.rank(),
            "kept_digest": pruning.digests[0],
            "rank_kept_digests": pruning.digests,
            "dropped_decay_factor": trained.decay_factor,
            "resumed_from": str(resume) if resume else None,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        },
        out=out,
    )
    if is_main:  # the full model is written once
        steps.save_run(
            out,
            overwrite=opts.overwrite,
            model=job.model,
            tokenizer=job.tokenizer,
            kept=pruning.kept,
            report=report,
        )
    vpdist.barrier()
    report["eval_predictions"] = predictions
    return report
