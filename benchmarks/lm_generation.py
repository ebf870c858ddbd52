"""Greedy decoding with SmolLM2: head restricted to the kept ids of one BBC category vs full head.

The kept vocabulary is every id the category's articles use (plus specials). Prompts are the
opening of articles of that category (their ids are kept). Each prompt is decoded greedily by the
full model and by a pruned copy through `vocabprune.generate` (original ids in and out),
alternating, one prompt at a time (batch 1, KV cache). Reported: generated tokens per second of
each and the share of prompts whose greedy output is identical.

    python benchmarks/lm_generation.py       # JSON to benchmarks/results/lm_generation.json

`main() -> dict`. Sizes via environment: VOCABPRUNE_BENCH_GEN_PROMPTS (default 8),
VOCABPRUNE_BENCH_GEN_TOKENS (new tokens per prompt, default 32).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "lm_generation.json"
CATEGORY = "business"
PROMPTS = int(os.environ.get("VOCABPRUNE_BENCH_GEN_PROMPTS", "8"))
NEW_TOKENS = int(os.environ.get("VOCABPRUNE_BENCH_GEN_TOKENS", "32"))
PROMPT_TOKENS = 48


def main(prompts: int = PROMPTS, new_tokens: int = NEW_TOKENS) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vocabprune as vp
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir, smollm2_path

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    cols = read_labelled_folder(bbc_news_dir())
    texts = [t for t, lab in zip(cols["text"], cols["label"], strict=True) if lab == CATEGORY]
    full = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    small = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    kept = vp.build_kept_vocab(tokenizer, texts, model=small, progress=False)
    vp.prune(small, kept, output="prune")  # the restricted head: generates kept ids

    step = max(1, len(texts) // prompts)
    chosen = [texts[i * step] for i in range(prompts)]
    encoded = [
        tokenizer(t, return_tensors="pt", truncation=True, max_length=PROMPT_TOKENS) for t in chosen
    ]
    args = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 2}
    timing = {"full": 0.0, "pruned": 0.0}
    cpu = {"full": 0.0, "pruned": 0.0}  # process CPU seconds: steadier on a shared machine
    produced = {"full": 0, "pruned": 0}
    identical = 0
    first_divergence = []
    samples = []
    with torch.no_grad():
        # Warm-up both (first-call allocations).
        full.generate(**encoded[0], max_new_tokens=2, do_sample=False, pad_token_id=2)
        vp.generate(small, **encoded[0], max_new_tokens=2, do_sample=False, pad_token_id=2)
        for enc in encoded:
            n = enc["input_ids"].shape[1]
            t0, c0 = time.perf_counter(), time.process_time()
            a = full.generate(**enc, **args)
            timing["full"] += time.perf_counter() - t0
            cpu["full"] += time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            b = vp.generate(small, **enc, **args)
            timing["pruned"] += time.perf_counter() - t0
            cpu["pruned"] += time.process_time() - c0
            produced["full"] += a.shape[1] - n
            produced["pruned"] += b.shape[1] - n
            same = torch.equal(a, b)
            identical += same
            ga, gb = a[0, n:].tolist(), b[0, n:].tolist()
            div = next((i for i, (x, y) in enumerate(zip(ga, gb, strict=False)) if x != y), None)
            first_divergence.append(div)
            if not same and len(samples) < 3:
                samples.append(
                    {
                        "full": tokenizer.decode(ga),
                        "pruned": tokenizer.decode(gb),
                        "full_ids_not_kept": [i for i in ga if i not in kept],
                    }
                )
    tps = {k: produced[k] / timing[k] for k in timing}
    tpc = {k: produced[k] / cpu[k] for k in cpu}
    result = {
        "benchmark": "lm_generation",
        "model": "SmolLM2-135M-Instruct (fp32, tied)",
        "category": CATEGORY,
        "kept_tokens": kept.size,
        "vocab_size": kept.vocab_size,
        "prompts": prompts,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": new_tokens,
        "tokens_per_second_full": tps["full"],
        "tokens_per_second_pruned": tps["pruned"],
        "tokens_per_second_ratio": tps["pruned"] / tps["full"],
        "tokens_per_cpu_second_full": tpc["full"],
        "tokens_per_cpu_second_pruned": tpc["pruned"],
        "tokens_per_cpu_second_ratio": tpc["pruned"] / tpc["full"],
        "identical_outputs": identical,
        "identical_share": identical / prompts,
        "first_divergence": first_divergence,
        "divergent_samples": samples,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
