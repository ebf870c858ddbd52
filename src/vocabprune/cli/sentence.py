"""`vocabprune finetune --task sentence-embedding`: contrastive fine-tuning of a
SentenceTransformer on text pairs (MultipleNegativesRankingLoss, in-batch negatives), pruned,
through the stock SentenceTransformerTrainer; restored and written as a SentenceTransformer folder.

Pairs come from `--text-column a,b`, or, for texts that start with a title line (the embedded
default, BBC News), (title, body). The held-out score is retrieval of each pair's second text
from its first among the held-out pairs (accuracy@1 and MRR), measured after restore: the model
you get.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import vocabprune.cli.steps as steps
from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import FinetuneOptions
from vocabprune.core.errors import VocabPruneError
from vocabprune.core.files import atomic_dir, check_model_folder
from vocabprune.core.loaders import check_weights_cover, load_config, model_class, model_kwargs
from vocabprune.core.model import prune_target
from vocabprune.data.sources import Examples, read_examples
from vocabprune.data.tasks import task_examples


def _imports() -> tuple[Any, Any, Any]:
    """(sentence_transformers, its losses, datasets), or one clear error."""
    try:
        import datasets
        import sentence_transformers
    except ImportError as exc:
        raise VocabPruneError(
            "--task sentence-embedding needs sentence-transformers and datasets: "
            "pip install 'vocabprune[st]'"
        ) from exc
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import losses
    return sentence_transformers, losses, datasets


def retrieval_scores(model: Any, first: list[str], second: list[str]) -> dict[str, float]:
    """Each first text retrieves its own second text among all of them: accuracy@1 and MRR."""
    a = model.encode(first, convert_to_tensor=True, normalize_embeddings=True)
    b = model.encode(second, convert_to_tensor=True, normalize_embeddings=True)
    scores = (a @ b.T).cpu().numpy()
    own = scores[np.arange(len(first)), np.arange(len(first))]
    rank = (scores > own[:, None]).sum(axis=1) + 1
    return {"eval_accuracy": float(np.mean(rank == 1)), "eval_mrr": float(np.mean(1.0 / rank))}


def _pairs(paths: list[str], text_column: str | None) -> Examples:
    """The pairs, as the task reads them (data/tasks.py, the rule `analyze --task` counts by)."""
    source = ", ".join(map(str, paths))
    return task_examples(read_examples(paths, text_column), "sentence-embedding", source)


def _trainer(opts: FinetuneOptions, model: Any, train: Any, scratch: str, log: Any) -> Any:
    st, losses, _ = _imports()
    common = steps.training_kwargs(opts, scratch, log=log) | {"save_strategy": "no"}
    args = st.SentenceTransformerTrainingArguments(**common, **opts.extra_training_args)
    from vocabprune.train.callback import VocabPruneCallback

    return st.SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss=losses.MultipleNegativesRankingLoss(model),
        callbacks=[VocabPruneCallback()],
    )


def _absent_heads(path: str) -> dict[str, Any]:
    """from_pretrained kwargs that leave out a head the checkpoint lacks and the task never
    trains (a BERT pooler: mean pooling reads the hidden states), instead of a random one."""
    try:
        config = load_config(path)
    except VocabPruneError:
        return {}  # the SentenceTransformer loader names the problem
    return model_kwargs(model_class(config), path)


def _load(opts: FinetuneOptions) -> tuple[Any, Examples, int]:
    """The SentenceTransformer, the pairs (training, then --eval-data), how many are eval."""
    st, _, _ = _imports()
    pairs = _pairs(list(opts.data) or default_data(), opts.text_column)
    n_eval = 0
    if opts.eval_data:
        held = _pairs(list(opts.eval_data), opts.text_column)
        assert pairs.pairs is not None and held.pairs is not None
        pairs = Examples(pairs.texts + held.texts, pairs.pairs + held.pairs, None)
        n_eval = len(held)
    path = opts.model or default_model()
    check_model_folder(path)
    from transformers import set_seed

    set_seed(opts.seed)  # anything the checkpoint lacks starts from the same values every run
    try:
        model = st.SentenceTransformer(
            path, device="cpu", trust_remote_code=False, model_kwargs=_absent_heads(path)
        )
    except Exception as exc:  # another library's loader: one line naming the folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VocabPruneError(f"could not load a SentenceTransformer from {path}: {first}") from exc
    check_weights_cover(prune_target(model), path)
    return model, pairs, n_eval


def run_sentence_finetune(opts: FinetuneOptions, *, log: Any = None) -> dict[str, Any]:
    """Run the job; returns the report (also written to OUT/vocabprune_run.json)."""
    _, _, datasets = _imports()
    say = log or steps.quiet
    out = steps.check_options(opts)
    for name in ("resume", "save_steps"):
        if getattr(opts, name):
            flag = "--" + name.replace("_", "-")
            raise VocabPruneError(f"{flag} is not supported with --task sentence-embedding")
    model, pairs, n_eval = _load(opts)
    order, eval_rows, train_rows = steps.split_rows(len(pairs) - n_eval, opts, n_eval)
    assert pairs.pairs is not None
    first, second = pairs.texts, pairs.pairs
    say(f"data: {len(train_rows)} train / {len(eval_rows)} eval pairs (sentence-embedding)")
    inner = model[0].auto_model
    model.max_seq_length = steps.max_length(opts, model.tokenizer, inner)
    tokenized = model.tokenizer(
        [first[int(r)] for r in order] + [second[int(r)] for r in order],
        **steps.tokenize_kwargs(model.max_seq_length),
    )["input_ids"]
    pruning = steps.choose_vocabulary(
        tokenized,
        np.arange(len(tokenized)),
        tokenizer=model.tokenizer,
        model=inner,
        meta={"max_length": model.max_seq_length, "examples": len(order), "task": opts.task},
        kept_file=opts.kept,
    )
    steps.prune_for_training(
        model, pruning, None, tokenizer=model.tokenizer, enabled=opts.prune, say=say
    )
    rows = [int(r) for r in train_rows]
    train = datasets.Dataset.from_dict(
        {"anchor": [first[r] for r in rows], "positive": [second[r] for r in rows]}
    )
    with steps.trainer_scratch(out) as scratch:
        trainer = _trainer(opts, model, train, str(scratch), log)
        trained = steps.Trained(*steps.timed(trainer.train))
        trained.decay_factor, trained.restore_seconds = steps.restore_trained(model, opts.prune)
    metrics = {"eval_accuracy": None, "eval_mrr": None}
    if len(eval_rows):
        held = [int(r) for r in eval_rows]
        metrics = retrieval_scores(model, [first[r] for r in held], [second[r] for r in held])
    report = steps.build_report(
        opts,
        head={"task": opts.task},
        paths=(opts.model or default_model(), list(opts.data) or default_data()),
        pruning=pruning,
        examples=(len(train_rows), len(eval_rows)),
        trained=trained,
        metrics=metrics,
        tail={"dropped_decay_factor": trained.decay_factor, "device": steps.device_of(model)},
        out=out,
    )
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        model.save(str(tmp))
        pruning.kept.save(tmp / "kept_vocab.json")
        steps.write_report(tmp, report)
    report["eval_predictions"] = []
    return report
