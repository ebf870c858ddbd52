"""Command line: `vocabprune analyze`, `vocabprune finetune` and `vocabprune prune`.

Flags are parsed into the typed options of cli/options.py and handed to the job. Every failure
is one line on stderr naming the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from vocabprune.cli.options import TASKS, AnalyzeOptions, FinetuneOptions, PruneOptions
from vocabprune.core.errors import VocabPruneError

EXIT_ERROR = 2


def _add_data_args(p: argparse.ArgumentParser, *, many: bool = True) -> None:
    p.add_argument("--model", help="Hugging Face model folder (default: the packaged MiniLM)")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="a .txt/.jsonl/.csv/.tsv/.parquet file or a folder of <label>/*.txt; "
        "repeatable (default: BBC News)",
    )
    p.add_argument("--text-column", help="text column; 'a,b' for sentence pairs")
    p.add_argument("--max-length", type=int, help="truncate to N tokens, as training will")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vocabprune")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vocabprune",
        description="Keep only the embedding rows your data uses; fine-tune; restore a full model.",
    )
    parser.add_argument("--version", action="version", version=f"vocabprune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    an = sub.add_parser("analyze", help="count the ids the data uses and what pruning saves")
    _add_data_args(an)
    an.add_argument("--min-count", type=int, default=1, help="keep ids seen at least N times")
    an.add_argument("--save-kept", metavar="FILE", help="write the kept vocabulary (JSON)")
    an.add_argument(
        "--plot", metavar="FILE.png", help="draw vocabulary growth and top-k coverage (PNG)"
    )
    an.add_argument("--json", action="store_true", help="print one JSON object")

    ft = sub.add_parser("finetune", help="fine-tune a sequence classifier, pruned, and restore")
    _add_data_args(ft)
    ft.set_defaults(max_length=128)
    ft.add_argument("--label-column", help="label column (default: guessed; folders: sub-folder)")
    ft.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="objective (default: classification); causal-lm defaults to the packaged SmolLM2",
    )
    ft.add_argument("--out", required=True, help="folder for the restored full model")
    ft.add_argument(
        "--max-steps", type=int, default=-1, help="stop after N steps (overrides epochs)"
    )
    ft.add_argument("--epochs", type=float, default=1.0)
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--lr", type=float, default=5e-5)
    ft.add_argument("--weight-decay", type=float, default=0.0)
    ft.add_argument("--seed", type=int, default=42)
    ft.add_argument("--eval-fraction", type=float, default=0.1)
    ft.add_argument("--limit", type=int, help="use only N examples (quick runs)")
    ft.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="fine-tune the full model (the baseline)",
    )
    ft.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    ft.add_argument("--save-steps", type=int, help="write a Trainer checkpoint every N steps")
    ft.add_argument(
        "--checkpoint-dir", help="folder for checkpoints (default: OUT.checkpoints beside OUT)"
    )
    ft.add_argument(
        "--resume",
        metavar="CHECKPOINT|auto",
        help="resume from a checkpoint folder, or 'auto': the latest in the checkpoint folder",
    )
    ft.add_argument("--json", action="store_true", help="print one JSON object")
    pr = sub.add_parser("prune", help="write a compact inference model with only the kept rows")
    _add_data_args(pr)
    pr.add_argument("--out", required=True, help="folder for the compact model")
    pr.add_argument(
        "--standalone",
        action="store_true",
        help="rewrite the tokenizer to the kept vocabulary: loads without vocabprune",
    )
    pr.add_argument("--min-count", type=int, default=1, help="keep ids seen at least N times")
    pr.add_argument("--target-size", type=int, help="keep at most N ids, most frequent first")
    pr.add_argument(
        "--unknown",
        choices=("error", "unk", "grow"),
        help="at inference, ids the data never had: error (default), unk, grow from the "
        "original checkpoint",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    from vocabprune.cli.analyze import analyze, format_report

    report, kept = analyze(
        AnalyzeOptions(
            model=args.model,
            data=args.data,
            text_column=args.text_column,
            max_length=args.max_length,
            min_count=args.min_count,
            progress=False if args.json else None,
        )
    )
    if args.save_kept:
        report["kept_vocab_file"] = str(kept.save(args.save_kept))
    if getattr(args, "plot", None):
        from vocabprune.data.growth import plot

        report["plot_file"] = plot(report, kept.counts, args.plot)
    if not args.json:
        print(format_report(report))
    return report


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from vocabprune.cli.finetune import run_finetune
    from vocabprune.cli.lm import run_lm_finetune
    from vocabprune.cli.sentence import run_sentence_finetune

    opts = FinetuneOptions(
        out=args.out,
        model=args.model,
        data=args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        max_length=args.max_length,
        max_steps=args.max_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        eval_fraction=args.eval_fraction,
        prune=args.prune,
        overwrite=args.overwrite,
        limit=args.limit,
        save_steps=args.save_steps,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        task=args.task,
    )
    log = None if args.json else (lambda msg: print(f"vocabprune: {msg}", file=sys.stderr))
    # Trainer prints its logs on stdout: keep stdout for the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        jobs = {"classification": run_finetune, "sentence-embedding": run_sentence_finetune}
        job = jobs.get(opts.task, run_lm_finetune)
        report = job(opts, log=log)
    report.pop("eval_predictions", None)
    if not args.json:
        acc = report["eval_accuracy"]
        print(
            f"{'pruned' if report['pruned'] else 'full'} fine-tuning: kept "
            f"{report['kept_tokens']:,}/{report['vocab_size']:,} ids, "
            f"{report['trainable_params']:,} trainable parameters "
            f"(full {report['full_trainable_params']:,}), {report['steps']} steps in "
            f"{report['train_seconds']:.1f} s, "
            + (
                f"held-out perplexity (restored model) {report['eval_perplexity']:.3f}; "
                if report.get("eval_perplexity") is not None
                else f"eval accuracy {'n/a' if acc is None else f'{acc:.3f}'}; "
            )
            + "restored full model written to "
            f"{report['out']}"
        )
    return report


def cmd_prune(args: argparse.Namespace) -> dict[str, Any]:
    from vocabprune.cli.prune import run_prune

    opts = PruneOptions(
        out=args.out,
        model=args.model,
        data=args.data,
        text_column=args.text_column,
        max_length=args.max_length,
        standalone=args.standalone,
        min_count=args.min_count,
        target_size=args.target_size,
        unknown=args.unknown,
        overwrite=args.overwrite,
    )
    log = None if args.json else (lambda msg: print(f"vocabprune: {msg}", file=sys.stderr))
    report = run_prune(opts, log=log)
    if not args.json:
        print(
            f"{'standalone' if report['standalone'] else 'compact'} model written to "
            f"{report['out']}: kept {report['kept_tokens']:,}/{report['vocab_size']:,} ids, "
            f"weights {report['export_weights_bytes'] / 2**20:,.1f} MiB (full "
            f"{report['source_weights_bytes'] / 2**20:,.1f} MiB); "
            f"{report['changed_tokens']:,} corpus tokens changed"
        )
    return report


COMMANDS = {"analyze": cmd_analyze, "finetune": cmd_finetune, "prune": cmd_prune}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    try:
        report = COMMANDS[args.command](args)
    except VocabPruneError as exc:
        print(f"vocabprune: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (FileExistsError, FileNotFoundError, PermissionError) as exc:
        print(f"vocabprune: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vocabprune: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and report.get("rank", 0) == 0:  # torchrun: rank 0 prints
        print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
