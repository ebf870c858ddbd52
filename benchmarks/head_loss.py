"""The language-model loss head alone: memory and time of one forward + backward per head mode.

A light stand-in for the end-to-end runs (train_compare.py, lm_perplexity.py): only the head and
its loss, at SmolLM2-135M's head shape (576 x 49,152, 26,414 kept ids as in `smollm2_256`), on
random hidden states. Methods: `full` (the whole matrix trainable, full logits),
`restricted` (kept rows only, softmax over them), `restricted_tiled` (the same, in tiles:
chunked_loss's kernel), `frozen` (kept rows trainable, dropped rows frozen, full logits: what
`prune(output="frozen")` gives without chunked_loss), `frozen_tiled` (the same loss in tiles:
prune(output="frozen") + chunked_loss). Each run is a fresh process; peak RSS is VmHWM above the
process's RSS just before the step: the gradients and the logits are in it, the weights held
before the step are not (they are: full 113 MB; kept rows 61 MB; frozen rows another 52 MB).

    python benchmarks/head_loss.py [--tokens 1024] [--reps 3]   # results/head_loss.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "head_loss.json"
METHODS = ("full", "restricted", "restricted_tiled", "frozen", "frozen_tiled")
VOCAB, DIM, KEPT = 49_152, 576, 26_414


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(method: str, tokens: int) -> dict:
    import torch

    from vocabprune.train.tiled_ce import tiled_cross_entropy

    torch.manual_seed(0)
    full = torch.randn(VOCAB, DIM) * 0.02
    kept_ids = torch.randperm(VOCAB)[:KEPT].sort().values
    dropped = torch.ones(VOCAB, dtype=torch.bool)
    dropped[kept_ids] = False
    hidden = torch.randn(tokens, DIM, requires_grad=True)
    labels = kept_ids[torch.randint(0, KEPT, (tokens,))]  # the data's ids are kept ids
    position = torch.full((VOCAB,), -1, dtype=torch.long)
    position[kept_ids] = torch.arange(KEPT)
    order = torch.cat([kept_ids, dropped.nonzero().squeeze(1)]).argsort()
    if method == "full":
        weight = torch.nn.Parameter(full)
    else:
        weight = torch.nn.Parameter(full[kept_ids].clone())
        frozen = full[dropped].clone() if method.startswith("frozen") else None
        del full
    tile = max(1, (1 << 23) // (VOCAB if method.startswith("frozen") else KEPT))
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    if method == "full":
        loss = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels)
    elif method == "restricted":
        loss = torch.nn.functional.cross_entropy(hidden @ weight.t(), position[labels])
    elif method == "restricted_tiled":
        nll = tiled_cross_entropy(
            hidden, weight, None, position[labels], tile=tile, upstream=1.0 / tokens
        )
        loss = nll.mean()
    elif method == "frozen":
        both = torch.cat([hidden @ weight.t(), hidden @ frozen.t()], dim=-1)
        loss = torch.nn.functional.cross_entropy(both.index_select(-1, order), labels)
    else:
        nll = tiled_cross_entropy(
            hidden, weight, None, position[labels], tile=tile, frozen=frozen, upstream=1.0 / tokens
        )
        loss = nll.mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    return {
        "method": method,
        "tokens": tokens,
        "loss": float(loss.detach()),
        "seconds": seconds,
        "peak_rss_above_start_bytes": _rss("VmHWM") - before,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for _ in range(args.reps):
        for method in METHODS:  # interleaved, a fresh process each
            code = (
                f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import head_loss; "
                f"print(json.dumps(head_loss.child({method!r}, {args.tokens})))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for method, rs in runs.items():
        summary[method] = {
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_peak_rss_above_start_mib": statistics.median(
                r["peak_rss_above_start_bytes"] for r in rs
            )
            / 2**20,
            "loss": rs[0]["loss"],
        }
    result = {
        "benchmark": "head_loss",
        "shape": {"vocab": VOCAB, "dim": DIM, "kept": KEPT, "tokens": args.tokens},
        "reps": args.reps,
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main()["summary"], indent=2))
