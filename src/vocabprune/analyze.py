"""Analysis: how much of the vocabulary the data uses and what pruning would save, before training.

The model is built on the meta device from its config, so counting parameters loads no weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vocabprune.accounting import BYTES_PER_PARAM, budget
from vocabprune.loading import load_config, load_tokenizer
from vocabprune.scan import scan
from vocabprune.vocab import KeptVocab


def meta_model(model_path: str) -> Any:
    """The model's architecture with no weights (meta device): for counting parameters."""
    import torch
    from transformers import AutoModel

    config = load_config(model_path)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def analyze(
    model_path: str | None = None,
    data: Sequence[Any] = (),
    *,
    text_column: str | None = None,
    max_length: int | None = None,
    min_count: int = 1,
    progress: bool | None = None,
) -> tuple[dict[str, Any], KeptVocab]:
    """Scan the data with the model's tokenizer; report kept ids, parameters and bytes."""
    from vocabprune.finetune import default_data, default_model

    model_path = model_path or default_model()
    sources = list(data) or default_data()
    tokenizer = load_tokenizer(model_path)
    model = meta_model(model_path)
    rows = int(model.get_input_embeddings().weight.shape[0])
    result = scan(
        tokenizer,
        *sources,
        text_column=text_column,
        max_length=max_length,
        vocab_size=rows,
        progress=progress,
    )
    counts = result.counts
    kept = KeptVocab.from_counts(
        counts,
        tokenizer=tokenizer,
        model=model,
        min_count=min_count,
        vocab_size=rows,
        meta={"max_length": max_length, "total_tokens": result.total_tokens},
    )
    plan = budget(model, kept.size, rows)
    report: dict[str, Any] = {
        "model": model_path,
        "data": [str(s) for s in sources],
        "max_length": max_length,
        "vocab_size": rows,
        "tokenizer_size": len(tokenizer),
        "used_tokens": kept.size,
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
    }
    for regime in BYTES_PER_PARAM:
        b = plan.bytes(regime)
        report[f"{regime}_bytes_full"] = b["full"]
        report[f"{regime}_bytes_pruned"] = b["pruned"]
        report[f"{regime}_bytes_floor"] = b["floor"]
    report["adamw_fp32_bytes_full"] = report["fp32_adamw_bytes_full"]
    report["adamw_fp32_bytes_pruned"] = report["fp32_adamw_bytes_pruned"]
    report["splits"] = {
        name: {
            "examples": s.examples,
            "tokens": s.tokens,
            "ids_used": int(np.count_nonzero(s.counts)),
        }
        for name, s in result.splits.items()
    }
    return report, kept


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """A table a person can read."""
    rows = [
        ("model", report["model"]),
        ("max length", report["max_length"] or "none (untruncated)"),
        ("examples", f"{report['examples']:,}"),
        ("tokens", f"{report['total_tokens']:,}"),
        ("vocabulary", f"{report['vocab_size']:,} ids"),
        ("ids used by data", f"{report['ids_in_data']:,}"),
        ("ids kept (+specials)", f"{report['used_tokens']:,} ({report['used_fraction']:.1%})"),
        ("embedding params", f"{report['embedding_params']:,}"),
        ("model params", f"{report['model_params']:,}"),
        (
            "pruned model params",
            f"{report['pruned_model_params']:,} ({report['params_saved_fraction']:.1%} fewer)",
        ),
    ]
    for regime in BYTES_PER_PARAM:
        rows.append(
            (
                f"{regime} train bytes",
                f"{_mb(report[f'{regime}_bytes_full'])} full -> "
                f"{_mb(report[f'{regime}_bytes_pruned'])} pruned",
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if len(report["splits"]) > 1:
        lines.append("")
        lines.append("per source:")
        for name, s in report["splits"].items():
            lines.append(
                f"  {name}: {s['examples']:,} examples, {s['tokens']:,} tokens, "
                f"{s['ids_used']:,} ids"
            )
    return "\n".join(lines)
