"""The main job: fine-tune a sequence classifier through HF Trainer, pruned, then restore and save.

Tokenize the data the run will see, count its ids, prune, train with a remapping collator,
restore the trained rows into the full matrix, and write an ordinary full model + tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

    from vocabprune import distributed as vpdist
    from vocabprune import training

    vpdist.init_from_env()  # under torchrun: the process group Trainer will use
    is_main = vpdist.rank() == 0
    say = (log if is_main else None) or (lambda msg: None)
    out = training.check_options(opts)
    model_path = opts.model or default_model()
    data_paths = list(opts.data) or default_data()

    data = load_labelled(data_paths, opts.text_column, opts.label_column)
    order, eval_rows, train_rows = training.split_rows(len(data.texts), opts)
    say(
        f"data: {len(train_rows)} train / {len(eval_rows)} eval examples, "
        f"{len(data.label_names)} labels"
    )

    tokenizer = load_tokenizer(model_path)
    args = (data.texts,) if data.pairs is None else (data.texts, data.pairs)
    encodings = dict(tokenizer(*args, **training.tokenize_kwargs(opts.max_length)))

    set_seed(opts.seed)  # the classifier head is initialised at load time
    model = load_model(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)),
        label2id={n: i for i, n in enumerate(data.label_names)},
    )
    vocab_size, full_trainable = training.model_sizes(model)

    # Every id the run will see: the training and evaluation inputs, as tokenized.
    # Every rank prunes to one vocabulary: counts combined (max: each rank read all the data),
    # then the kept digests compared; a rank that differs fails on every rank.
    kept = training.build_kept(
        encodings["input_ids"],
        order,
        vocab_size,
        tokenizer=tokenizer,
        model=model,
        meta={"max_length": opts.max_length, "examples": len(order)},
        combine=lambda counts: vpdist.agree_counts(counts, op="max"),
    )
    rank_digests = vpdist.check_same_kept(kept)
    collator, trainable, prepare_seconds = training.prune_for_training(
        model,
        kept,
        DataCollatorWithPadding(tokenizer),
        tokenizer=tokenizer,
        enabled=opts.prune,
        vocab_size=vocab_size,
        full_trainable=full_trainable,
        say=say,
    )

    train_set = _Examples(encodings, data.labels, train_rows)
    eval_set = _Examples(encodings, data.labels, eval_rows)
    checkpoint_dir = None
    if opts.save_steps or opts.resume:
        checkpoint_dir = Path(opts.checkpoint_dir or out.with_name(out.name + ".checkpoints"))
        scratch = str(checkpoint_dir)
    else:  # one scratch folder for all ranks (Trainer writes per-rank files into it)
        scratch = vpdist.broadcast_object(training.make_scratch(out) if is_main else None)
    resume = _resume_checkpoint(opts.resume, checkpoint_dir)
    targs = training.training_args(
        opts,
        scratch,
        log=log,
        per_device_eval_batch_size=max(opts.batch_size, 32),
        # torchrun on CPU: Trainer runs DDP over gloo only when told the run is CPU-only.
        **({"use_cpu": True} if vpdist.is_distributed() and not torch.cuda.is_available() else {}),
    )
    trainer, train_output, train_seconds = training.train(
        model, targs, train_set, collator, resume=resume, say=say
    )

    predictions: list[int] = []
    eval_accuracy = None
    eval_loss = None
    if len(eval_set):
        pred = trainer.predict(eval_set)
        predictions = np.asarray(pred.predictions).argmax(-1).tolist()
        eval_accuracy = float(np.mean(np.asarray(predictions) == np.asarray(pred.label_ids)))
        eval_loss = float(pred.metrics.get("test_loss", float("nan")))

    # once per rank; dropped rows get the tracked weight-decay factor
    decay_factor, restore_seconds = training.restore_trained(model, opts.prune)
    del trainer
    vpdist.barrier()
    if checkpoint_dir is None and is_main:
        training.rmtree(scratch)

    report = training.build_report(
        head={},
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
        metrics={"eval_loss": eval_loss, "eval_accuracy": eval_accuracy},
        train_seconds=train_seconds,
        prepare_seconds=prepare_seconds,
        restore_seconds=restore_seconds,
        tail={
            "device": training.device_of(model),
            "world_size": vpdist.world_size(),
            "rank": vpdist.rank(),
            "kept_digest": rank_digests[0],
            "rank_kept_digests": rank_digests,
            "dropped_decay_factor": decay_factor,
            "resumed_from": str(resume) if resume else None,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        },
        out=out,
    )
    if is_main:  # the full model is written once
        training.save_run(
            out,
            overwrite=opts.overwrite,
            model=model,
            tokenizer=tokenizer,
            kept=kept,
            report=report,
        )
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
