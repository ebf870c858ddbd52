"""SmolLM2 causal-LM fine-tuning on BBC News, full vs pruned: steps per second and peak RSS.

Batch 8, max length 256 (every sequence full length), AdamW lr 1e-5, weight decay 0. Each
method runs in its own fresh process (peak RSS is a per-process high-water mark): load the
model, tokenize, (prune), one warm-up step, then `--steps` timed steps. The kept vocabulary is
every id BBC News uses at 256 tokens plus the specials. The pruned head computes logits (and
their gradient) over the kept columns only.

    python benchmarks/lm_train_speed.py               # both methods, JSON to results/
    python benchmarks/lm_train_speed.py --method pruned --steps 3   # one child run, JSON on stdout

`main() -> dict` runs both and writes benchmarks/results/lm_train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "lm_train_speed.json"
BATCH = 8
MAX_LENGTH = 256
STEPS = int(os.environ.get("VOCABPRUNE_BENCH_LM_STEPS", "2"))


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM of its own address space (ru_maxrss can carry the peak of
    the process that started it across exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bbc_texts() -> list[str]:
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir

    return list(read_labelled_folder(bbc_news_dir())["text"])


def child(method: str, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vocabprune as vp
    from vocabprune.fixtures import smollm2_path

    torch.manual_seed(0)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    texts = bbc_texts()
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    long = [ids for ids in enc if len(ids) == MAX_LENGTH]
    need = BATCH * (steps + 1)
    if len(long) < need:
        raise SystemExit(f"only {len(long)} BBC texts reach {MAX_LENGTH} tokens")
    batches = [torch.tensor(long[i * BATCH : (i + 1) * BATCH]) for i in range(steps + 1)]
    kept_size = None
    if method == "pruned":
        counts = vp.count_token_ids(enc, model.get_input_embeddings().weight.shape[0])
        kept = vp.KeptVocab.from_counts(counts, tokenizer=tokenizer, model=model)
        vp.prune(model, kept)
        remap = vp.IdRemapper(kept)
        batches = [remap(b) for b in batches]
        kept_size = kept.size
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

    def step(ids: torch.Tensor) -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step(batches[0])  # warm-up: allocator, optimizer states
    t0, c0 = time.perf_counter(), time.process_time()
    losses = [step(b) for b in batches[1:]]
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    return {
        "method": method,
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_second": steps / seconds,
        # CPU seconds of this process per step: steadier than wall time on a shared machine.
        "cpu_seconds": round(cpu_seconds, 3),
        "steps_per_cpu_second": steps / cpu_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "kept_tokens": kept_size,
        "vocab_size": int(model.config.vocab_size) if method == "full" else None,
        "losses": losses,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_child(method: str, steps: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, __file__, "--method", method, "--steps", str(steps)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{method} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(steps: int = STEPS) -> dict:
    full = run_child("full", steps)
    pruned = run_child("pruned", steps)
    result = {
        "benchmark": "lm_train_speed",
        "model": "SmolLM2-135M-Instruct (fp32, tied)",
        "data": "BBC News, texts of at least 256 tokens",
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "kept_tokens": pruned["kept_tokens"],
        "vocab_size": full["vocab_size"],
        "full": full,
        "pruned": pruned,
        "steps_per_second_ratio": pruned["steps_per_second"] / full["steps_per_second"],
        "steps_per_cpu_second_ratio": pruned["steps_per_cpu_second"] / full["steps_per_cpu_second"],
        "peak_rss_ratio": pruned["peak_rss_bytes"] / full["peak_rss_bytes"],
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "targets": {"steps_per_second_ratio_min": 1.25, "peak_rss_ratio_max": 0.85},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("full", "pruned"))
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(child(args.method, args.steps)))
    else:
        print(json.dumps(main(args.steps), indent=2))
