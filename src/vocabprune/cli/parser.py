"""The `vocabprune` argument parser: every option with its help text and its default shown, and
one-line errors (`vocabprune: error: ...`, exit status 2) for anything argparse refuses."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from vocabprune.cli.options import (
    DEFAULT_MAX_LENGTH,
    EXPORT_FORMATS,
    GGUF_POOLINGS,
    GGUF_TYPES,
    LM_HEADS,
    TASKS,
    UNKNOWN_POLICIES,
    gguf_available,
)

EXIT_ERROR = 2
DATA_HELP = (
    "data to scan (and train on): .txt (one example per line), .jsonl/.json, .csv/.tsv, "
    ".parquet, .arrow, a datasets save_to_disk folder (PATH@SPLIT picks a split), or a folder "
    "of <label>/*.txt; several paths, or the flag again, add sources (default: BBC News)"
)


class _Defaults(argparse.HelpFormatter):
    """Help with each option's default, unless the help text already says it (or there is
    none to say: an off flag, an empty list, no value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        value = action.default
        nothing = value is None or value is argparse.SUPPRESS or value == [] or action.nargs == 0
        if nothing or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {value})"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"vocabprune: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vocabprune")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _max_length(text: str) -> int | None:
    """--max-length: a number (checked with every other option), or 'none': no truncation."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number >= 2, or 'none', not {text!r}"
        ) from None


def _add_data_args(p: argparse.ArgumentParser, *, max_length: int | None, task: bool) -> None:
    by_task = "; --task causal-lm: SmolLM2" if task else ""
    p.add_argument(
        "--model",
        metavar="PATH",
        help=f"Hugging Face model folder (default: the packaged MiniLM{by_task})",
    )
    p.add_argument("--data", nargs="+", action="extend", default=[], metavar="PATH", help=DATA_HELP)
    p.add_argument(
        "--text-column",
        metavar="C",
        help="text column of tables; 'a,b' for sentence pairs (default: guessed: text, "
        "sentence, content, ...)",
    )
    limit = "the model's own limit" if max_length else "no truncation"
    p.add_argument(
        "--max-length",
        type=_max_length,
        default=max_length,
        metavar="N",
        help=f"truncate to N tokens, as training will; 'none': {limit}",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_analyze(sub: Any) -> None:
    an = sub.add_parser(
        "analyze",
        help="count the ids the data uses and what pruning saves",
        description="Count the token ids the data uses, and what pruning would save.",
    )
    _add_data_args(an, max_length=DEFAULT_MAX_LENGTH, task=True)
    an.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="count the data as `finetune --task` encodes it (sentence-embedding: each column "
        "alone; classification: a pair together; language modelling: a pair joined)",
    )
    an.add_argument("--min-count", type=int, default=1, metavar="N", help="keep ids seen N+ times")
    an.add_argument("--save-kept", metavar="FILE", help="write the kept vocabulary (JSON)")
    an.add_argument(
        "--save-counts",
        metavar="FILE",
        help="write the per-id counts (.safetensors or .npy, with the tokenizer's fingerprint), "
        "to merge with counts of other shards",
    )
    an.add_argument(
        "--plot",
        metavar="FILE",
        help="draw vocabulary growth and top-k coverage into FILE (.png, .pdf or .svg)",
    )
    an.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing --save-kept/--save-counts/--plot files (vocabprune's own only)",
    )
    _add_common(an)


def _add_training(ft: argparse.ArgumentParser) -> None:
    """The optimisation flags of finetune."""
    ft.add_argument(
        "--max-steps", type=int, default=-1, metavar="N", help="stop after N steps (-1: --epochs)"
    )
    ft.add_argument("--epochs", type=float, default=1.0, metavar="X", help="training epochs")
    ft.add_argument("--batch-size", type=int, default=16, metavar="N", help="examples per step")
    ft.add_argument("--lr", type=float, default=5e-5, metavar="X", help="peak learning rate")
    ft.add_argument("--weight-decay", type=float, default=0.0, metavar="X", help="AdamW decay")
    ft.add_argument("--seed", type=int, default=42, metavar="N", help="random seed")


def _add_finetune(sub: Any) -> None:
    ft = sub.add_parser(
        "finetune",
        help="fine-tune pruned, restore, and write the full model",
        description="Fine-tune through the HF Trainer with only the kept rows, restore the full "
        "matrix, and write an ordinary model that stock from_pretrained loads.",
    )
    _add_data_args(ft, max_length=DEFAULT_MAX_LENGTH, task=True)
    ft.add_argument("--out", required=True, metavar="DIR", help="folder for the restored model")
    ft.add_argument("--task", choices=TASKS, default="classification", help="objective")
    ft.add_argument(
        "--eval-data",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="evaluation data, used as given (default: --eval-fraction of --data, at random)",
    )
    ft.add_argument(
        "--label-column", metavar="C", help="label column (default: guessed; folders: sub-folder)"
    )
    _add_training(ft)
    ft.add_argument(
        "--eval-fraction",
        type=float,
        default=0.1,
        metavar="X",
        help="share of --data held out for evaluation when there is no --eval-data",
    )
    ft.add_argument("--limit", type=int, metavar="N", help="use only N examples (quick runs)")
    ft.add_argument(
        "--kept",
        metavar="FILE",
        help="a saved kept vocabulary (analyze --save-kept) or counts (--save-counts, merged "
        "shards) instead of scanning --data",
    )
    ft.add_argument(
        "--no-prune", dest="prune", action="store_false", help="fine-tune the full model (baseline)"
    )
    ft.add_argument(
        "--chunked-loss",
        action="store_true",
        help="causal-lm: compute the loss over the kept columns in tiles of tokens, so the "
        "[tokens x kept] logits are never held whole (lower peak memory on long steps)",
    )
    ft.add_argument(
        "--lm-head",
        choices=LM_HEADS,
        help="causal-lm, masked-lm, seq2seq: 'frozen' (default, as the library's "
        "prune(output='auto')) trains with the full softmax, the dropped rows frozen (no "
        "gradient, no optimizer state): full fine-tuning's gradients for every trained "
        "parameter, in tiles for causal-lm; 'restricted' (prune(output='prune')) with the "
        "softmax over the kept ids only (cheaper, not equal to full fine-tuning; its training "
        "loss is over kept columns)",
    )
    for flag, side in (("--source-lang", "source"), ("--target-lang", "target")):
        ft.add_argument(
            flag,
            metavar="CODE",
            help=f"seq2seq: the {side} language code a translation tokenizer writes "
            "(NLLB: eng_Latn, M2M100: en)",
        )
    ft.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ft.add_argument("--save-steps", type=int, metavar="N", help="write a checkpoint every N steps")
    ft.add_argument(
        "--checkpoint-dir", metavar="DIR", help="checkpoint folder (default: OUT.checkpoints)"
    )
    ft.add_argument(
        "--resume",
        metavar="CHECKPOINT|auto",
        help="resume from a checkpoint folder, or 'auto': the latest in the checkpoint folder",
    )
    _add_common(ft)


def _add_prune(sub: Any) -> None:
    pr = sub.add_parser(
        "prune",
        help="write a compact inference model with only the kept rows",
        description="Write a compact (or standalone) inference model holding only the kept rows.",
    )
    _add_data_args(pr, max_length=None, task=False)
    pr.add_argument("--out", required=True, metavar="DIR", help="folder for the compact model")
    pr.add_argument(
        "--standalone",
        action="store_true",
        help="rewrite the tokenizer to the kept vocabulary: loads without vocabprune",
    )
    pr.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="hf",
        help="with --standalone: hf (safetensors folder), onnx (onnx/model.onnx for ONNX "
        "Runtime, optimum, transformers.js) or gguf (one .gguf file --out for llama.cpp"
        + ("" if gguf_available() else "; needs pip install 'vocabprune[gguf]'")
        + ")",
    )
    pr.add_argument(
        "--quantize",
        metavar="TYPE",
        help="onnx: int8 (a dynamic int8 copy, onnx/model_quantized.onnx); gguf: the tensor "
        f"type, one of {', '.join(GGUF_TYPES)} (default f16)",
    )
    pr.add_argument(
        "--pooling",
        metavar="MODE",
        help="gguf, embedding models: the pooling llama.cpp applies, one of "
        f"{', '.join(GGUF_POOLINGS)} (default: the source's sentence-transformers pooling; a "
        "model without those files gets none: one vector per token)",
    )
    pr.add_argument(
        "--probe",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="text (same formats as --data) whose share covered by the kept vocabulary is "
        "reported (default: --data)",
    )
    pr.add_argument("--min-count", type=int, default=1, metavar="N", help="keep ids seen N+ times")
    pr.add_argument(
        "--target-size", type=int, metavar="N", help="keep at most N ids, most frequent first"
    )
    pr.add_argument(
        "--unknown",
        choices=UNKNOWN_POLICIES,
        help="at inference, ids the data never had: error, unk, or grow from the original "
        "checkpoint (default: error; lossy vocabularies: unk). --standalone: unk only (its "
        "tokenizer maps them to smaller kept pieces, byte pieces or UNK)",
    )
    pr.add_argument(
        "--kept",
        metavar="FILE",
        help="a saved kept vocabulary or counts instead of scanning --data",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(pr)


def _add_merge_counts(sub: Any) -> None:
    mc = sub.add_parser(
        "merge-counts",
        help="sum count files of shards (analyze --save-counts, count_shard) into one",
        description="Sum the per-id counts of shards counted anywhere into one count file, "
        "for --kept or build_kept_vocab(counts=...).",
    )
    mc.add_argument("inputs", nargs="+", metavar="FILE", help="count files (.safetensors, .npy)")
    mc.add_argument("--out", required=True, metavar="FILE", help="the merged count file")
    mc.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(mc)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vocabprune",
        description="Keep only the embedding rows your data uses; fine-tune; restore a full model.",
    )
    parser.add_argument("--version", action="version", version=f"vocabprune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_analyze(sub)
    _add_finetune(sub)
    _add_prune(sub)
    _add_merge_counts(sub)
    return parser
