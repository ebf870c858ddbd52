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
from vocabprune.core.files import check_model_folder, check_target, output_rules
from vocabprune.data.sources import check_source
from vocabprune.data.tasks import DEFAULT_MAX_LENGTH, TASKS

UNKNOWN_POLICIES = ("error", "unk", "grow")
# How a pruned LM head trains: the full softmax with the dropped rows frozen, or the softmax over
# the kept ids only (prune(output="frozen") / prune(output="prune")).
LM_HEADS = ("frozen", "restricted")
EXPORT_FORMATS = ("hf", "onnx", "gguf")
# llama.cpp's pooling types of an embedding model (deploy/gguf.py's POOLINGS, lower case).
GGUF_POOLINGS = ("none", "mean", "cls", "last")
# GGUF tensor types of deploy/gguf.py's writer (its OUTTYPES; f16 unless --quantize names one),
# here so that a wrong value fails before the heavy imports.
GGUF_TYPES = ("f32", "f16", "q8_0")
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


def check_task(task: Any) -> None:
    """One of the tasks of data/tasks.py (how the data is encoded, what is trained)."""
    if task not in TASKS:
        raise OptionError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")


def check_output(
    name: str,
    value: Any,
    *,
    overwrite: bool | None = None,
    kind: str = "file",
    inputs: Sequence[str | None] = (),
) -> None:
    """A path to write: not empty, its folder a folder, and the rules of every output
    (core.files.check_target: not an input, not a link, existing only with --overwrite and
    then only a vocabprune output)."""
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"{_flag(name)} needs a path")
    path = Path(value)
    if overwrite is not None:
        with output_rules(overwrite=overwrite, inputs=inputs):
            check_target(path, kind=kind, what=_flag(name))
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

    def inputs(self) -> list[str | None]:
        """The files and folders this run reads: never an output (core.files)."""
        return [self.model, *self.data]

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

    def check_paths(self) -> None:
        """The inputs exist (--model, --data, --eval-data, --kept): a wrong path fails at once,
        before the seconds of loading torch and transformers."""
        if self.model is not None:
            check_model_folder(self.model)
        for path in [*self.data, *getattr(self, "eval_data", ())]:
            check_source(path)
        kept = getattr(self, "kept", None)
        if kept is not None and not Path(kept).is_file():
            what = "is a folder, not a file" if Path(kept).is_dir() else "not found"
            raise OptionError(f"--kept {kept}: {what}")


