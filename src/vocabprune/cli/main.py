"""Command line: `vocabprune analyze`, `vocabprune finetune` and `vocabprune prune`.

Flags are parsed (cli/parser.py) into the typed options of cli/options.py, validated there, and
handed to the job. Every failure is one line on stderr naming the problem (`vocabprune: error:
...`) and exit status 2; outputs are written to temporaries and renamed, and the temporaries of a
run that fails or is interrupted (SIGINT, SIGTERM) are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from vocabprune.cli.options import AnalyzeOptions, FinetuneOptions, PruneOptions
from vocabprune.cli.parser import EXIT_ERROR, build_parser
from vocabprune.core.errors import VocabPruneError


def _say(args: argparse.Namespace) -> Callable[[str], None] | None:
    return None if args.json else (lambda msg: print(f"vocabprune: {msg}", file=sys.stderr))


def _warn(message: str) -> None:
    print(f"vocabprune: warning: {message}", file=sys.stderr)


def _data(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "data": args.data,
        "text_column": args.text_column,
        "max_length": args.max_length,
    }


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    from vocabprune.cli.analyze import analyze, format_report

    opts = AnalyzeOptions(
        **_data(args),
        min_count=args.min_count,
        save_kept=args.save_kept,
        save_counts=args.save_counts,
        plot=args.plot,
        progress=False if args.json else None,
    )
    report, _ = analyze(opts)
    if not args.json:
        print(format_report(report))
    return report


def _finetune_line(report: dict[str, Any]) -> str:
    if report.get("eval_perplexity") is not None:
        score = f"held-out perplexity (restored model) {report['eval_perplexity']:.3f}"
    elif report.get("task") == "sentence-embedding":
        acc = report.get("eval_accuracy")
        score = f"held-out retrieval accuracy@1 {'n/a' if acc is None else f'{acc:.3f}'}"
    else:
        acc = report.get("eval_accuracy")
        score = f"eval accuracy {'n/a' if acc is None else f'{acc:.3f}'}"
    return (
        f"{'pruned' if report['pruned'] else 'full'} fine-tuning: kept "
        f"{report['kept_tokens']:,}/{report['vocab_size']:,} ids, "
        f"{report['trainable_params']:,} trainable parameters "
        f"(full {report['full_trainable_params']:,}), {report['steps']} steps in "
        f"{report['train_seconds']:.1f} s, {score}; restored full model written to {report['out']}"
    )


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from vocabprune.cli.finetune import run_finetune
    from vocabprune.cli.lm import run_lm_finetune
    from vocabprune.cli.sentence import run_sentence_finetune

    names = ("out", "eval_data", "label_column", "max_steps", "epochs", "batch_size", "lr")
    names += ("weight_decay", "seed", "eval_fraction", "prune", "overwrite", "limit", "kept")
    names += ("save_steps", "checkpoint_dir", "resume", "task", "chunked_loss")
    names += ("source_lang", "target_lang")
    opts = FinetuneOptions(**_data(args), **{n: getattr(args, n) for n in names})
    # Trainer prints its logs on stdout: keep stdout for the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        if opts.task == "classification":
            report = run_finetune(opts, log=_say(args))
        elif opts.task == "sentence-embedding":
            report = run_sentence_finetune(opts, log=_say(args))
        else:
            report = run_lm_finetune(opts, log=_say(args), warn=_warn)
    report.pop("eval_predictions", None)
    if not args.json:
        print(_finetune_line(report))
    return report


def cmd_prune(args: argparse.Namespace) -> dict[str, Any]:
    from vocabprune.cli.prune import run_prune

    names = ("out", "standalone", "min_count", "target_size", "unknown", "overwrite", "kept")
    opts = PruneOptions(**_data(args), **{n: getattr(args, n) for n in names})
    report = run_prune(opts, log=_say(args))
    if not args.json:
        print(
            f"{'standalone' if report['standalone'] else 'compact'} model written to "
            f"{report['out']}: kept {report['kept_tokens']:,}/{report['vocab_size']:,} ids, "
            f"weights {report['export_weights_bytes'] / 2**20:,.1f} MiB (full "
            f"{report['source_weights_bytes'] / 2**20:,.1f} MiB); "
            f"{report['changed_tokens']:,} corpus tokens changed"
        )
    return report


def cmd_merge_counts(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from vocabprune.cli.options import check_output
    from vocabprune.data.counts import merge_counts, save_counts

    check_output("out", args.out, overwrite=args.overwrite)
    if Path(args.out).suffix.lower() not in (".safetensors", ".npy"):
        raise VocabPruneError("--out of merge-counts is a .safetensors or .npy file")
    merged = merge_counts(args.inputs)
    save_counts(args.out, merged)
    report = {
        "out": str(args.out),
        "inputs": list(args.inputs),
        "shards": merged.meta.get("shards"),
        "vocab_size": merged.vocab_size,
        "total_tokens": int(merged.counts.sum()),
        "ids_used": int((merged.counts > 0).sum()),
        "tokenizer_fingerprint": merged.tokenizer_fingerprint,
    }
    if not args.json:
        print(
            f"merged {len(args.inputs)} count files ({report['shards']} shards): "
            f"{report['total_tokens']:,} tokens, {report['ids_used']:,} of "
            f"{report['vocab_size']:,} ids used; written to {args.out}"
        )
    return report


COMMANDS = {
    "analyze": cmd_analyze,
    "finetune": cmd_finetune,
    "prune": cmd_prune,
    "merge-counts": cmd_merge_counts,
}


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` removes what it wrote."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> int:
    text = " ".join(str(message).split()) or "unexpected error"
    print(f"vocabprune: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def _print_json(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2, default=str))
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    try:
        with _terminate_as_interrupt():
            report = COMMANDS[args.command](args)
            if args.json and report.get("rank", 0) == 0:  # torchrun: rank 0 prints
                _print_json(report)
            else:
                sys.stdout.flush()
    except VocabPruneError as exc:
        return _fail(str(exc))
    except (FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): say so once, and silence the final flush.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _fail("stdout was closed before all the output was written (broken pipe)")
    except MemoryError:
        return _fail("out of memory (try a smaller --batch-size or --max-length)")
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"vocabprune: interrupted ({name}); unfinished outputs removed", file=sys.stderr)
        return 128 + int(signum)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
