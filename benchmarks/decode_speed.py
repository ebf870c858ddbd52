"""Greedy decoding speed on the Gemma-3-270m shape (random weights): oracle vs vocabprune.

Four models with the same weights, decoding the same prompts greedily (KV cache, CPU):

- `full`: the model with its 262,144-id vocabulary;
- `oracle`: the same model with only the kept rows, built by hand (it reads and emits kept ids;
  its outputs are mapped back to token ids to compare);
- `inplace`: the full model pruned in place by `vp.prune`, through stock `model.generate()`;
- `compact`: the compact export (`vocabprune prune`'s folder) loaded with `vp.load_compact`,
  through stock `model.generate()`.

Kept vocabulary: the ids of the BBC News corpus as e5 tokenizes it (benchmarks/data), as in
train_compare.py (18,890 ids). Prompts: 32-token stretches of that corpus. Every method decodes
exactly `new_tokens` tokens (eos off, no logits processor), batch 1 and batch 8, repetitions
interleaved (each starting with the next method); reported: median tokens per CPU second and
tokens/s per method (with their ranges), each vs the oracle, the median [range] of each
repetition's ratio to the oracle in the same repetition (`paired_vs_oracle`: what the machine's
drift between repetitions cannot move), and whether every method's tokens equal the oracle's.

One torch thread by default (VOCABPRUNE_BENCH_DECODE_THREADS): the process's CPU time then
counts the decoding alone, and tokens per CPU second stay comparable when other jobs share
the machine (wall-clock tokens/s do not: a loaded 2-core machine moved them 3x between
methods within one repetition).

    flock /tmp/vp-heavy.lock python benchmarks/decode_speed.py   # -> results/decode_speed.json

Sizes via environment: VOCABPRUNE_BENCH_DECODE_REPS (5), VOCABPRUNE_BENCH_DECODE_TOKENS (48),
VOCABPRUNE_BENCH_DECODE_SHAPE (gemma3-270m; gemma3-tiny for a smoke run),
VOCABPRUNE_BENCH_DECODE_THREADS (1), VOCABPRUNE_BENCH_DECODE_BUSY=1 (`--fresh` only: a
process copying 64 MiB buffers on the other core all along, the memory traffic of a neighbour;
results/decode_speed_fresh_busy.json).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

RESULT = HERE / "results" / "decode_speed.json"
REPS = int(os.environ.get("VOCABPRUNE_BENCH_DECODE_REPS", "5"))
NEW_TOKENS = int(os.environ.get("VOCABPRUNE_BENCH_DECODE_TOKENS", "48"))
SHAPE = os.environ.get("VOCABPRUNE_BENCH_DECODE_SHAPE", "gemma3-270m")
THREADS = int(os.environ.get("VOCABPRUNE_BENCH_DECODE_THREADS", "1"))
BUSY = os.environ.get("VOCABPRUNE_BENCH_DECODE_BUSY") == "1"
# A neighbour's memory traffic: copy one 64 MiB buffer into another until killed.
NEIGHBOUR = "import numpy as n; a = n.ones(2**23); b = n.empty_like(a)\nwhile True: n.copyto(b, a)"
PROMPT_TOKENS = 32
BATCHES = (1, 8)
METHODS = ("full", "oracle", "inplace", "compact")


def paired_vs_oracle(cpu: dict[str, dict[Any, list[float]]]) -> dict[str, dict[Any, Any]]:
    """Per method and batch: the median [min, max] of each repetition's tokens per CPU second
    over the oracle's in the same repetition (same prompts, the machine in the same state: the
    machine's drift between repetitions, up to 1.7x between runs here, cancels)."""
    out: dict[str, dict[Any, Any]] = {}
    for method in METHODS:
        out[method] = {}
        for batch, runs in cpu[method].items():
            ratios = [a / b for a, b in zip(runs, cpu["oracle"][batch], strict=True)]
            out[method][batch] = {
                "median": round(statistics.median(ratios), 3),
                "range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
    return out


def _models(shape: benchlib.Shape, folder: Path) -> tuple[dict[str, Any], Any, torch.Tensor]:
    """(the four models, the kept vocabulary, the prompt ids of the corpus)."""
    import numpy as np

    import vocabprune as vp

    full, data, kept = benchlib.decoding_model(shape)
    oracle = benchlib.naive_slice(copy.deepcopy(full), kept).eval()
    inplace = copy.deepcopy(full).eval()
    vp.prune(inplace, kept, output="prune")  # the restricted head: decodes over kept ids
    full.save_pretrained(folder / "full")
    from transformers import AutoTokenizer

    from vocabprune.deploy.export import export_pruned
    from vocabprune.fixtures import e5_path

    # Any tokenizer serves as the "original" one beside the compact weights (the kept ids are
    # e5's, and decoding never reads it); the kept vocabulary carries no fingerprint to check.
    tokenizer = AutoTokenizer.from_pretrained(e5_path())
    full.save_pretrained(folder / "full")
    full = type(full).from_pretrained(folder / "full").eval()  # grow/restore read this file
    export_pruned(full, tokenizer, kept, folder / "compact")
    compact, _ = vp.load_compact(folder / "compact", tokenizer=tokenizer)
    prompts = torch.as_tensor(np.resize(data, 64 * PROMPT_TOKENS).reshape(64, PROMPT_TOKENS))
    models = {"full": full, "oracle": oracle, "inplace": inplace, "compact": compact}
    return models, kept, prompts


def _generate(model: Any, ids: torch.Tensor, pad: int) -> torch.Tensor:
    """Greedy, exactly NEW_TOKENS tokens: eos is off in the model's generation config (random
    weights may emit it), so no logits processor runs (min_new_tokens would add one that
    scans every column, and so cost the full vocabulary more than the oracle)."""
    model.generation_config.eos_token_id = None
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=pad,
    )


