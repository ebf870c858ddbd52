"""One short training run in a fresh process: bytes, peak RSS, steps/s for one method.

    python benchmarks/train_memory.py --model PATH --method pruned --max-length 128 --out R.json

Methods: full (stock fine-tuning), pruned (vocabprune: load_pruned, remapped batches),
peft_tt (PEFT TrainableTokens on the used ids, every other parameter trainable too, so it
trains what the pruned run trains). The same loop for all: AdamW (lr 5e-5, weight decay 0) on
BBC News in a fixed order, batches of `--batch-size`, truncated to `--max-length`.

The measurement helpers below need only torch: benchmarks/tstv_train.py (run in its own
virtualenv with transformers < 5) imports them too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

LR = 5e-5


def peak_rss_bytes() -> int:
    """ru_maxrss of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now_bytes() -> int:
    """Current resident set size (VmRSS) of this process, 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def unique_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def measured_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes actually held by parameters (trainable or not), gradients and optimizer states."""
    params = unique_params(model)
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    states = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                states += value.numel() * value.element_size()
    return {
        "weights": weights,
        "grads": grads,
        "optimizer": states,
        "total": weights + grads + states,
    }


def train_loop(
    model: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    warmup: int = 1,
) -> dict[str, Any]:
    """AdamW steps over `batches` (cycled); bytes after the first step, steps/s after warmup."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.train()
    trainable = [p for p in unique_params(model) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out: dict[str, Any] = {}
    losses = []
    trace = [("before training", rss_now_bytes(), peak_rss_bytes())]
    start = cpu_start = None
    step_seconds = []
    for i in range(warmup + steps):
        if i == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        t_step = time.perf_counter()
        batch = {k: v.to(device) for k, v in batches[i % len(batches)].items()}
        loss = model(**batch).loss
        if i < 2:
            trace.append((f"step {i} forward", rss_now_bytes(), peak_rss_bytes()))
        loss.backward()
        if i < 2:
            trace.append((f"step {i} backward", rss_now_bytes(), peak_rss_bytes()))
        optimizer.step()
        if i == 0:
            out["bytes"] = measured_bytes(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if i < 2:
            trace.append((f"step {i} optimizer", rss_now_bytes(), peak_rss_bytes()))
        losses.append(float(loss.detach()))
        if i >= warmup:
            step_seconds.append(time.perf_counter() - t_step)
    assert start is not None and cpu_start is not None
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    out.update(
        steps=steps,
        seconds=seconds,
        steps_per_s=steps / seconds,
        step_seconds=step_seconds,
        best_step_seconds=min(step_seconds),
        cpu_seconds=cpu_seconds,
        steps_per_cpu_s=steps / cpu_seconds,
        threads=torch.get_num_threads(),
        loadavg_after=os.getloadavg()[0],
        rss_trace=[{"at": a, "rss": r, "peak": p} for a, r, p in trace],
        losses=losses,
        trainable_params=sum(p.numel() for p in trainable),
        params=sum(p.numel() for p in unique_params(model)),
    )
    if device == "cuda":
        out["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return out


def make_batches(
    encode: Callable[[list[str]], dict[str, torch.Tensor]],
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int,
    count: int,
) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches, in order (the same for every method)."""
    batches = []
    for b in range(count):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        enc = encode(list(texts[sl]))
        enc["labels"] = torch.tensor(list(labels[sl]), dtype=torch.long)
        batches.append(enc)
    return batches


# -- the vocabprune side (main virtualenv) ----------------------------------------------------


def bbc_news() -> tuple[list[str], list[int]]:
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir

    cols = read_labelled_folder(bbc_news_dir())
    names = sorted(set(cols["label"]))
    return list(cols["text"]), [names.index(x) for x in cols["label"]]


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
        model = vp.load_pruned(AutoModelForSequenceClassification, args.model, kept, **kwargs)
        remapper = vp.IdRemapper(kept, tokenizer=tokenizer)
        for batch in batches:
            batch["input_ids"] = remapper(batch["input_ids"])
    else:
        model = AutoModelForSequenceClassification.from_pretrained(args.model, **kwargs)
    report["load_seconds"] = time.perf_counter() - t0
    if args.method == "peft_tt":
        from peft import TrainableTokensConfig, get_peft_model

        emb_name = _embedding_module_name(model)
        peft_config = TrainableTokensConfig(
            token_indices=[int(i) for i in kept.kept_ids], target_modules=[emb_name]
        )
        model = get_peft_model(model, peft_config)
        base_emb = model.get_base_model().get_input_embeddings()
        for name, p in model.named_parameters():  # train everything else too, like pruned
            if "trainable_tokens" in name or p is base_emb.weight:
                continue
            p.requires_grad_(True)
        base_emb.weight.requires_grad_(False)
    report["rss_after_load"] = peak_rss_bytes()
    report.update(train_loop(model, batches, args.steps))
    report["peak_rss_self"] = peak_rss_bytes()
    return report


def _embedding_module_name(model: torch.nn.Module) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    raise RuntimeError("input embedding not found")


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
