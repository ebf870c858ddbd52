"""`vocabprune finetune --task causal-lm|masked-lm`: language-model fine-tuning.

The same job as classification: read the texts, count the ids the run will see, prune (input
embedding and output head together; tied heads stay tied), train through the stock HF Trainer
(the pruned model remaps inputs and labels itself; -100 stays -100), restore, and write an
ordinary full model. The held-out loss is measured after restore, with the full model and the full
softmax, in original ids: that is the model you get.

A pruned head restricts the training softmax to the kept vocabulary: ids the data never used get
no probability mass pushed away from them. Use --no-prune for the exact full softmax.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import vocabprune.cli.steps as steps
from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import FinetuneOptions
from vocabprune.core.errors import ScanError, VocabPruneError
from vocabprune.core.loaders import load_model, load_tokenizer
from vocabprune.data.sources import read_examples
from vocabprune.train.collators import CausalLMCollator, MaskedLMCollator, heldout_nll

LM_TASKS = ("masked-lm", "causal-lm")


class _Rows:
    def __init__(self, input_ids: list[list[int]], rows: np.ndarray) -> None:
        self.input_ids = input_ids
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[int(self.rows[i])]}


def load_texts(paths: list[str], text_column: str | None) -> list[str]:
    """Texts from files or labelled folders (labels, if any, are ignored); pairs are joined."""
    texts = [t for t in read_examples(paths, text_column).joined() if t and t.strip()]
    if not texts:
        raise ScanError("the data holds no non-empty texts")
    return texts


def _check(opts: FinetuneOptions) -> None:
    if opts.task not in LM_TASKS:
        raise VocabPruneError(f"unknown task {opts.task!r}; choose one of {', '.join(LM_TASKS)}")
    for name in ("resume", "save_steps"):
        if getattr(opts, name, None):
            raise VocabPruneError(
                f"--{name.replace('_', '-')} is not supported with --task {opts.task}"
            )


def _collator(opts: FinetuneOptions, tokenizer: Any, kept: Any, *, seed: int) -> Any:
    """Causal: right padding, labels = inputs; masked: BERT masking over the kept ids."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if opts.task == "causal-lm":
        return CausalLMCollator(pad_id)
    special = set(tokenizer.all_special_ids)
    candidates = [int(i) for i in kept.kept_ids if int(i) not in special]
    return MaskedLMCollator(tokenizer, candidates, seed=seed)


def _heldout(
    opts: FinetuneOptions, model: Any, tokenizer: Any, kept: Any, input_ids: list, rows: Any
) -> dict[str, Any]:
    """Held-out loss and perplexity of the model we write: restored, full softmax, original ids."""
    metrics: dict[str, Any] = {"eval_loss": None, "eval_perplexity": None, "eval_accuracy": None}
    if not len(rows):
        return metrics
    collate = _collator(opts, tokenizer, kept, seed=opts.seed + 1)
    size = max(1, opts.batch_size)
    batches = [
        collate([{"input_ids": input_ids[int(r)]} for r in rows[i : i + size]])
        for i in range(0, len(rows), size)
    ]
    total, count = heldout_nll(model, batches, causal=opts.task == "causal-lm")
    if count:
        metrics["eval_loss"] = total / count
        metrics["eval_perplexity"] = math.exp(total / count)
    return metrics


def _load_model(opts: FinetuneOptions, model_path: str, warn: steps.Say) -> Any:
    """The LM, and a warning when the checkpoint has no trained head for the task (its missing
    weights start random: a masked-LM run on an encoder-only checkpoint starts near perplexity
    = vocabulary size)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, set_seed

    set_seed(opts.seed)
    auto = AutoModelForCausalLM if opts.task == "causal-lm" else AutoModelForMaskedLM
    model, info = load_model(auto, model_path, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        warn(
            f"{model_path} has no trained {opts.task} head ({shown} start from random values); "
            "the run trains it from scratch"
        )
    return model


def run_lm_finetune(
    opts: FinetuneOptions, *, log: Any = None, warn: steps.Say | None = None
) -> dict[str, Any]:
    """`vocabprune finetune --task causal-lm|masked-lm`; returns the report."""
    _check(opts)
    say = log or steps.quiet
    out = steps.check_options(opts)
    causal = opts.task == "causal-lm"
    model_path = opts.model or default_model(opts.task)
    data_paths = list(opts.data) or default_data()
    texts = load_texts(data_paths, opts.text_column)
    n_eval = 0
    if opts.eval_data:
        held = load_texts(list(opts.eval_data), opts.text_column)
        texts, n_eval = texts + held, len(held)
    order, eval_rows, train_rows = steps.split_rows(len(texts) - n_eval, opts, n_eval)
    say(f"data: {len(train_rows)} train / {len(eval_rows)} eval texts ({opts.task})")
    tokenizer = load_tokenizer(model_path)
    model = _load_model(opts, model_path, warn or steps.warn)
    length = steps.max_length(opts, tokenizer, model)
    input_ids = tokenizer(texts, **steps.tokenize_kwargs(length))["input_ids"]
    if causal:  # a one-token text predicts nothing
        train_rows = np.asarray([r for r in train_rows if len(input_ids[int(r)]) >= 2])
    pruning = steps.choose_vocabulary(
        input_ids,
        order,
        tokenizer=tokenizer,
        model=model,
        meta={"max_length": length, "examples": len(order), "task": opts.task},
        kept_file=opts.kept,
    )
    base = _collator(opts, tokenizer, pruning.kept, seed=opts.seed)
    steps.prune_for_training(model, pruning, base, tokenizer=tokenizer, enabled=opts.prune, say=say)
    with steps.trainer_scratch(out) as scratch:
        targs = steps.training_args(opts, str(scratch), log=log, remove_unused_columns=False)
        _, output, seconds = steps.train(model, targs, _Rows(input_ids, train_rows), base)
        trained = steps.Trained(output, seconds)
        trained.decay_factor, trained.restore_seconds = steps.restore_trained(model, opts.prune)
    report = steps.build_report(
        opts,
        head={"task": opts.task},
        paths=(model_path, data_paths),
        pruning=pruning,
        examples=(len(train_rows), len(eval_rows)),
        trained=trained,
        metrics=_heldout(opts, model, tokenizer, pruning.kept, input_ids, eval_rows),
        tail={"dropped_decay_factor": trained.decay_factor, "device": steps.device_of(model)},
        out=out,
    )
    steps.save_run(
        out,
        overwrite=opts.overwrite,
        model=model,
        tokenizer=tokenizer,
        kept=pruning.kept,
        report=report,
    )
    report["eval_predictions"] = []
    return report
