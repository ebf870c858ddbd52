"""The options of each command, typed and validated here, once, with the same rule wherever a
flag appears: the CLI parses flags into these, the jobs call `validate()` before doing anything,
so API callers get the same one-line errors. Field names are the flag names (`max_length` is
`--max-length`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vocabprune.core.errors import VocabPruneError

TASKS = ("classification", "masked-lm", "causal-lm", "seq2seq", "sentence-embedding")
UNKNOWN_POLICIES = ("error", "unk", "grow")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
MAX_SEED = 2**32 - 1


class OptionError(VocabPruneError):
    """An option has a value no command accepts."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(name: str, value: Any, *, low: int, none_ok: bool = False) -> None:
    """An integer >= low (None when allowed)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(f"{_flag(name)} must be a whole number >= {low}, not {value!r}")


def check_float(name: str, value: Any, *, low: float, high: float | None = None, open_low=False):
    """A finite number in [low, high) (or (low, ...) with open_low)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"{'>' if open_low else '>='} {low:g}" + (f" and < {high:g}" if high else "")
        raise OptionError(f"{_flag(name)} must be a finite number {bounds}, not {value!r}")


def check_output(name: str, value: Any, *, overwrite: bool | None = None) -> None:
    """A path to write: not empty, its folder writable; existing only with --overwrite."""
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"{_flag(name)} needs a path")
    path = Path(value)
    if overwrite is False and path.exists():
        raise OptionError(f"{_flag(name)} {value} already exists (use --overwrite)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OptionError(f"{_flag(name)} {value}: {parent} is a file, not a folder")


@dataclass(kw_only=True)
class DataOptions:
    """Where the examples come from and how they are tokenized (every command)."""

    model: str | None = None
    data: Sequence[str] = ()
    text_column: str | None = None
    max_length: int | None = None  # None: untruncated (finetune: the model's own limit)

    def validate(self) -> None:
        check_int("max_length", self.max_length, low=2, none_ok=True)
        if self.model is not None and not str(self.model).strip():
            raise OptionError("--model needs a path")
        for path in self.data:
            if not str(path).strip():
                raise OptionError("--data needs a path")
        if self.text_column is not None:
            columns = [c.strip() for c in self.text_column.split(",")]
            if not 1 <= len(columns) <= 2 or not all(columns):
                raise OptionError(
                    f"--text-column takes one column or two (a pair): {self.text_column!r}"
                )


@dataclass(kw_only=True)
class AnalyzeOptions(DataOptions):
    """`vocabprune analyze`."""

    min_count: int = 1
    save_kept: str | None = None
    save_counts: str | None = None
    plot: str | None = None
    progress: bool | None = None

    def validate(self) -> None:
        super().validate()
        check_int("min_count", self.min_count, low=1)
        if self.save_kept is not None:
            check_output("save_kept", self.save_kept)
        if self.save_counts is not None:
            check_output("save_counts", self.save_counts)
            if Path(self.save_counts).suffix.lower() not in (".safetensors", ".npy"):
                raise OptionError("--save-counts writes .safetensors or .npy files")
        if self.plot is not None:
            check_output("plot", self.plot)
            if Path(self.plot).is_dir():
                raise OptionError(f"--plot {self.plot} is a folder; give a file name")
            if Path(self.plot).suffix.lower() not in PLOT_SUFFIXES:
                raise OptionError(
                    f"--plot {self.plot}: unknown figure format; use {', '.join(PLOT_SUFFIXES)}"
                )


@dataclass(kw_only=True)
class FinetuneOptions(DataOptions):
    """`vocabprune finetune`."""

    out: str
    eval_data: Sequence[str] = ()
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
    task: str = "classification"  # or masked-lm, causal-lm, seq2seq, sentence-embedding
    kept: str | None = None  # a saved kept vocabulary (or counts) instead of scanning
    chunked_loss: bool = False  # causal-lm: the loss in chunks (train.chunked)
    source_lang: str | None = None  # seq2seq: the tokenizer's source language code (NLLB, ...)
    target_lang: str | None = None  # seq2seq: its target language code
    extra_training_args: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        if self.task not in TASKS:
            raise OptionError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        check_output("out", self.out, overwrite=self.overwrite)
        if self.max_steps != -1:
            check_int("max_steps", self.max_steps, low=1)
        check_float("epochs", self.epochs, low=0, open_low=True)
        check_int("batch_size", self.batch_size, low=1)
        check_float("lr", self.lr, low=0, open_low=True)
        check_float("weight_decay", self.weight_decay, low=0)
        check_int("seed", self.seed, low=0)
        if self.seed > MAX_SEED:
            raise OptionError(f"--seed must be at most {MAX_SEED}, not {self.seed}")
        check_float("eval_fraction", self.eval_fraction, low=0, high=1)
        check_int("limit", self.limit, low=1, none_ok=True)
        check_int("logging_steps", self.logging_steps, low=1)
        check_int("save_steps", self.save_steps, low=1, none_ok=True)
        if self.checkpoint_dir is not None:
            check_output("checkpoint_dir", self.checkpoint_dir)
        for path in self.eval_data:
            if not str(path).strip():
                raise OptionError("--eval-data needs a path")
        if self.chunked_loss and (self.task != "causal-lm" or not self.prune):
            raise OptionError("--chunked-loss is for --task causal-lm, pruned")
        if (self.source_lang or self.target_lang) and self.task != "seq2seq":
            raise OptionError("--source-lang / --target-lang are for --task seq2seq")


@dataclass(kw_only=True)
class PruneOptions(DataOptions):
    """`vocabprune prune`."""

    out: str
    standalone: bool = False
    min_count: int = 1
    target_size: int | None = None
    unknown: str | None = None
    overwrite: bool = False
    kept: str | None = None  # a saved kept vocabulary (or counts) instead of scanning

    def validate(self) -> None:
        super().validate()
        check_output("out", self.out, overwrite=self.overwrite)
        check_int("min_count", self.min_count, low=1)
        check_int("target_size", self.target_size, low=1, none_ok=True)
        if self.unknown is not None and self.unknown not in UNKNOWN_POLICIES:
            raise OptionError(
                f"--unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {self.unknown!r}"
            )
