"""One short training run in a fresh process: bytes, peak RSS, steps/s for one method.

    python benchmarks/train_memory.py --model PATH --method pruned --max-length 128 --out R.json

Methods: full (stock fine-tuning), pruned (vocabprune: load_pruned; the batches keep the
tokenizer's ids, which the pruned model remaps inside),
peft_tt (PEFT TrainableTokens on the used ids, every other parameter trainable too, so it
trains what the pruned run trains). The same loop for all: AdamW (lr 5e-5, weight decay 0) on
BBC News in a fixed order, batches of `--batch-size`, truncated to `--max-length`.

The loop and the measurements are benchlib's (they need only torch): benchmarks/tstv_train.py
(run in its own virtualenv with transformers < 5) imports them through this module too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

# Re-exported: run.py and tstv_train.py import them from here.
from benchlib import bbc_news, make_batches, peak_rss_bytes  # noqa: E402, F401

LR = bl.LR


def train_loop(
    model: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    warmup: int = 1,
) -> dict[str, Any]:
    """AdamW steps over `batches` (cycled) on CUDA when present: benchlib.train_steps with the
    RSS trace of the first two steps; CUDA's peak is counted from the start of training."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = bl.train_steps(model, batches, steps, warmup=warmup, trace=True)
    out["loadavg_after"] = os.getloadavg()[0]
    if device == "cuda":
        out["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return out


# -- the vocabprune side (main virtualenv) ----------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import vocabprune as vp

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    texts, labels = bbc_news()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model)
    kwargs: dict[str, Any] = {"num_labels": 5}
    report: dict[str, Any] = {"method": args.method, "max_length": args.max_length}

    def encode(batch_texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            tokenizer(
                batch_texts,
                truncation=True,
                max_length=args.max_length,
                padding=True,
                return_tensors="pt",
            )
        )

    nbatches = args.steps + 1
    batches = make_batches(encode, texts, labels, args.batch_size, nbatches)
    # The kept vocabulary covers every id of the run's data (all of BBC News at this length).
    # Counted with the library's batched scanner, as build_kept_vocab does.
    counts = vp.count_texts(
        tokenizer, texts, max_length=args.max_length, vocab_size=config.vocab_size, progress=False
    )
    kept = vp.KeptVocab.from_counts(counts, tokenizer=tokenizer, vocab_size=config.vocab_size)
    report["kept_ids"] = kept.size
    report["ids_in_data"] = int(np.count_nonzero(counts))

    t0 = time.perf_counter()
    if args.method == "pruned":
        # The pruned model reads the tokenizer's ids (remapped inside): batches stay as they are.
        model = vp.load_pruned(AutoModelForSequenceClassification, args.model, kept, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(args.model, **kwargs)
    report["load_seconds"] = time.perf_counter() - t0
    if args.method == "peft_tt":
        model = bl.peft_trainable_tokens(model, kept.kept_ids)
    report["rss_after_load"] = peak_rss_bytes()
    report.update(train_loop(model, batches, args.steps))
    report["peak_rss_self"] = peak_rss_bytes()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--method", choices=("full", "pruned", "peft_tt"), required=True)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    report = run(args)
    with open(args.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
