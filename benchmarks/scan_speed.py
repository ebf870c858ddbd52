"""Scan speed: counting already tokenized ids, and tokenize-and-count vs tokenizing alone.

1. `count_token_ids` on already tokenized ids: a flat int64 array, a padded 2-d batch with an
   attention mask, and ragged per-example arrays; tokens per second (best of REPEAT).
2. `count_texts` on BBC News (2,225 articles; untruncated and max length 128) with the packaged
   MiniLM tokenizer, against tokenizing alone: the tokenizer's backend `encode_batch_fast` over
   the same batches (the least work that yields the ids), and the usual wrapper call
   `tokenizer(texts, truncation=..., max_length=...)`. Runs alternate, best of REPEAT each;
   `overhead_vs_backend` = count_texts / backend - 1 (target: <= 5%).
3. `num_proc=2`: the same counts (checked), and its time.

    python benchmarks/scan_speed.py      # JSON to benchmarks/results/scan_speed.json

`main() -> dict`. Sizes via environment: VOCABPRUNE_BENCH_SCAN_TOKENS (ids counted in part 1,
default 50,000,000), VOCABPRUNE_BENCH_SCAN_REPEAT (default 5).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "scan_speed.json"
TOKENS = int(os.environ.get("VOCABPRUNE_BENCH_SCAN_TOKENS", "50000000"))
REPEAT = int(os.environ.get("VOCABPRUNE_BENCH_SCAN_REPEAT", "5"))
VOCAB = 30522


def _best(fn, repeat: int = REPEAT) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def count_ids_speed() -> dict:
    from vocabprune.data.scan import count_token_ids

    rng = np.random.default_rng(0)
    flat = rng.integers(0, VOCAB, TOKENS, dtype=np.int64)
    t_flat = _best(lambda: count_token_ids(flat, VOCAB))
    rows, width = TOKENS // 128, 128
    padded = flat[: rows * width].reshape(rows, width)
    mask = np.ones_like(padded, dtype=np.int8)
    mask[:, 100:] = 0  # 78% real tokens
    t_padded = _best(lambda: count_token_ids(padded, VOCAB, attention_mask=mask))
    n_ragged = min(TOKENS, 10_000_000)
    lengths = rng.integers(16, 512, n_ragged // 264)
    ragged = np.split(flat[: int(lengths.sum())], np.cumsum(lengths)[:-1])
    t_ragged = _best(lambda: count_token_ids(ragged, VOCAB))
    return {
        "tokens": TOKENS,
        "flat_int64_tokens_per_s": round(TOKENS / t_flat),
        "padded_masked_tokens_per_s": round(rows * width / t_padded),
        "ragged_arrays_tokens_per_s": round(int(lengths.sum()) / t_ragged),
        "ragged_rows": len(ragged),
    }


def tokenize_speed() -> dict:
    from transformers import AutoTokenizer

    from vocabprune.data.scan import DEFAULT_BATCH, _backend_encoder, _batches, count_texts
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir, minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    texts = list(read_labelled_folder(bbc_news_dir())["text"])
    out = {"examples": len(texts)}
    for max_length in (None, 128):
        kwargs: dict = {"add_special_tokens": True}
        if max_length:
            kwargs.update(truncation=True, max_length=max_length)
        backend = _backend_encoder(tok, texts, None, max_length, kwargs)
        assert backend is not None, "fast path not taken"

        def backend_only(backend=backend):
            for sl in _batches(len(texts), DEFAULT_BATCH):
                backend.encode_batch_fast(texts[sl], add_special_tokens=True)

        def wrapper_only(kwargs=kwargs):
            for sl in _batches(len(texts), DEFAULT_BATCH):
                tok(texts[sl], **kwargs)

        def count(max_length=max_length):
            return count_texts(tok, texts, max_length=max_length, progress=False)

        times: dict[str, list[float]] = {"backend": [], "wrapper": [], "count": []}
        for _ in range(REPEAT):  # alternate, so load on the machine hits all three alike
            for name, fn in (
                ("backend", backend_only),
                ("count", count),
                ("wrapper", wrapper_only),
            ):
                times[name].append(_best(fn, 1))
        counts = count()
        t0 = time.perf_counter()
        parallel = count_texts(tok, texts, max_length=max_length, progress=False, num_proc=2)
        t_parallel = time.perf_counter() - t0
        best = {k: min(v) for k, v in times.items()}
        key = f"max_length_{max_length or 'none'}"
        out[key] = {
            "tokens": int(counts.sum()),
            "tokenize_backend_s": round(best["backend"], 4),
            "tokenize_wrapper_s": round(best["wrapper"], 4),
            "tokenize_and_count_s": round(best["count"], 4),
            "overhead_vs_backend": round(best["count"] / best["backend"] - 1, 4),
            "overhead_vs_wrapper": round(best["count"] / best["wrapper"] - 1, 4),
            "tokenize_and_count_tokens_per_s": round(int(counts.sum()) / best["count"]),
            "num_proc_2_s": round(t_parallel, 4),
            "num_proc_2_counts_equal": bool(np.array_equal(parallel, counts)),
        }
    return out


def main() -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {
        "benchmark": "scan_speed",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "repeat": REPEAT,
        "count_token_ids": count_ids_speed(),
        "count_texts": tokenize_speed(),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
