"""HF Trainer integration: exact weight decay and resumable checkpoints for a pruned model.

    trainer = Trainer(model=pruned_model, ..., callbacks=[vp.VocabPruneCallback(eval_set)])
    vp.check_resume(model, checkpoint)          # only when resuming: validate + load decay state
    trainer.train(resume_from_checkpoint=checkpoint)
    vp.restore(model)                           # dropped rows get the tracked decay factor

The callback tracks the weight decay the optimizer applies to the rows the model does not hold
(vocabprune.decay) and writes `vocabprune.json` into every checkpoint folder: the kept vocabulary's
digest, its size, the pruned tensors and the decay state. Model weights in a checkpoint are full
vocabulary (state.py) and the Trainer's resume loads them through `load_state_dict`, which slices
them to the kept rows; the optimizer state in a checkpoint is kept-rows sized, so a checkpoint is
only resumable with the same kept vocabulary: `check_resume` refuses any other.

Given the evaluation data and evaluators the run will use (`VocabPruneCallback(eval_set,
evaluator)`), the callback checks when training starts that the kept vocabulary covers them, so a
run never trains for minutes and then stops at its first evaluation on an id it dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from vocabprune.core.errors import MismatchError, UnknownTokenError
from vocabprune.core.files import atomic_file
from vocabprune.core.model import model_name
from vocabprune.core.state import get_state
from vocabprune.train.decay import EXTRA_KEY, DecayTracker, get_tracker, track_weight_decay

CHECKPOINT_FILE = "vocabprune.json"
FORMAT = "vocabprune.checkpoint"
# The prune() option that gives each head mode of a record (core/state.py PrunedState.head).
HEAD_OPTIONS = {
    "frozen": "output='auto' (frozen)",
    "restricted": "output='prune'",
    None: "output='keep'",
}


def _ensure_tracker(model: Any) -> DecayTracker | None:
    if get_state(model) is None:
        return None
    tracker = get_tracker(model)
    if tracker is None:
        tracker = DecayTracker(model)
        tracker.state.extras[EXTRA_KEY] = tracker
    return tracker


def checkpoint_record(model: Any) -> dict[str, Any]:
    """What `vocabprune.json` holds for this model now."""
    state = get_state(model)
    if state is None:
        return {"format": FORMAT, "pruned": False}
    tracker = _ensure_tracker(model)
    return {
        "format": FORMAT,
        "pruned": True,
        "kept_digest": state.kept.digest,
        "kept_size": state.kept.size,
        "vocab_size": state.kept.vocab_size,
        "tensors": [t.name for t in state.tensors],
        "head": state.head,
        "decay": tracker.state_dict() if tracker is not None else None,
    }


def write_checkpoint_record(model: Any, folder: str | os.PathLike[str]) -> Path:
    """Write `vocabprune.json` atomically: written last, it marks the checkpoint complete."""
    path = Path(folder) / CHECKPOINT_FILE
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(checkpoint_record(model), indent=2))
    return path


def check_resume(model: Any, checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Refuse a checkpoint made with another model or kept vocabulary; load its decay state.

    Call before `trainer.train(resume_from_checkpoint=checkpoint)` (the model pruned or not,
    as it was when the checkpoint was written)."""
    folder = Path(checkpoint)
    path = folder / CHECKPOINT_FILE
    state = get_state(model)
    if not folder.is_dir():
        raise MismatchError(f"checkpoint folder not found: {folder}")
    if not path.exists():
        if state is None:
            return {"pruned": False}
        raise MismatchError(
            f"checkpoint {folder} has no {CHECKPOINT_FILE}: it is incomplete (its run stopped "
            "while writing it) or was not written by a pruned vocabprune run; resume from "
            "another (--resume auto takes the last complete one)"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MismatchError(f"checkpoint file {path} is unreadable: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise MismatchError(f"{path} is not a vocabprune checkpoint record")
    if not record.get("pruned"):
        if state is None:
            return record
        raise MismatchError(
            f"checkpoint {folder} comes from an unpruned run; resume it without pruning"
        )
    if state is None:
        raise MismatchError(
            f"checkpoint {folder} comes from a pruned run ({record.get('kept_size')} kept ids): "
            "prune the model with the same kept vocabulary before resuming"
        )
    name = model_name(model)
    if record.get("vocab_size") != state.kept.vocab_size:
        raise MismatchError(
            f"checkpoint {folder} was made for a vocabulary of {record.get('vocab_size')} ids, "
            f"model {name!r} has {state.kept.vocab_size}"
        )
    if record.get("kept_digest") != state.kept.digest:
        raise MismatchError(
            f"checkpoint {folder} was made with another kept vocabulary "
            f"({record.get('kept_size')} ids, digest {record.get('kept_digest')}; this run keeps "
            f"{state.kept.size} ids, digest {state.kept.digest}): its optimizer state "
            "does not fit; resume with the kept vocabulary saved with the checkpoint run"
        )
    if "head" in record and record["head"] != state.head:  # records before it have none
        raise MismatchError(
            f"checkpoint {folder} was trained with the {record['head'] or 'unpruned'} head, "
            f"model {name!r} has the {state.head or 'unpruned'} head (another loss): prune with "
            f"{HEAD_OPTIONS.get(record['head'], 'the same output=...')} to resume it"
        )
    if sorted(record.get("tensors") or []) != sorted(t.name for t in state.tensors):
        raise MismatchError(
            f"checkpoint {folder} pruned {record.get('tensors')}, this model prunes "
            f"{[t.name for t in state.tensors]}"
        )
    tracker = _ensure_tracker(model)
    if tracker is not None and record.get("decay"):
        tracker.load_state_dict(record["decay"])
    return record


def _strings(value: Any) -> list[str]:
    """The texts in an evaluator attribute: a list of strings (or of lists of them), or a dict of
    id -> text (an IR corpus, queries)."""
    if isinstance(value, str):
        return []
    if isinstance(value, Mapping):
        values = list(value.values())
        return [v for v in values if isinstance(v, str)]
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, (list, tuple)):
                out += [t for t in item if isinstance(t, str)]
        return out
    return []


def evaluator_texts(evaluator: Any) -> list[str]:
    """Every text a sentence-transformers evaluator will encode (its attributes holding texts:
    sentences, queries, corpus, anchors, ...; a SequentialEvaluator's evaluators)."""
    texts: list[str] = []
    for name, value in vars(evaluator).items():
        if name == "evaluators":
            for inner in value:
                texts += evaluator_texts(inner)
        elif not name.startswith("_"):
            texts += _strings(value)
    return texts


def _is_evaluator(source: Any) -> bool:
    return callable(source) and hasattr(source, "__dict__") and not hasattr(source, "__len__")


def _ids_of(source: Any, tokenizer: Any) -> Iterable[Any]:
    """Token ids of an evaluation source: tokenized rows (input_ids), texts, or an evaluator."""
    if _is_evaluator(source):
        texts = evaluator_texts(source)
    elif hasattr(source, "column_names") and "input_ids" in (source.column_names or []):
        return source["input_ids"]
    else:
        rows = list(source)
        if rows and isinstance(rows[0], Mapping) and "input_ids" in rows[0]:
            return [r["input_ids"] for r in rows]
        texts = [t for r in rows for t in ([r] if isinstance(r, str) else _strings(r))]
        if rows and isinstance(rows[0], Mapping):
            texts = [v for r in rows for v in r.values() if isinstance(v, str)]
    if not texts:
        return []
    if tokenizer is None:
        raise UnknownTokenError("checking evaluation texts needs the tokenizer (processing_class)")
    return tokenizer(texts)["input_ids"]


def check_covered(model: Any, *sources: Any, tokenizer: Any = None) -> None:
    """Refuse evaluation data or evaluators using ids the pruned model dropped, naming the first
    token: scan them with the training data (vp.build_kept_vocab(tokenizer, train, eval))."""
    from vocabprune.data.scan import count_token_ids

    state = get_state(model)
    if state is None:
        return
    kept = state.kept
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a SentenceTransformer's own
    for source in sources:
        if source is None:  # a run without evaluation: `VocabPruneCallback(eval_set)` with None
            continue
        rows = _ids_of(source, tokenizer)
        counts = count_token_ids(list(rows), kept.vocab_size, source="evaluation data")
        missing = np.flatnonzero((counts > 0) & (kept.old_to_new < 0))
        if missing.size:
            first = int(missing[0])
            token = tokenizer.convert_ids_to_tokens(first) if tokenizer is not None else None
            what = type(source).__name__
            raise UnknownTokenError(
                f"the {what} this run evaluates on uses {token!r} (id {first}) and "
                f"{missing.size - 1} more ids the kept vocabulary dropped; scan it with the "
                "training data (vp.build_kept_vocab(tokenizer, train, eval, ...))"
            )


class VocabPruneCallback(TrainerCallback):
    """Trainer callback: exact weight decay for the dropped rows, and `vocabprune.json` in every
    checkpoint (see `check_resume`). Harmless on an unpruned model (it records that).

    `check`: the evaluation data sets (tokenized rows or texts) and sentence-transformers
    evaluators the run will use; when training starts, the kept vocabulary must cover them
    (None stands for none, as a Trainer's eval_dataset may be)."""

    def __init__(self, *check: Any) -> None:
        self.check = check

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if self.check and model is not None:
            tokenizer = kw.get("processing_class") or kw.get("tokenizer")
            check_covered(
                model, *self.check, tokenizer=tokenizer or getattr(model, "tokenizer", None)
            )
        tracker = _ensure_tracker(model)
        if tracker is not None:
            optimizer = kw.get("optimizer")
            if optimizer is not None:
                track_weight_decay(optimizer, model)
            else:  # transformers 5 passes no optimizer to callbacks: hook optimizer steps
                tracker.attach_global()

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        tracker = get_tracker(model) if model is not None else None
        if tracker is not None:
            tracker.detach()

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if not state.is_world_process_zero or model is None:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_checkpoint_record(model, folder)
