"""`vocabprune finetune` (classification): fine-tune a sequence classifier through the stock HF
Trainer, pruned, then restore and save an ordinary full model + tokenizer.

Tokenize the data the run will see, count its ids, prune, train, restore the trained rows into
the full matrix, evaluate, and write the model. Under torchrun every rank prunes to the same
kept vocabulary (counts combined, digests compared).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import vocabprune.cli.steps as steps
from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import FinetuneOptions
from vocabprune.core.errors import ScanError, VocabPruneError
from vocabprune.core.loaders import load_model, load_tokenizer
from vocabprune.data.sources import read_examples
from vocabprune.train import distributed as vpdist


@dataclass
class LabelledData:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    label_names: list[str]


def load_labelled(
    paths: list[str], text_column: str | None, label_column: str | None
) -> LabelledData:
    """Read texts and labels from files or labelled folders (labels become 0..n-1)."""
    examples = read_examples(paths, text_column, label_column, labels=True)
    raw = examples.labels or []
    if any(v is None for v in raw):
        raise ScanError("some examples have no label")
    names = sorted({str(v) for v in raw}, key=_label_key)
    if len(names) < 2:
        raise ScanError(f"classification needs at least 2 labels, found {names}")
    index = {name: i for i, name in enumerate(names)}
    return LabelledData(examples.texts, examples.pairs, [index[str(v)] for v in raw], names)


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


def _load(opts: FinetuneOptions, say: steps.Say) -> tuple[Any, ...]:
    """Data, split, tokenizer, encodings and the model with a fresh classifier head."""
    from transformers import AutoModelForSequenceClassification, set_seed

    model_path = opts.model or default_model()
    data = load_labelled(list(opts.data) or default_data(), opts.text_column, opts.label_column)
    order, eval_rows, train_rows = steps.split_rows(len(data.texts), opts)
    say(
        f"data: {len(train_rows)} train / {len(eval_rows)} eval examples, "
        f"{len(data.label_names)} labels"
    )
    tokenizer = load_tokenizer(model_path)
    args = (data.texts,) if data.pairs is None else (data.texts, data.pairs)
    encodings = dict(tokenizer(*args, **steps.tokenize_kwargs(opts.max_length)))
    set_seed(opts.seed)  # the classifier head is initialised at load time
    model = load_model(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)),
        label2id={n: i for i, n in enumerate(data.label_names)},
    )
    return model_path, data, (order, eval_rows, train_rows), tokenizer, encodings, model


def _prepare(opts, model, tokenizer, encodings, order, say) -> steps.Pruning:  # type: ignore[no-untyped-def]
    """Every id the run will see (train and evaluation inputs, as tokenized), agreed by every
    rank (max: each rank read all the data), then pruned."""
    from transformers import DataCollatorWithPadding

    pruning = steps.choose_vocabulary(
        encodings["input_ids"],
        order,
        tokenizer=tokenizer,
        model=model,
        meta={"max_length": opts.max_length, "examples": len(order)},
        combine=lambda counts: vpdist.agree_counts(counts, op="max"),
    )
    pruning.digests = vpdist.check_same_kept(pruning.kept)
    return steps.prune_for_training(
        model,
        pruning,
        DataCollatorWithPadding(tokenizer),
        tokenizer=tokenizer,
        enabled=opts.prune,
        say=say,
    )


def _checkpoints(opts: FinetuneOptions, out: Path, is_main: bool) -> tuple[Any, str, Any]:
    """(checkpoint folder or None, Trainer output_dir, checkpoint to resume from or None)."""
    checkpoint_dir = None
    if opts.save_steps or opts.resume:
        checkpoint_dir = Path(opts.checkpoint_dir or out.with_name(out.name + ".checkpoints"))
        scratch = str(checkpoint_dir)
    else:  # one scratch folder for all ranks (Trainer writes per-rank files into it)
        scratch = vpdist.broadcast_object(steps.make_scratch(out) if is_main else None)
    return checkpoint_dir, scratch, resume_checkpoint(opts.resume, checkpoint_dir)


def _evaluate(trainer: Any, eval_set: _Examples) -> tuple[list[int], dict[str, Any]]:
    """Predictions and metrics on the held-out examples (accuracy, loss)."""
    if not len(eval_set):
        return [], {"eval_loss": None, "eval_accuracy": None}
    pred = trainer.predict(eval_set)
    predictions = np.asarray(pred.predictions).argmax(-1).tolist()
    accuracy = float(np.mean(np.asarray(predictions) == np.asarray(pred.label_ids)))
    loss = float(pred.metrics.get("test_loss", float("nan")))
    return predictions, {"eval_loss": loss, "eval_accuracy": accuracy}


def run_finetune(opts: FinetuneOptions, *, log: Any = None) -> dict[str, Any]:
    """Run the classification job; returns the report (also written to OUT/vocabprune_run.json)."""
    import torch

    vpdist.init_from_env()  # under torchrun: the process group Trainer will use
    is_main = vpdist.rank() == 0
    say = (log if is_main else None) or steps.quiet
    out = steps.check_options(opts)
    model_path, data, (order, eval_rows, train_rows), tokenizer, encodings, model = _load(opts, say)
    pruning = _prepare(opts, model, tokenizer, encodings, order, say)
    checkpoint_dir, scratch, resume = _checkpoints(opts, out, is_main)
    targs = steps.training_args(
        opts,
        scratch,
        log=log,
        per_device_eval_batch_size=max(opts.batch_size, 32),
        # torchrun on CPU: Trainer runs DDP over gloo only when told the run is CPU-only.
        **({"use_cpu": True} if vpdist.is_distributed() and not torch.cuda.is_available() else {}),
    )
    train_set = _Examples(encodings, data.labels, train_rows)
    trainer, output, seconds = steps.train(
        model, targs, train_set, pruning.collator, resume=resume, say=say
    )
    trained = steps.Trained(output, seconds)
    predictions, metrics = _evaluate(trainer, _Examples(encodings, data.labels, eval_rows))
    # once per rank; dropped rows get the tracked weight-decay factor
    trained.decay_factor, trained.restore_seconds = steps.restore_trained(model, opts.prune)
    del trainer
    vpdist.barrier()
    if checkpoint_dir is None and is_main:
        steps.rmtree(scratch)
    report = steps.build_report(
        opts,
        head={},
        paths=(model_path, list(opts.data) or default_data()),
        pruning=pruning,
        examples=(len(train_rows), len(eval_rows)),
        trained=trained,
        metrics=metrics,
        tail={
            "device": steps.device_of(model),
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
            model=model,
            tokenizer=tokenizer,
            kept=pruning.kept,
            report=report,
        )
    vpdist.barrier()
    report["eval_predictions"] = predictions
    return report


def resume_checkpoint(resume: str | None, checkpoint_dir: Path | None) -> Path | None:
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