def main() -> dict[str, Any]:
    import vocabprune as vp

    shape = benchlib.SHAPES[SHAPE]
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        models, kept, prompts = _models(shape, Path(tmp))
        table = torch.as_tensor(kept.old_to_new)
        back = torch.as_tensor(kept.kept_ids)
        pad = int(models["full"].config.pad_token_id)
        rates: dict[str, dict[int, list[float]]] = {m: {b: [] for b in BATCHES} for m in METHODS}
        cpu_rates: dict[str, dict[int, list[float]]] = {
            m: {b: [] for b in BATCHES} for m in METHODS
        }
        same: dict[str, bool] = {m: True for m in METHODS}
        with torch.inference_mode():
            for batch in BATCHES:
                for rep in range(REPS + 1):  # the first round warms up, not counted
                    ids = prompts[rep * batch : (rep + 1) * batch]
                    outs = {}
                    # Each repetition starts with the next method, so none always follows the
                    # full model's pass over 1 GB of weights (which leaves the caches cold).
                    for name in METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]:
                        given = table[ids] if name == "oracle" else ids
                        pad_id = int(table[pad]) if name == "oracle" else pad
                        start, cpu = time.perf_counter(), time.process_time()
                        out = _generate(models[name], given, pad_id)
                        seconds = time.perf_counter() - start
                        cpu = time.process_time() - cpu
                        outs[name] = back[out] if name == "oracle" else out
                        if rep:
                            rates[name][batch].append(batch * NEW_TOKENS / seconds)
                            cpu_rates[name][batch].append(batch * NEW_TOKENS / cpu)
                    for name in ("inplace", "compact"):
                        same[name] &= torch.equal(outs[name], outs["oracle"])
    medians = {m: {b: statistics.median(rates[m][b]) for b in BATCHES} for m in METHODS}
    cpu_medians = {m: {b: statistics.median(cpu_rates[m][b]) for b in BATCHES} for m in METHODS}
    result = {
        "shape": SHAPE,
        "kept": kept.size,
        "vocab_size": kept.vocab_size,
        "new_tokens": NEW_TOKENS,
        "prompt_tokens": PROMPT_TOKENS,
        "reps": REPS,
        "threads": THREADS,
        "tokens_per_cpu_second": cpu_rates,
        "median_tokens_per_cpu_second": cpu_medians,
        "cpu_vs_oracle": {
            m: {b: round(cpu_medians[m][b] / cpu_medians["oracle"][b], 3) for b in BATCHES}
            for m in METHODS
        },
        "tokens_per_second": rates,
        "median_tokens_per_second": medians,
        "vs_oracle": {
            m: {b: round(medians[m][b] / medians["oracle"][b], 3) for b in BATCHES} for m in METHODS
        },
        "paired_vs_oracle": paired_vs_oracle(cpu_rates),
        "tokens_equal_oracle": {m: same[m] for m in ("inplace", "compact")},
        "vocabprune": vp.__file__,
        "machine": benchlib.machine_info(),
    }
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: per method and batch, tokens per CPU second median [range] (vs oracle), then
    wall tokens/s (vs oracle)."""
    heads = [f"batch {b}: tokens/CPU s [range] (vs oracle)" for b in BATCHES]
    heads += [f"batch {b}: tokens/s (vs oracle)" for b in BATCHES]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for method in METHODS:
        cells = []
        for b in BATCHES:
            runs = result["tokens_per_cpu_second"][method][b]
            rate = result["median_tokens_per_cpu_second"][method][b]
            ratio = result["cpu_vs_oracle"][method][b]
            cells.append(f"{rate:.1f} [{min(runs):.1f}–{max(runs):.1f}] ({ratio:.2f})")
        for b in BATCHES:
            rate = result["median_tokens_per_second"][method][b]
            cells.append(f"{rate:.1f} ({result['vs_oracle'][method][b]:.2f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- each method in its own fresh process ------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One method in a fresh process: load the saved full model (or the compact export), build
    the method's model, decode the given prompts once untimed (4 tokens) and once timed."""
    import vocabprune as vp
    from vocabprune.core.vocab import KeptVocab

    torch.set_num_threads(spec["threads"])
    folder = Path(spec["folder"])
    kept = KeptVocab.load(folder / "kept.json")
    method = spec["method"]
    if method == "compact":
        from transformers import AutoTokenizer

        from vocabprune.fixtures import e5_path

        model, _ = vp.load_compact(
            folder / "compact", tokenizer=AutoTokenizer.from_pretrained(e5_path())
        )
    else:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(folder / "full").eval()
        if method == "oracle":
            model = benchlib.naive_slice(model, kept).eval()
        elif method == "inplace":
            vp.prune(model, kept, output="prune")
    table = torch.as_tensor(kept.old_to_new)
    ids = torch.as_tensor(spec["prompts"])
    pad = int(spec["pad"])
    if method == "oracle":
        ids, pad = table[ids], int(table[pad])
    out: dict[str, Any] = {"method": method}
    with torch.inference_mode():
        model.generation_config.eos_token_id = None
        model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
            do_sample=False, pad_token_id=pad,
        )  # fmt: skip
        start, cpu = time.perf_counter(), time.process_time()
        tokens = _generate(model, ids, pad)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if method == "oracle":
        tokens = torch.as_tensor(kept.kept_ids)[tokens]
    n = ids.shape[0] * NEW_TOKENS
    out.update(tokens_per_second=n / seconds, tokens_per_cpu_second=n / cpu, tokens=tokens.tolist())
    return out


