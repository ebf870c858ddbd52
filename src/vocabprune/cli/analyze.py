"""`vocabprune analyze`: how much of the vocabulary the data uses and what pruning would save,
before training.

The data is counted as `finetune --task` encodes it (data/tasks.py) at the length it truncates to
(`cli/steps.max_length`, the same default), so `analyze --save-kept` covers what finetune sees.
The model is built on the meta device from its config, so counting parameters loads no weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import vocabprune.cli.steps as steps
from vocabprune.cli.defaults import default_data, default_model
from vocabprune.cli.options import AnalyzeOptions
from vocabprune.core.loaders import load_config, load_tokenizer
from vocabprune.core.vocab import KeptVocab, tokenizer_fingerprint
from vocabprune.data.accounting import BYTES_BREAKDOWN, BYTES_PER_PARAM, budget
from vocabprune.data.counts import Counts, save_counts
from vocabprune.data.growth import growth_report, plot, split_overlap
from vocabprune.data.scan import scan


def meta_model(model_path: str) -> Any:
    """The model's architecture with no weights (meta device): for counting parameters."""
    import torch
    from transformers import AutoModel

    config = load_config(model_path)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def _memory(plan: Any) -> dict[str, Any]:
    """Training bytes per regime, flat (`fp32_adamw_bytes_full`, ...) and broken down."""
    out: dict[str, Any] = {}
    for regime in BYTES_PER_PARAM:
        b = plan.bytes(regime)
        for which in ("full", "pruned", "floor"):
            out[f"{regime}_bytes_{which}"] = b[which]
    out["adamw_fp32_bytes_full"] = out["fp32_adamw_bytes_full"]
    out["adamw_fp32_bytes_pruned"] = out["fp32_adamw_bytes_pruned"]
    # weights + grads + optimizer states per regime (accounting.py documents the byte model)
    out["memory"] = {
        regime: {"bytes_per_param": dict(BYTES_BREAKDOWN[regime]), **plan.breakdown(regime)}
        for regime in BYTES_PER_PARAM
    }
    return out


def _per_column(
    tokenizer: Any,
    sources: list[Any],
    columns: list[str],
    length: int,
    opts: AnalyzeOptions,
    rows: int,
) -> dict[str, Any]:
    """Sentence pairs: the ids each text column uses on its own, and the ids all of them use."""
    per_column, used = {}, []
    for column in columns:
        counts = scan(
            tokenizer,
            *sources,
            text_column=column,
            max_length=length,
            vocab_size=rows,
            progress=opts.progress,
        ).counts
        per_column[column] = {
            "tokens": int(counts.sum()),
            "ids_used": int(np.count_nonzero(counts)),
        }
        used.append(counts > 0)
    return {
        "columns": per_column,
        "columns_ids_in_all": int(np.count_nonzero(np.logical_and.reduce(used))),
    }


def _write_outputs(
    opts: AnalyzeOptions, report: dict[str, Any], kept: KeptVocab, counts: Any, tokenizer: Any
) -> None:
    """--save-kept, --save-counts and --plot, each written atomically; recorded in the report."""
    if opts.save_kept:
        report["kept_vocab_file"] = str(kept.save(opts.save_kept))
    if opts.save_counts:
        found = Counts(counts, tokenizer_fingerprint(tokenizer), {"shards": 1})
        report["counts_file"] = str(save_counts(opts.save_counts, found))
    if opts.plot:
        report["plot_file"] = plot(report, kept.counts, opts.plot)


def analyze(opts: AnalyzeOptions) -> tuple[dict[str, Any], KeptVocab]:
    """Scan the data with the model's tokenizer; report kept ids, parameters and bytes, and write
    the files asked for (kept vocabulary, counts, plot)."""
    opts.validate()
    model_path = opts.model or default_model(opts.task)
    sources = list(opts.data) or default_data()
    tokenizer = load_tokenizer(model_path)
    model = meta_model(model_path)
    rows = int(model.get_input_embeddings().weight.shape[0])
    length = steps.max_length(opts, tokenizer, model)  # the length finetune truncates to
    result = scan(
        tokenizer,
        *sources,
        text_column=opts.text_column,
        max_length=length,
        vocab_size=rows,
        progress=opts.progress,
        task=opts.task,
    )
    counts = result.counts
    kept = KeptVocab.from_counts(
        counts,
        tokenizer=tokenizer,
        model=model,
        min_count=opts.min_count,
        vocab_size=rows,
        meta={"max_length": length, "task": opts.task, "total_tokens": result.total_tokens},
    )
    report = _report(
        opts, model_path, sources, tokenizer, result, kept, budget(model, kept.size, rows)
    )
    columns = [c.strip() for c in (opts.text_column or "").split(",") if c.strip()]
    if len(columns) > 1:
        report.update(_per_column(tokenizer, sources, columns, length, opts, rows))
    _write_outputs(opts, report, kept, counts, tokenizer)
    return report, kept


