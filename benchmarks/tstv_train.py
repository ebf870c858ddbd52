"""transformer-smaller-training-vocab 0.4.2: enter/exit time and one short training run.

Runs in benchmarks/.venv-tstv (torch 2.13 CPU, transformers < 5, transformer-smaller-training-vocab
0.4.2), which benchmarks/run.py creates. Texts and labels come in a JSON file written by run.py.
The training loop and the measurements are the ones of train_memory.py, shared.

    benchmarks/.venv-tstv/bin/python benchmarks/tstv_train.py \
        --model PATH --data D.json --out R.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_memory import make_batches, peak_rss_bytes, train_loop  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="JSON {texts: [...], labels: [...]}")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformer_smaller_training_vocab as tstv
    import transformers
    from transformer_smaller_training_vocab.token_stats import get_token_stats
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with open(args.data, encoding="utf-8") as f:
        data = json.load(f)
    texts, labels = data["texts"], data["labels"]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    t0 = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=5)
    report: dict[str, Any] = {
        "method": "tstv",
        "max_length": args.max_length,
        "versions": {"transformers": transformers.__version__, "tstv": "0.4.2"},
        "load_seconds": time.perf_counter() - t0,
        "full_params": sum(p.numel() for p in model.parameters()),
    }
    # How long its own counting takes (part of enter): one tokenizer call per text, untruncated.
    t0 = time.perf_counter()
    used = get_token_stats(tokenizer, texts)
    report["count_seconds"] = time.perf_counter() - t0
    report["kept_ids"] = len(used)
    del used
    report["rss_after_load"] = peak_rss_bytes()

    ctx = tstv.reduce_train_vocab(model=model, tokenizer=tokenizer, texts=texts)
    t0 = time.perf_counter()
    ctx.__enter__()
    report["enter_seconds"] = time.perf_counter() - t0

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

    batches = make_batches(encode, texts, labels, args.batch_size, args.steps + 1)
    report.update(train_loop(model, batches, args.steps))
    model.to("cpu")
    t0 = time.perf_counter()
    ctx.__exit__(None, None, None)
    report["exit_seconds"] = time.perf_counter() - t0
    report["restored_params"] = sum(p.numel() for p in model.parameters())
    report["peak_rss_self"] = peak_rss_bytes()
    with open(args.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
