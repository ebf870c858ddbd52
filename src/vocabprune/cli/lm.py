"""`vocabprune finetune --task causal-lm|masked-lm|seq2seq`: language-model fine-tuning.

The same job as classification: read the texts, count the ids the run will see, prune (input
embedding and output head together; tied heads stay tied), train through the stock HF Trainer
(the pruned model remaps inputs and labels itself, -100 stays -100, and derives seq2seq decoder
inputs from the original labels), restore, and write an ordinary full model. The held-out loss is
measured after restore, with the full model and the full softmax, in original ids: that is the
model you get. Checkpoints (--save-steps) and --resume work as for classification.

seq2seq reads (source, target) pairs: --text-column source,target. A translation tokenizer that
writes language codes (NLLB, M2M100, mBART-50) needs them: --source-lang, --target-lang.

causal-lm also takes a vision-language model (PaliGemma, LLaVA, Qwen2-VL, Gemma 3) on text-only
data: its language model trains, no pixels needed.

--lm-head frozen (the default) trains with the full softmax: the head's dropped rows are frozen
(no gradient, no optimizer state) and score the dropped ids, so every gradient is full
fine-tuning's; causal-lm computes that loss in tiles of tokens (train/chunked.py).
--lm-head restricted trains with the softmax over the kept ids only: cheaper, but ids the data
never used get no probability mass pushed away from them, and the training loss it reports is
over the kept columns (report key `train_loss_kept_columns`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import vocabprune.cli.steps as steps
from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import FinetuneOptions
from vocabprune.core.errors import ScanError, VocabPruneError
from vocabprune.core.loaders import load_config, load_model, load_tokenizer
from vocabprune.data.sources import read_examples
from vocabprune.data.tasks import task_examples
from vocabprune.train.chunked import chunked_loss
from vocabprune.train.collators import CausalLMCollator, MaskedLMCollator, heldout_nll

LM_TASKS = ("masked-lm", "causal-lm", "seq2seq")
KEPT_LOSS = "train_loss_kept_columns"
HEAD_LINES = {
    "frozen": "head: full softmax, dropped rows frozen (training losses are over the full "
    "vocabulary)",
    "restricted": "head: softmax over the kept ids only (logged training losses are over the "
    "kept columns, not the full vocabulary; eval_loss is the restored model's, full vocabulary)",
}


class _Rows:
    """Tokenized examples (feature dicts) that Trainer can index; with `mask_seed`, each carries
    its own masking seed (masked LM: the same mask whenever it is drawn, so resume is exact)."""

    def __init__(
        self, features: list[dict[str, Any]], rows: np.ndarray, mask_seed: int | None = None
    ) -> None:
        self.features = features
        self.rows = rows
        self.mask_seed = mask_seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        feature = dict(self.features[row])
        if self.mask_seed is not None:
            feature["mask_seed"] = self.mask_seed * 1_000_003 + row
        return feature


def load_texts(paths: list[str], text_column: str | None) -> list[str]:
    """Texts from files or labelled folders (labels, if any, are ignored), as language
    modelling reads them (data/tasks.py: a pair is one text)."""
    shaped = task_examples(read_examples(paths, text_column), "causal-lm")
    texts = [t for t in shaped.texts if t and t.strip()]
    if not texts:
        raise ScanError("the data holds no non-empty texts")
    return texts


def load_pairs(paths: list[str], text_column: str | None) -> tuple[list[str], list[str]]:
    """(sources, targets) for seq2seq: --text-column source,target."""
    examples = task_examples(read_examples(paths, text_column), "seq2seq", ", ".join(paths))
    assert examples.pairs is not None
    return examples.texts, examples.pairs


def _check(opts: FinetuneOptions) -> None:
    if opts.task not in LM_TASKS:
        raise VocabPruneError(f"unknown task {opts.task!r}; choose one of {', '.join(LM_TASKS)}")
    if opts.task == "seq2seq" and not opts.model:
        raise VocabPruneError("--task seq2seq needs --model (no seq2seq model is packaged)")
    if opts.task == "seq2seq" and len((opts.text_column or "").split(",")) != 2:
        raise VocabPruneError(
            "--task seq2seq reads (source, target) pairs: --text-column source,target"
        )


@dataclass
class LMData:
    """Tokenized features (training rows, then any --eval-data rows) and the id lists the kept
    vocabulary counts (inputs, and seq2seq targets)."""

    features: list[dict[str, Any]]
    seen_ids: list[list[int]]
    n_eval: int


def _tokenize(opts: FinetuneOptions, tokenizer: Any, length: int) -> LMData:
    """Read --data (and --eval-data) and tokenize as the model will see them."""
    kwargs = steps.tokenize_kwargs(length)
    paths = list(opts.data) or default_data()
    parts = [paths] + ([list(opts.eval_data)] if opts.eval_data else [])
    if opts.task == "seq2seq":
        read = [load_pairs(p, opts.text_column) for p in parts]
        sources = [t for src, _ in read for t in src]
        targets = [t for _, tgt in read for t in tgt]
        enc = tokenizer(sources, text_target=targets, **kwargs)
        features = [
            {"input_ids": i, "attention_mask": m, "labels": t}
            for i, m, t in zip(enc["input_ids"], enc["attention_mask"], enc["labels"], strict=True)
        ]
        seen = [f["input_ids"] + f["labels"] for f in features]
        return LMData(features, seen, len(read[1][0]) if len(read) > 1 else 0)
    texts = [load_texts(p, opts.text_column) for p in parts]
    ids = tokenizer([t for group in texts for t in group], **kwargs)["input_ids"]
    features = [{"input_ids": row} for row in ids]
    return LMData(features, ids, len(texts[1]) if len(texts) > 1 else 0)


def _collator(opts: FinetuneOptions, tokenizer: Any, kept: Any, model: Any, *, seed: int) -> Any:
    """Causal: right padding, labels = inputs; masked: BERT masking over the kept ids, each
    example from its own seed (see _Rows); seq2seq: the stock DataCollatorForSeq2Seq (labels
    padded with -100, decoder inputs from them)."""
    if opts.task == "seq2seq":
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if opts.task == "causal-lm":
        return CausalLMCollator(pad_id)
    special = set(tokenizer.all_special_ids)
    candidates = [int(i) for i in kept.kept_ids if int(i) not in special]
    return MaskedLMCollator(tokenizer, candidates, seed=seed)


def _heldout(
    opts: FinetuneOptions, model: Any, tokenizer: Any, kept: Any, data: LMData, rows: Any
) -> dict[str, Any]:
    """Held-out loss and perplexity of the model we write: restored, full softmax, original ids."""
    metrics: dict[str, Any] = {"eval_loss": None, "eval_perplexity": None, "eval_accuracy": None}
    if not len(rows):
        return metrics
    collate = _collator(opts, tokenizer, kept, model, seed=opts.seed + 1)
    size = max(1, opts.batch_size)
    seed = opts.seed + 1 if opts.task == "masked-lm" else None
    held = _Rows(data.features, np.asarray(rows), mask_seed=seed)
    batches = [
        collate([held[j] for j in range(i, min(i + size, len(held)))])
        for i in range(0, len(held), size)
    ]
    total, count = heldout_nll(model, batches, causal=opts.task == "causal-lm")
    if count:
        metrics["eval_loss"] = total / count
        metrics["eval_perplexity"] = math.exp(total / count)
    return metrics


def set_languages(opts: FinetuneOptions, tokenizer: Any) -> None:
    """A translation tokenizer that writes language codes around the text (NLLB, M2M100,
    mBART-50) gets the run's codes; without them it would silently write its defaults (a target
    labelled with the source language)."""
    if opts.task != "seq2seq":
        return
    name = type(tokenizer).__name__
    if not (hasattr(tokenizer, "src_lang") and hasattr(tokenizer, "tgt_lang")):
        if opts.source_lang or opts.target_lang:
            raise VocabPruneError(f"--source-lang/--target-lang: {name} writes no language codes")
        return
    if not (opts.source_lang and opts.target_lang):
        raise VocabPruneError(
            f"{name} writes language codes: --task seq2seq needs --source-lang and "
            "--target-lang (codes of its vocabulary, e.g. eng_Latn and fra_Latn)"
        )
    vocab = tokenizer.get_vocab()
    for flag, code in (("--source-lang", opts.source_lang), ("--target-lang", opts.target_lang)):
        if code not in vocab:
            raise VocabPruneError(f"{flag} {code!r} is not a language code of {name}")
    tokenizer.src_lang, tokenizer.tgt_lang = opts.source_lang, opts.target_lang


def _causal_lm_class(model_path: str) -> Any:
    """AutoModelForCausalLM, or for a vision-language model without a causal-LM class
    (PaliGemma, LLaVA, Qwen2-VL) its image-text-to-text class: text-only data trains its
    language model. Anything else is refused here, naming what is missing."""
    import transformers
    from transformers.models.auto import modeling_auto

    model_type = getattr(load_config(model_path), "model_type", None)
    if model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    if model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return transformers.AutoModelForImageTextToText
    raise VocabPruneError(
        f"{model_path}: a {model_type!r} model has no causal language-model head for --task "
        "causal-lm (a decoder or vision-language model is needed; encoder-decoders: --task "
        "seq2seq)"
    )


def _load_model(opts: FinetuneOptions, model_path: str, warn: steps.Say) -> Any:
    """The LM, and a warning when the checkpoint has no trained head for the task (its missing
    weights start random: a masked-LM run on an encoder-only checkpoint starts near perplexity
    = vocabulary size)."""
    import transformers
    from transformers import set_seed

    set_seed(opts.seed)
    auto = {
        "masked-lm": transformers.AutoModelForMaskedLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }.get(opts.task) or _causal_lm_class(model_path)
    model, info = load_model(auto, model_path, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        warn(
            f"{model_path} has no trained {opts.task} head ({', '.join(missing[:3])}{more} start "
            "from random values); the run trains it from scratch"
        )
    return model


def _train(
    opts: FinetuneOptions, model: Any, collator: Any, train_set: _Rows, out: Any, log: Any
) -> tuple[steps.Trained, Any]:
    """Train (resuming when asked), restore. Returns (trained, the checkpoint resumed from)."""
    folder = steps.checkpoint_dir(opts)
    resume = steps.resume_checkpoint(opts.resume, folder)
    with steps.trainer_scratch(out) as scratch:
        targs = steps.training_args(
            opts, str(folder or scratch), log=log, remove_unused_columns=False
        )
        _, output, seconds = steps.train(
            model, targs, train_set, collator, resume=resume, say=log or steps.quiet
        )
        trained = steps.Trained(output, seconds)
        trained.decay_factor, trained.restore_seconds = steps.restore_trained(model, opts.prune)
    return trained, resume


def run_lm_finetune(
    opts: FinetuneOptions, *, log: Any = None, warn: steps.Say | None = None
) -> dict[str, Any]:
    """`vocabprune finetune --task causal-lm|masked-lm|seq2seq`; returns the report."""
    _check(opts)
    say = log or steps.quiet
    out = steps.check_options(opts)
    model_path = opts.model or default_model(opts.task)
    tokenizer = load_tokenizer(model_path)
    set_languages(opts, tokenizer)
    model = _load_model(opts, model_path, warn or steps.warn)
    data = _tokenize(opts, tokenizer, steps.max_length(opts, tokenizer, model))
    order, eval_rows, train_rows = steps.split_rows(
        len(data.features) - data.n_eval, opts, data.n_eval
    )
    if opts.task == "causal-lm":  # a one-token text predicts nothing
        train_rows = np.asarray([r for r in train_rows if len(data.seen_ids[int(r)]) >= 2])
    say(f"data: {len(train_rows)} train / {len(eval_rows)} eval texts ({opts.task})")
    pruning = steps.choose_vocabulary(
        data.seen_ids,
        order,
        tokenizer=tokenizer,
        model=model,
        meta={"max_length": opts.max_length, "examples": len(order), "task": opts.task},
        kept_file=opts.kept,
    )
    collator = _collator(opts, tokenizer, pruning.kept, model, seed=opts.seed)
    head = opts.lm_head or "frozen"
    steps.prune_for_training(
        model,
        pruning,
        collator,
        tokenizer=tokenizer,
        enabled=opts.prune,
        say=say,
        output="frozen" if head == "frozen" else "prune",
    )
    if opts.prune and (opts.chunked_loss or (head == "frozen" and opts.task == "causal-lm")):
        chunked_loss(model)
    if opts.prune:
        say(HEAD_LINES[head])
    masked = opts.seed if opts.task == "masked-lm" else None
    train_set = _Rows(data.features, train_rows, mask_seed=masked)
    trained, resume = _train(opts, model, collator, train_set, out, log)
    folder = steps.checkpoint_dir(opts)
    languages = {"source_lang": opts.source_lang, "target_lang": opts.target_lang}
    languages = languages if opts.source_lang else {}
    tail = {"dropped_decay_factor": trained.decay_factor, "device": steps.device_of(model)}
    tail.update(resumed_from=str(resume) if resume else None, checkpoint_dir=folder and str(folder))
    report = _honest_loss(
        steps.build_report(
            opts,
            head={"task": opts.task, "lm_head": head if opts.prune else None, **languages},
            paths=(model_path, list(opts.data) or default_data()),
            pruning=pruning,
            examples=(len(train_rows), len(eval_rows)),
            trained=trained,
            metrics=_heldout(opts, model, tokenizer, pruning.kept, data, eval_rows),
            tail=tail,
            out=out,
        )
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


def _honest_loss(report: dict[str, Any]) -> dict[str, Any]:
    """A restricted head's training loss is over the kept columns: its key says so."""
    if report.get("lm_head") != "restricted":
        return report
    return {(KEPT_LOSS if k == "train_loss" else k): v for k, v in report.items()}
