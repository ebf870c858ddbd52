"""The options of each command, typed: the CLI parses flags into these, the jobs read them.
Field names are the flag names (`max_length` is `--max-length`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TASKS = ("classification", "masked-lm", "causal-lm", "sentence-embedding")


@dataclass(kw_only=True)
class DataOptions:
    """Where the examples come from and how they are tokenized (every command)."""

    model: str | None = None
    data: Sequence[str] = ()
    text_column: str | None = None
    max_length: int | None = None


@dataclass(kw_only=True)
class AnalyzeOptions(DataOptions):
    """`vocabprune analyze`."""

    min_count: int = 1
    save_kept: str | None = None
    plot: str | None = None
    progress: bool | None = None


@dataclass(kw_only=True)
class FinetuneOptions(DataOptions):
    """`vocabprune finetune`."""

    out: str
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
    task: str = "classification"  # or "masked-lm", "causal-lm", "sentence-embedding"
    extra_training_args: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class PruneOptions(DataOptions):
    """`vocabprune prune`."""

    out: str
    standalone: bool = False
    min_count: int = 1
    target_size: int | None = None
    unknown: str | None = None
    overwrite: bool = False
