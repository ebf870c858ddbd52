"""One AdamW step per head mode, in one process: full fine-tuning, the restricted head and the
frozen head (+ chunked_loss), CPU seconds per step side by side.

train_compare.py measures each method in a fresh process, one step after a warm-up, with two
threads: on this shared 2-core machine those wall-clock step times move 1.3x between two runs of
one method. Here the three models live in one process with one torch thread, so every step's
CPU time counts that step alone, and methods alternate (each repetition starting with the next
one) for `--reps` timed repetitions after one untimed round.

Models: SmolLM2-135M (the packaged weights, 49,152 ids) or the Gemma-3-270m shape (random
weights, 262,144 ids). Kept vocabulary: the batch's ids plus random ids up to `--kept`, plus the
first 16 (specials). Batch: `--batch BxT` random ids, labels = inputs (the model's own loss).

    flock /tmp/vp-heavy.lock python benchmarks/head_step.py --model smollm2 --batch 2x512
    # -> results/head_step_<model>_<BxT>.json, a markdown table on stdout
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

METHODS = ("full", "restricted", "frozen")


def _base(name: str) -> Any:
    if name == "smollm2":
        from transformers import AutoModelForCausalLM

        from vocabprune.fixtures import smollm2_path

        return AutoModelForCausalLM.from_pretrained(smollm2_path())
    shape = benchlib.SHAPES[name]
    torch.manual_seed(0)
    return benchlib.build_model(benchlib.build_config(shape), shape.model_class)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import vocabprune as vp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 or a benchlib shape (gemma3-270m)")
    p.add_argument("--batch", default="2x512", help="BxT tokens per step")
    p.add_argument("--kept", type=int, default=26000, help="random ids added to the batch's")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of every method")
    args = p.parse_args(argv)
    b, t = (int(x) for x in args.batch.split("x"))
    torch.set_num_threads(1)
    base = _base(args.model)
    vocab = int(base.config.vocab_size)
    rng = np.random.default_rng(0)
    ids = rng.integers(16, vocab, b * t)
    extra = rng.choice(vocab, min(args.kept, vocab), replace=False)
    chosen = np.unique(np.concatenate([ids, extra, np.arange(16)]))
    kept = vp.KeptVocab(kept_ids=chosen, counts=np.ones(chosen.size), vocab_size=vocab)
    batch = {"input_ids": torch.as_tensor(ids).reshape(b, t)}
    batch["labels"] = batch["input_ids"]
    models = {"full": base, "restricted": copy.deepcopy(base), "frozen": copy.deepcopy(base)}
    vp.prune(models["restricted"], kept, output="prune")
    vp.prune(models["frozen"], kept, output="frozen")
    vp.chunked_loss(models["frozen"])
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    losses: dict[str, list[float]] = {m: [] for m in METHODS}
    for rep in range(args.reps + 1):  # the first round warms up, not counted
        for name in METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]:
            model = models[name].train()
            start = time.process_time()
            loss = model(**batch).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            if rep:
                seconds[name].append(time.process_time() - start)
                losses[name].append(float(loss.detach()))
    median = {m: statistics.median(v) for m, v in seconds.items()}
    return {
        "benchmark": "head_step",
        "model": args.model,
        "batch": args.batch,
        "kept": kept.size,
        "vocab_size": vocab,
        "reps": args.reps,
        "threads": 1,
        "cpu_seconds": seconds,
        "median_cpu_seconds": median,
        "vs_full": {m: round(median[m] / median["full"], 3) for m in METHODS},
        "verdict_vs_full": {
            m: benchlib.verdict(benchlib.spread(seconds[m]), benchlib.spread(seconds["full"]))
            for m in METHODS
        },
        "losses": losses,
        "machine": benchlib.machine_info(),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| method | CPU s per step median [range] | /full | vs full |",
        "|---|---:|---:|---|",
    ]
    for m in METHODS:
        v = result["cpu_seconds"][m]
        lines.append(
            f"| {m} | {result['median_cpu_seconds'][m]:.2f} [{min(v):.2f}–{max(v):.2f}] | "
            f"{result['vs_full'][m]:.3f} | {result['verdict_vs_full'][m]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    out = main()
    print(table(out))
    path = HERE / "results" / f"head_step_{out['model']}_{out['batch']}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