def _report(
    opts: AnalyzeOptions,
    model_path: str,
    sources: list[Any],
    tokenizer: Any,
    result: Any,
    kept: KeptVocab,
    plan: Any,
) -> dict[str, Any]:
    """What the data uses and what pruning saves: ids, parameters, bytes, growth, splits."""
    counts, rows = result.counts, kept.vocab_size
    return {
        "model": model_path,
        "data": [str(s) for s in sources],
        "task": opts.task,
        "max_length": kept.meta["max_length"],
        "vocab_size": rows,
        "tokenizer_size": len(tokenizer),
        "used_tokens": kept.size,
        "kept_ids": kept.size,
        "ids_in_data": int(np.count_nonzero(counts)),
        "forced_ids": len(kept.forced_ids),
        "total_tokens": result.total_tokens,
        "examples": result.num_examples,
        "used_fraction": kept.size / rows,
        "hidden_size": plan.hidden,
        "embedding_params": plan.embedding_params,
        "model_params": plan.model_params,
        "pruned_model_params": plan.pruned_params,
        "floor_params": plan.floor_params,
        "params_saved_fraction": 1 - plan.pruned_params / plan.model_params,
        **_memory(plan),
        "growth": growth_report(counts),
        "splits": {
            name: {
                "examples": s.examples,
                "tokens": s.tokens,
                "ids_used": int(np.count_nonzero(s.counts)),
            }
            for name, s in result.splits.items()
        },
        "overlap": split_overlap({name: s.counts for name, s in result.splits.items()}),
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """A table a person can read."""
    rows = [
        ("model", report["model"]),
        ("task", f"{report['task']} (the data counted as finetune --task encodes it)"),
        ("max length", report["max_length"]),
        ("examples", f"{report['examples']:,}"),
        ("tokens", f"{report['total_tokens']:,}"),
        ("vocabulary", f"{report['vocab_size']:,} ids"),
        ("ids used by data", f"{report['ids_in_data']:,}"),
        ("ids kept (+specials)", f"{report['kept_ids']:,} ({report['used_fraction']:.1%})"),
        ("embedding params", f"{report['embedding_params']:,}"),
        ("model params", f"{report['model_params']:,}"),
        (
            "pruned model params",
            f"{report['pruned_model_params']:,} ({report['params_saved_fraction']:.1%} fewer)",
        ),
    ]
    growth = report.get("growth")
    if growth:
        cov = growth["coverage_ids"]
        rows.append(
            (
                "Heaps' law fit",
                f"distinct ids ~ {growth['heaps_K']:.2f} * tokens^{growth['heaps_beta']:.3f} "
                f"(R^2 {growth['heaps_r2']:.3f})",
            )
        )
        rows.append(
            (
                "ids covering tokens",
                ", ".join(f"{level}: {cov[level]:,}" for level in ("90%", "99%", "99.9%")),
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", *format_memory(report)]
    if len(report["splits"]) > 1:
        lines.append("")
        lines.append("per source:")
        for name, s in report["splits"].items():
            lines.append(
                f"  {name}: {s['examples']:,} examples, {s['tokens']:,} tokens, "
                f"{s['ids_used']:,} ids"
            )
        overlap = report.get("overlap") or {}
        for name, o in overlap.get("splits", {}).items():
            lines.append(
                f"  {name} vs {overlap['reference']}: {o['ids_in_both']:,} ids in both, "
                f"{o['ids_only_here']:,} only in {name} ({o['tokens_only_here']:,} tokens, "
                f"{o['tokens_only_here_fraction']:.2%} of its tokens), "
                f"{o['ids_only_in_reference']:,} only in {overlap['reference']}"
            )
    if report.get("columns"):
        lines.append("")
        lines.append("per column:")
        for name, c in report["columns"].items():
            lines.append(f"  {name}: {c['tokens']:,} tokens, {c['ids_used']:,} ids")
        lines.append(f"  ids used by every column: {report['columns_ids_in_all']:,}")
    return "\n".join(lines)


def format_memory(report: dict[str, Any]) -> list[str]:
    """Training bytes per regime: weights + grads + optimizer states (no activations)."""
    memory = report.get("memory") or {}
    lines = [
        "training memory, weights + gradients + optimizer states (activations not included):",
        f"  {'regime':<11} {'bytes/param':<14} {'full':>12} {'pruned':>12} {'floor':>12}",
    ]
    note = (
        "  floor: the model without its embedding + the kept rows, the least any pruning of "
        "this data\n  can hold; vocabprune's pruned model is exactly that, so pruned = floor"
    )
    for regime, m in memory.items():
        per = m["bytes_per_param"]
        per_text = f"{per['weights']}+{per['grads']}+{per['optimizer']}={sum(per.values())}"
        lines.append(
            f"  {regime:<11} {per_text:<14} {_mb(m['full']['total']):>12} "
            f"{_mb(m['pruned']['total']):>12} {_mb(m['floor']['total']):>12}"
        )
    return [*lines, note]