@dataclass(kw_only=True)
class AnalyzeOptions(DataOptions):
    """`vocabprune analyze`: counts the data as `finetune --task` will encode it (data/tasks.py),
    at the same default length."""

    task: str = "classification"
    max_length: int | None = DEFAULT_MAX_LENGTH  # None: the model's own limit, as finetune
    min_count: int = 1
    save_kept: str | None = None
    save_counts: str | None = None
    plot: str | None = None
    progress: bool | None = None
    overwrite: bool = False

    def outputs(self) -> list[tuple[str, str]]:
        """(option, path) of every file this run writes (a .npy's sidecar too)."""
        found = [(n, getattr(self, n)) for n in ("save_kept", "save_counts", "plot")]
        found = [(n, p) for n, p in found if p is not None]
        if self.save_counts and Path(self.save_counts).suffix.lower() == ".npy":
            found.append(("save_counts", self.save_counts + ".json"))
        return found

    def validate(self) -> None:
        super().validate()
        check_task(self.task)
        check_int("min_count", self.min_count, low=1)
        paths = [str(Path(p).resolve()) for _, p in self.outputs() if str(p).strip()]
        if len(set(paths)) < len(paths):
            raise OptionError("--save-kept, --save-counts and --plot must be different files")
        for name, path in self.outputs():
            if name == "save_kept" and Path(path).is_dir():  # a folder gets kept_vocab.json
                path = str(Path(path) / "kept_vocab.json")
            check_output(name, path, overwrite=self.overwrite, inputs=self.inputs())
        suffix = Path(self.save_counts or "counts.npy").suffix.lower()
        if suffix not in (".safetensors", ".npy"):
            raise OptionError("--save-counts writes .safetensors or .npy files")
        if self.plot is not None:
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
    max_length: int | None = DEFAULT_MAX_LENGTH
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
    lm_head: str | None = None  # LM tasks: "frozen" (default: full softmax) or "restricted"
    source_lang: str | None = None  # seq2seq: the tokenizer's source language code (NLLB, ...)
    target_lang: str | None = None  # seq2seq: its target language code
    extra_training_args: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> list[str | None]:
        resume = self.resume if self.resume != "auto" else None
        return [*super().inputs(), *self.eval_data, self.kept, resume]

    def validate(self) -> None:
        super().validate()
        check_task(self.task)
        check_output("out", self.out, overwrite=self.overwrite, kind="folder", inputs=self.inputs())
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
            self._check_checkpoint_dir()
        for path in self.eval_data:
            if not str(path).strip():
                raise OptionError("--eval-data needs a path")
        if self.chunked_loss and (self.task != "causal-lm" or not self.prune):
            raise OptionError("--chunked-loss is for --task causal-lm, pruned")
        if self.lm_head is not None and self.lm_head not in LM_HEADS:
            raise OptionError(
                f"--lm-head must be one of {', '.join(LM_HEADS)}, not {self.lm_head!r}"
            )
        if self.lm_head is not None and self.task not in ("causal-lm", "masked-lm", "seq2seq"):
            raise OptionError("--lm-head is for --task causal-lm, masked-lm or seq2seq")
        if (self.source_lang or self.target_lang) and self.task != "seq2seq":
            raise OptionError("--source-lang / --target-lang are for --task seq2seq")

    def _check_checkpoint_dir(self) -> None:
        """Checkpoints live beside the output, never in it (the final rename would delete them)
        nor around it, nor in an input."""
        folder, out = Path(self.checkpoint_dir or "").resolve(), Path(self.out).resolve()
        if folder == out or out in folder.parents or folder in out.parents:
            raise OptionError(
                f"--checkpoint-dir {self.checkpoint_dir} and --out {self.out} must be separate "
                "folders (neither inside the other)"
            )
        for source in [*super().inputs(), *self.eval_data, self.kept]:
            real = Path(source).resolve() if source else None
            if real is not None and (real == folder or folder in real.parents):
                raise OptionError(
                    f"--checkpoint-dir {self.checkpoint_dir} is an input of this run ({source})"
                )


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
    format: str = "hf"  # hf (safetensors), onnx, gguf: the last two --standalone only
    quantize: str | None = None  # onnx: int8; gguf: a GGUF type, checked by the GGUF writer
    probe: Sequence[str] = ()  # text whose covered share the report gives (default: --data)
    pooling: str | None = None  # gguf, embedding models: none, mean, cls or last

    def inputs(self) -> list[str | None]:
        return [*super().inputs(), self.kept]

    def validate(self) -> None:
        super().validate()
        kind = "file" if self.format == "gguf" else "folder"  # GGUF: one file
        check_output("out", self.out, overwrite=self.overwrite, kind=kind, inputs=self.inputs())
        check_int("min_count", self.min_count, low=1)
        check_int("target_size", self.target_size, low=1, none_ok=True)
        if self.unknown is not None and self.unknown not in UNKNOWN_POLICIES:
            raise OptionError(
                f"--unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {self.unknown!r}"
            )
        if self.standalone and self.unknown in ("error", "grow"):
            raise OptionError(
                f"--unknown {self.unknown} cannot hold for --standalone: its rewritten tokenizer "
                "maps tokens the kept vocabulary lacks to smaller kept pieces, byte pieces or "
                "UNK by itself (drop --unknown, or export without --standalone)"
            )
        self._validate_format()

    def _validate_format(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise OptionError(
                f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {self.format!r}"
            )
        if self.format != "hf" and not self.standalone:
            raise OptionError(
                f"--format {self.format} writes a standalone model for a stock runtime: add "
                "--standalone"
            )
        if self.format == "gguf" and not gguf_available():
            raise OptionError(
                "--format gguf needs the gguf package: pip install 'vocabprune[gguf]'"
            )
        if self.pooling is not None:
            if self.format != "gguf":
                raise OptionError(
                    "--pooling is for --format gguf (hf and onnx exports carry the source's "
                    "sentence-transformers files, which name the pooling)"
                )
            if self.pooling not in GGUF_POOLINGS:
                raise OptionError(
                    f"--pooling must be one of {', '.join(GGUF_POOLINGS)}, not {self.pooling!r}"
                )
        if self.quantize is not None:
            if self.format == "hf":
                raise OptionError("--quantize needs --format onnx or gguf")
            if self.format == "onnx" and self.quantize != "int8":
                raise OptionError(f"--quantize for onnx must be int8, not {self.quantize!r}")
            if self.format == "gguf" and self.quantize not in GGUF_TYPES:
                raise OptionError(
                    f"--quantize for gguf must be one of {', '.join(GGUF_TYPES)}, "
                    f"not {self.quantize!r}"
                )


def gguf_available() -> bool:
    """Whether the GGUF writer can run: it needs the `gguf` package (the [gguf] extra)."""
    import importlib.util

    return importlib.util.find_spec("gguf") is not None
