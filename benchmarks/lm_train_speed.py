"""SmolLM2 causal-LM fine-tuning on BBC News, full vs pruned: steps per second and peak RSS.

Batch 8, max length 256 (every sequence full length), AdamW lr 1e-5, weight decay 0. Each
method runs in its own fresh process (peak RSS is a per-process high-water mark): load the
model, tokenize, (prune), one warm-up step, then `--steps` timed steps. The kept vocabulary is
every id BBC News uses at 256 tokens plus the specials. The pruned model reads the tokenizer's
ids and labels (it remaps both inside); its head computes logits (and their gradient) over the
kept columns only. The loop is benchlib.train_steps, shared by every benchmark.

    python benchmarks/lm_train_speed.py               # both methods, JSON to results/
    python benchmarks/lm_train_speed.py --method pruned --steps 3   # one child run, JSON on stdout
    python benchmarks/lm_train_speed.py --steps 1 --batch-size 2 --max-length 32 --out /tmp/x.json

Sizes also via environment: VOCABPRUNE_BENCH_LM_STEPS, _BATCH, _LENGTH. For the oracle and
repetitions, see train_compare.py (case smollm2_256).

`main() -> dict` runs both and writes benchmarks/results/lm_train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib as bl  # noqa: E402

RESULT = HERE / "results" / "lm_train_speed.json"
BATCH = int(os.environ.get("VOCABPRUNE_BENCH_LM_BATCH", "8"))
MAX_LENGTH = int(os.environ.get("VOCABPRUNE_BENCH_LM_LENGTH", "256"))
STEPS = int(os.environ.get("VOCABPRUNE_BENCH_LM_STEPS", "2"))
LR = 1e-5


def bbc_texts() -> list[str]:
    return bl.bbc_news()[0]


def child(method: str, steps: int, batch: int = BATCH, max_length: int = MAX_LENGTH) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vocabprune as vp
    from vocabprune.fixtures import smollm2_path

    torch.manual_seed(0)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    texts = bbc_texts()
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    long = [ids for ids in enc if len(ids) == max_length]
    need = batch * (steps + 1)
    if len(long) < need:
        raise SystemExit(f"only {len(long)} BBC texts reach {max_length} tokens")
    rows = [torch.tensor(long[i * batch : (i + 1) * batch]) for i in range(steps + 1)]
    batches = [{"input_ids": ids, "labels": ids} for ids in rows]
    kept_size = None
    if method == "pruned":
        counts = vp.count_token_ids(enc, model.get_input_embeddings().weight.shape[0])
        kept = vp.KeptVocab.from_counts(counts, tokenizer=tokenizer, model=model)
        # The pruned model reads the tokenizer's ids and labels (remapped inside).
        vp.prune(model, kept, output="prune")  # the restricted head (the docstring's)
        kept_size = kept.size
    # One warm-up step (allocator, optimizer states), then the timed ones.
    run = bl.train_steps(model, batches, steps, warmup=1, lr=LR)
    return {
        "method": method,
        "steps": steps,
        "batch_size": batch,
        "max_length": max_length,
        "seconds": round(run["seconds"], 3),
        "steps_per_second": run["steps_per_s"],
        "median_step_seconds": run["median_step_seconds"],
        # CPU seconds of this process per step: steadier than wall time on a shared machine.
        "cpu_seconds": round(run["cpu_seconds"], 3),
        "steps_per_cpu_second": run["steps_per_cpu_s"],
        "peak_rss_bytes": bl.peak_rss_bytes(),
        "bytes": run["bytes"],
        "kept_tokens": kept_size,
        "vocab_size": int(model.config.vocab_size) if method == "full" else None,
        "losses": run["losses"][1:],
        "threads": run["threads"],
        "loadavg": bl.load_average(),
        "torch": torch.__version__,
    }


def run_child(method: str, steps: int, batch: int = BATCH, max_length: int = MAX_LENGTH) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["--steps", str(steps), "--batch-size", str(batch), "--max-length", str(max_length)]
    proc = subprocess.run(
        [sys.executable, __file__, "--method", method, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{method} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(
    steps: int = STEPS, batch: int = BATCH, max_length: int = MAX_LENGTH, out: Path = RESULT
) -> dict:
    full = run_child("full", steps, batch, max_length)
    pruned = run_child("pruned", steps, batch, max_length)
    result = {
        "benchmark": "lm_train_speed",
        "model": "SmolLM2-135M-Instruct (fp32, tied)",
        "data": f"BBC News, texts of at least {max_length} tokens",
        "batch_size": batch,
        "max_length": max_length,
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("full", "pruned"))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(child(args.method, args.steps, args.batch_size, args.max_length)))
    else:
        print(json.dumps(main(args.steps, args.batch_size, args.max_length, args.out), indent=2))