@contextlib.contextmanager
def _neighbour(busy: bool) -> Iterator[None]:
    """With `busy`, a process copying memory beside the measurement for the duration."""
    if not busy:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def main_fresh() -> dict[str, Any]:
    """Every method in its own fresh process (one model per process: no other model's memory
    beside it), methods rotating, REPS repetitions, batch 1 and 8."""
    import numpy as np
    from transformers import AutoTokenizer

    import vocabprune as vp
    from vocabprune.deploy.export import export_pruned
    from vocabprune.fixtures import e5_path

    full, data, kept = benchlib.decoding_model(benchlib.SHAPES[SHAPE])
    prompts = np.resize(data, 64 * PROMPT_TOKENS).reshape(64, PROMPT_TOKENS)
    pad = int(full.config.pad_token_id)
    cpu: dict[str, dict[int, list[float]]] = {m: {b: [] for b in BATCHES} for m in METHODS}
    wall: dict[str, dict[int, list[float]]] = {m: {b: [] for b in BATCHES} for m in METHODS}
    same = {m: True for m in ("inplace", "compact")}
    with tempfile.TemporaryDirectory() as tmp, _neighbour(BUSY):
        folder = Path(tmp)
        full.save_pretrained(folder / "full")
        kept.save(folder / "kept.json")
        full = type(full).from_pretrained(folder / "full").eval()
        export_pruned(full, AutoTokenizer.from_pretrained(e5_path()), kept, folder / "compact")
        del full
        for batch in BATCHES:
            for rep in range(REPS):
                rows = prompts[rep * batch : (rep + 1) * batch].tolist()
                outs = {}
                for name in METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]:
                    spec = {"method": name, "folder": str(folder), "prompts": rows, "pad": pad}
                    spec["threads"] = THREADS
                    got = benchlib.run_fresh("decode_speed:child", spec, timeout=1800)
                    if "error" in got:
                        raise RuntimeError(f"{name}: {got['error']}")
                    cpu[name][batch].append(got["tokens_per_cpu_second"])
                    wall[name][batch].append(got["tokens_per_second"])
                    outs[name] = got["tokens"]
                for name in same:
                    same[name] &= outs[name] == outs["oracle"]
    med = {m: {b: statistics.median(cpu[m][b]) for b in BATCHES} for m in METHODS}
    return {
        "shape": SHAPE,
        "design": "each method in its own fresh process",
        "busy_neighbour": BUSY,
        "kept": kept.size,
        "vocab_size": kept.vocab_size,
        "new_tokens": NEW_TOKENS,
        "reps": REPS,
        "threads": THREADS,
        "tokens_per_cpu_second": cpu,
        "median_tokens_per_cpu_second": med,
        "cpu_vs_oracle": {
            m: {b: round(med[m][b] / med["oracle"][b], 3) for b in BATCHES} for m in METHODS
        },
        "paired_vs_oracle": paired_vs_oracle(cpu),
        "tokens_per_second": wall,
        "tokens_equal_oracle": same,
        "vocabprune": vp.__file__,
        "machine": benchlib.machine_info(),
    }


if __name__ == "__main__" and sys.argv[1:] == ["--fresh"]:
    out = main_fresh()
    name = "decode_speed_fresh" + ("" if SHAPE == "gemma3-270m" else f"_{SHAPE}")
    name += "_busy.json" if BUSY else ".json"
    (RESULT.parent / name).write_text(json.dumps(out, indent=2, default=str))
    print(
        json.dumps(
            {k: out[k] for k in ("cpu_vs_oracle", "paired_vs_oracle", "tokens_equal_oracle")}
        )
    )
    for m in METHODS:
        print(m, {b: [round(x, 1) for x in out["tokens_per_cpu_second"][m][b]] for b in BATCHES})
elif __name__ == "__main__":
    out = main()
    print(table(out))
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    path = RESULT if SHAPE == "gemma3-270m" else RESULT.with_name(f"decode_speed_{SHAPE}.json")
    path.write_text(json.dumps(out, indent=2, default=str))
    summary = {k: out[k] for k in ("cpu_vs_oracle", "paired_vs_oracle", "tokens_equal_oracle")}
    print(json.dumps(summary))
