"""Vocabulary curves from per-id counts: growth (with a Heaps'-law fit), top-k coverage, overlap.

Everything here needs only the per-id counts a scan already produced, no second pass:

- The growth curve is the expected number of distinct ids after n tokens, over random orders of
  the N token occurrences (the rarefaction curve): E[V(n)] = sum_i 1 - C(N - c_i, n) / C(N, n).
  Real text is bursty (a document repeats its words), so ids arrive somewhat slower in document
  order; the curve ends at the same point, V(N) = ids used.
- Heaps' law V(n) = K * n^beta is fitted by least squares in log-log space on the upper part of
  the curve (n >= 1% of N), where the law holds; beta near 1 means the data has barely begun to
  repeat itself, beta ~0.4-0.6 is typical of natural-language corpora.
- Coverage: the share of token occurrences covered by the k most frequent ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vocabprune.core.errors import VocabPruneError

COVERAGE_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def _lgamma(x: np.ndarray) -> np.ndarray:
    from math import lgamma

    return np.vectorize(lgamma, otypes=[np.float64])(x)


def growth_curve(counts: np.ndarray, points: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(tokens seen n, expected distinct ids) at `points` log-spaced n from 1 to N."""
    c = np.asarray(counts, dtype=np.int64)
    c = c[c > 0]
    total = int(c.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    n = np.unique(np.round(np.geomspace(1, total, num=max(2, points))).astype(np.int64))
    # log C(N - c, n) - log C(N, n) for every (id, n): P(id unseen after n tokens)
    values, multiplicity = np.unique(c, return_counts=True)  # few distinct counts: cheap
    lg_total = math.lgamma(total + 1)
    lg_rest = _lgamma((total - n).astype(np.float64) + 1)
    lg_nc = _lgamma((total - values).astype(np.float64) + 1)
    distinct = np.empty(n.size)
    for j, nj in enumerate(n):
        rest = total - values - nj  # >= 0 where the id can still be unseen
        possible = rest >= 0
        log_p = np.full(values.size, -np.inf)
        r = rest[possible].astype(np.float64)
        log_p[possible] = lg_nc[possible] - _lgamma(r + 1) + lg_rest[j] - lg_total
        unseen = np.exp(log_p)
        distinct[j] = float(np.sum(multiplicity * (1.0 - unseen)))
    return n, distinct


def heaps_fit(n: np.ndarray, distinct: np.ndarray, min_fraction: float = 0.01) -> dict[str, float]:
    """Least-squares fit of log V = log K + beta log n over n >= min_fraction * N."""
    n = np.asarray(n, dtype=np.float64)
    v = np.asarray(distinct, dtype=np.float64)
    if n.size < 2:
        return {"K": float("nan"), "beta": float("nan"), "r2": float("nan"), "fit_from": 0}
    keep = n >= max(1.0, min_fraction * n[-1])
    if keep.sum() < 3:
        keep = np.ones_like(n, dtype=bool)
    x, y = np.log(n[keep]), np.log(np.maximum(v[keep], 1e-12))
    beta, log_k = np.polyfit(x, y, 1)
    pred = log_k + beta * x
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return {
        "K": float(math.exp(log_k)),
        "beta": float(beta),
        "r2": 1.0 - ss_res / ss_tot,
        "fit_from": int(n[keep][0]),
    }


def coverage(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, share of tokens covered by the k most frequent ids) for k = 1..ids used."""
    c = np.sort(np.asarray(counts, dtype=np.int64)[np.asarray(counts) > 0])[::-1]
    if c.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    share = np.cumsum(c) / c.sum()
    return np.arange(1, c.size + 1), share


def coverage_levels(counts: np.ndarray) -> dict[str, int]:
    """Ids needed to cover 50/90/95/99/99.9/100% of the token occurrences."""
    k, share = coverage(counts)
    out = {}
    for level in COVERAGE_LEVELS:
        idx = int(np.searchsorted(share, level - 1e-12)) if k.size else 0
        out[f"{level:.1%}".replace(".0%", "%")] = int(k[min(idx, k.size - 1)]) if k.size else 0
    return out


def growth_report(counts: np.ndarray, points: int = 60) -> dict[str, Any]:
    """Growth curve, Heaps' fit and coverage levels, as JSON-ready values."""
    n, v = growth_curve(counts, points)
    fit = heaps_fit(n, v)
    return {
        "heaps_K": fit["K"],
        "heaps_beta": fit["beta"],
        "heaps_r2": fit["r2"],
        "heaps_fit_from_tokens": fit["fit_from"],
        "coverage_ids": coverage_levels(counts),
        "curve": {"tokens": n.tolist(), "distinct_ids": [round(x, 2) for x in v.tolist()]},
    }


def reference_split(names: list[str]) -> str:
    """The split others are compared with: one named like 'train', else the first."""
    for name in names:
        if "train" in name.lower():
            return name
    return names[0]


def split_overlap(splits: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Ids each split shares with the reference (train) split and the ids only it has.

    For every other split: ids in both, ids only in it (the ids a kept vocabulary built from
    the reference split alone would lack) and the share of its tokens those ids make up.
    """
    names = list(splits)
    if len(names) < 2:
        return {}
    ref = reference_split(names)
    ref_used = np.asarray(splits[ref]) > 0
    out: dict[str, Any] = {"reference": ref, "splits": {}}
    for name in names:
        if name == ref:
            continue
        counts = np.asarray(splits[name])
        used = counts > 0
        only = used & ~ref_used
        tokens = int(counts.sum())
        out["splits"][name] = {
            "ids_in_both": int(np.count_nonzero(used & ref_used)),
            "ids_only_here": int(np.count_nonzero(only)),
            "ids_only_in_reference": int(np.count_nonzero(ref_used & ~used)),
            "tokens_only_here": int(counts[only].sum()),
            "tokens_only_here_fraction": (int(counts[only].sum()) / tokens) if tokens else 0.0,
        }
    return out


PLOT_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def plot_format(path: str) -> str:
    """The figure format a file name asks for (.png, .pdf, .svg); any other suffix is refused."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise VocabPruneError(
            f"--plot {path}: unknown figure format {suffix or '(no suffix)'}; "
            f"use {', '.join(PLOT_FORMATS)}"
        )
    return PLOT_FORMATS[suffix]


def _growth_panel(ax: Any, report: Mapping[str, Any]) -> None:
    growth = report["growth"]
    n = np.asarray(growth["curve"]["tokens"], dtype=np.float64)
    v = np.asarray(growth["curve"]["distinct_ids"], dtype=np.float64)
    k_fit, beta = growth["heaps_K"], growth["heaps_beta"]
    start = growth.get("heaps_fit_from_tokens", 1)
    ax.plot(n, v, lw=2, label="distinct ids (expected, random token order)")
    fitted = n >= start
    label = f"Heaps' fit: {k_fit:.2f} · n^{beta:.3f} (fitted from n = {start:,})"
    ax.plot(n[fitted], k_fit * n[fitted] ** beta, "--", lw=1.5, label=label)
    size = report["vocab_size"]
    ax.axhline(size, color="grey", lw=0.8, ls=":")
    ax.text(
        n[-1] if n.size else 1, size, f"vocabulary {size:,}", va="bottom", ha="right", fontsize=8
    )
    ax.set_ylim(0.8, size * 3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("distinct ids")
    ax.set_title("Vocabulary growth")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.25)


def _coverage_panel(ax: Any, report: Mapping[str, Any], counts: np.ndarray) -> None:
    k, share = coverage(counts)
    ax.plot(k, 100 * share, lw=2)
    for level, height in (("90%", 8), ("99%", 30), ("99.9%", 52)):
        ids = report["growth"]["coverage_ids"][level]
        ax.axvline(ids, color="grey", lw=0.6, ls=":")
        ax.text(ids, height, f"{level}: {ids:,} ", fontsize=8, ha="right", va="bottom")
    ax.set_xscale("log")
    ax.set_ylim(0, 101)
    ax.set_xlabel("k most frequent ids")
    ax.set_ylabel("% of tokens covered")
    ax.set_title("Top-k coverage")
    ax.grid(True, which="both", alpha=0.25)


def _title(report: Mapping[str, Any]) -> str:
    parts = [p for p in str(report.get("model", "")).replace("\\", "/").split("/") if p]
    while len(parts) > 1 and parts[-1] in ("model", "models", "snapshots"):
        parts.pop()
    model = parts[-1] if parts else "model"
    return (
        f"{model}: {report['total_tokens']:,} tokens, {report['ids_in_data']:,} of "
        f"{report['vocab_size']:,} ids used (max length {report.get('max_length') or 'none'})"
    )


def plot(report: Mapping[str, Any], counts: np.ndarray, path: str) -> str:
    """Two panels: vocabulary growth with the Heaps' fit, and top-k coverage. Writes the format
    the file name asks for (PNG, PDF or SVG), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vocabprune.core.files import atomic_file

    fmt = plot_format(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        _growth_panel(ax1, report)
        _coverage_panel(ax2, report, counts)
        fig.suptitle(_title(report), fontsize=10)
        fig.tight_layout()
        with atomic_file(path) as tmp:
            # the mark core.files reads to let --overwrite replace this plot (and no other file)
            mark = {"png": "Software"}.get(fmt, "Creator")
            fig.savefig(tmp, dpi=110, format=fmt, metadata={mark: "vocabprune"})
    finally:
        plt.close(fig)
    return str(path)
