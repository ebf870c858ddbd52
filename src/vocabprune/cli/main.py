"""Command line: `vocabprune analyze`, `vocabprune finetune` and `vocabprune prune`.

Flags are parsed (cli/parser.py) into the typed options of cli/options.py, validated there, and
handed to the job. Every failure is one line on stderr naming the problem (`vocabprune: error:
...`) and exit status 2; outputs are written to temporaries and renamed under the rules of
core/files.py (inputs are never outputs, --overwrite replaces only vocabprune outputs), and the
temporaries of a run that fails or is interrupted (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are
removed. stdout carries only our output: what other libraries print while a command runs goes to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from vocabprune.cli.options import AnalyzeOptions, FinetuneOptions, PruneOptions
from vocabprune.cli.parser import EXIT_ERROR, build_parser
from vocabprune.core.errors import VocabPruneError
from vocabprune.core.files import output_rules

# Our own stdout while a command runs (sys.stdout then goes to stderr): see _own_stdout.
_OUT: list[TextIO] = []


def _stdout() -> TextIO:
    return _OUT[-1] if _OUT else sys.stdout


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


def _ready(opts: Any) -> None:
    """Options and input paths checked before the heavy imports (torch, transformers: seconds),
    so a wrong flag or path fails at once; then transformers is told to keep quiet."""
    opts.validate()
    opts.check_paths()
    _quiet_transformers()


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    opts = AnalyzeOptions(
        **_data(args),
        task=args.task,
        min_count=args.min_count,
        save_kept=args.save_kept,
        save_counts=args.save_counts,
        plot=args.plot,
        progress=False if args.json else None,
        overwrite=args.overwrite,
    )
    _ready(opts)
    from vocabprune.cli.analyze import analyze, format_report

    with output_rules(overwrite=opts.overwrite, inputs=opts.inputs()):
        report, _ = analyze(opts)
    if not args.json:
        out = _stdout()
        print(format_report(report), file=out)
        for key, what in (("kept_vocab_file", "kept vocabulary"), ("counts_file", "counts")):
            if report.get(key):
                print(f"{what} written to {report[key]}", file=out)
        if report.get("plot_file"):
            print(
                f"figure (vocabulary growth, top-k coverage) written to {report['plot_file']}",
                file=out,
            )
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
    names = ("out", "eval_data", "label_column", "max_steps", "epochs", "batch_size", "lr")
    names += ("weight_decay", "seed", "eval_fraction", "prune", "overwrite", "limit", "kept")
    names += ("save_steps", "checkpoint_dir", "resume", "task", "chunked_loss", "lm_head")
    names += ("source_lang", "target_lang")
    opts = FinetuneOptions(**_data(args), **{n: getattr(args, n) for n in names})
    _ready(opts)
    from vocabprune.cli.finetune import run_finetune
    from vocabprune.cli.lm import run_lm_finetune
    from vocabprune.cli.sentence import run_sentence_finetune

    # Trainer prints its logs on stdout: keep stdout for the one JSON object.
    with (
        contextlib.redirect_stdout(sys.stderr),
        output_rules(overwrite=opts.overwrite, inputs=opts.inputs()),
    ):
        if opts.task == "classification":
            report = run_finetune(opts, log=_say(args))
        elif opts.task == "sentence-embedding":
            report = run_sentence_finetune(opts, log=_say(args))
        else:
            report = run_lm_finetune(opts, log=_say(args), warn=_warn)
    report.pop("eval_predictions", None)
    if not args.json:
        print(_finetune_line(report), file=_stdout())
    return report


def cmd_prune(args: argparse.Namespace) -> dict[str, Any]:
    names = ("out", "standalone", "min_count", "target_size", "unknown", "overwrite", "kept")
    names += ("format", "quantize", "probe", "pooling")
    opts = PruneOptions(**_data(args), **{n: getattr(args, n) for n in names})
    _ready(opts)
    from vocabprune.cli.prune import run_prune

    with output_rules(overwrite=opts.overwrite, inputs=opts.inputs()):
        report = run_prune(opts, log=_say(args))
    if not args.json:
        gguf = report.get("gguf") or {}
        stored = f" as {gguf['outtype']}" if gguf else ""  # the source's own dtype otherwise
        print(
            f"{'standalone' if report['standalone'] else 'compact'} model written to "
            f"{report['out']}: kept {report['kept_tokens']:,}/{report['vocab_size']:,} ids, "
            f"weights {report['export_weights_bytes'] / 2**20:,.1f} MiB{stored} (full "
            f"{report['source_weights_bytes'] / 2**20:,.1f} MiB); "
            f"{report['changed_tokens']:,} corpus tokens changed",
            file=_stdout(),
        )
        print(_coverage_line(report), file=_stdout())
        if gguf.get("embedding_model") and gguf.get("pooling") is None:
            print(
                "the GGUF records no pooling (the source has no sentence-transformers pooling): "
                "llama.cpp returns one vector per token; --pooling mean|cls|last sets one",
                file=_stdout(),
            )
        elif gguf.get("embedding_model"):
            print(f"the GGUF records {gguf['pooling']} pooling", file=_stdout())
        if report.get("sentence_transformers") and not gguf:  # a GGUF records the pooling
            print(
                "sentence-transformers modules copied from the source: "
                + ", ".join(report["sentence_transformers"]),
                file=_stdout(),
            )
    return report


def _coverage_line(report: dict[str, Any]) -> str:
    """What a deployed model does with text the kept vocabulary lacks, and how much that is."""
    where = "the probe text" if isinstance(report["probe"], list) else report["probe"]
    line = (
        f"{where}: {report['probe_covered_fraction']:.2%} of {report['probe_tokens']:,} tokens "
        "covered by the kept vocabulary; "
    )
    uncovered = report.get("uncovered")
    if uncovered is None:
        return line + f"other tokens at inference: --unknown {report['unknown']}"
    line += f"the standalone tokenizer maps the rest to {uncovered['description']}"
    if report.get("probe_standalone_unk_tokens"):
        line += f" ({report['probe_standalone_unk_tokens']:,} UNK tokens in {where})"
    return line


def cmd_merge_counts(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from vocabprune.cli.options import check_output
    from vocabprune.data.counts import merge_counts, save_counts

    inputs = [*args.inputs, *(f"{p}.json" for p in args.inputs)]  # .npy sidecars too
    sidecar = [f"{args.out}.json"] if Path(args.out).suffix.lower() == ".npy" else []
    for path in [args.out, *sidecar]:
        check_output("out", path, overwrite=args.overwrite, inputs=inputs)
    if Path(args.out).suffix.lower() not in (".safetensors", ".npy"):
        raise VocabPruneError("--out of merge-counts is a .safetensors or .npy file")
    merged = merge_counts(args.inputs)
    with output_rules(overwrite=args.overwrite, inputs=inputs):
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
            f"{report['vocab_size']:,} ids used; written to {args.out}",
            file=_stdout(),
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


# The ending signals received: a library may turn the Interrupted raised inside it into its own
# error (transformers' lazy imports re-raise it as ModuleNotFoundError); the run still ends as
# interrupted, its clean-up having run on the way out.
_RECEIVED: list[int] = []


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM, SIGHUP (a closed terminal) or SIGQUIT, raised as Ctrl-C is
    so that every `finally` removes what it wrote."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    _RECEIVED.clear()  # a signal that ended an earlier main() in this process is not this run's

    def handler(signum: int, frame: Any) -> None:
        _RECEIVED.append(signum)
        raise Interrupted(signum)

    # Ctrl-C too, where it has Python's default handler (a background job ignores it: it stays
    # ignored), so that an interrupt a library turns into its own error is still known.
    ctrl_c = (
        [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    )
    previous = {}
    try:
        for signum in (*ENDING_SIGNALS, *ctrl_c):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


@contextlib.contextmanager
def _without_deepspeed() -> Iterator[None]:
    """No command uses DeepSpeed, so none imports it: accelerate imports it whenever it is
    installed (save_pretrained -> unwrap_model -> extract_model_from_parallel), and importing it
    prints a warning on stdout and takes a second. `sys.modules[name] = None` is Python's
    documented way to make a module unimportable; accelerate and transformers ask
    importlib.util.find_spec, which then answers None (not installed)."""
    if "deepspeed" in sys.modules:
        yield
        return
    sys.modules["deepspeed"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "deepspeed" in sys.modules and sys.modules["deepspeed"] is None:
            del sys.modules["deepspeed"]


@contextlib.contextmanager
def _own_stdout() -> Iterator[None]:
    """While a command runs, stdout goes to stderr: Python's sys.stdout and the process's file
    descriptor 1 (what C code and other libraries write there); our own output goes through
    _stdout(), onto the real stdout."""
    real = sys.stdout
    with contextlib.suppress(OSError, ValueError, AttributeError):
        real.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptor 1 or 2 (a daemon): Python's stdout only
        saved = -1
    try:
        writes_fd1 = real.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a test's capture: not descriptor 1
        writes_fd1 = False
    stream = real
    if saved >= 0 and writes_fd1:
        stream = os.fdopen(saved, "w", encoding=real.encoding or "utf-8", closefd=False)
    _OUT.append(stream)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _OUT.pop()
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
        if saved >= 0:
            os.dup2(saved, 1)
            os.close(saved)


ENDING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)


def _os_error(exc: OSError) -> str:
    """An OS error as one line: its reason and the file it names."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _fail(message: str) -> int:
    if _RECEIVED:  # an ending signal, turned into this error by the code it interrupted
        return _interrupted(_RECEIVED[0])
    text = " ".join(str(message).split()) or "unexpected error"
    print(f"vocabprune: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def _silence_stdout() -> None:
    """After stdout failed (full device), nothing more is written to it, not even at exit."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_json(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2, default=str))
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _terminate_as_interrupt():
            with _without_deepspeed(), _own_stdout():
                report = COMMANDS[args.command](args)
            if args.json and report.get("rank", 0) == 0:  # torchrun: rank 0 prints
                _print_json(report)
            else:
                sys.stdout.flush()
    except VocabPruneError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): say so once, and silence the final flush.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _fail("stdout was closed before all the output was written (broken pipe)")
    except OSError as exc:  # a full or read-only disk, a name too long, stdout on a full device
        _silence_stdout()
        return _fail(_os_error(exc))
    except MemoryError:
        return _fail("out of memory (try a smaller --batch-size or --max-length)")
    except KeyboardInterrupt as exc:
        return _interrupted(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
    except Exception:
        if _RECEIVED:  # an ending signal, turned into this error by the code it interrupted
            return _interrupted(_RECEIVED[0])
        raise
    return 0


def _interrupted(signum: int) -> int:
    name = signal.Signals(signum).name
    print(f"vocabprune: interrupted ({name}); unfinished outputs removed", file=sys.stderr)
    return 128 + int(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
