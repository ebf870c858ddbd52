"""GPU memory and step time of fine-tuning large-vocabulary models: full, vocabprune, oracle.

On the GPU machine (torch + transformers; vocabprune from this checkout, nothing else needed):

    PYTHONPATH=src python benchmarks/gpu_memory.py --device cuda

48 configurations, each a few seconds (model built on the CPU, 2 warm-up + 3 timed steps):
budgeted at about 5 minutes on one H200 (not yet run there); `--max-minutes` (default 8 on
CUDA) stops launching new ones so the command ends within a 10-minute call, and progress is
printed after every run. Subsets: `--shapes gemma3-270m,qwen3-0.6b --precisions bf16`.

Smoke run on a CPU (tiny shapes, well under a minute), as tests/test_gpu_memory_smoke.py does:

    python benchmarks/gpu_memory.py --device cpu --tiny --out /tmp/gpu_memory.json

Shapes, built FROM CONFIGS (random weights: time and memory do not depend on the values):
multilingual-e5-small (BertModel, 250,037 ids), XLM-R-base (XLMRobertaModel, 250,002),
Gemma-3-270m (Gemma3ForCausalLM, 262,144, tied, scaled embeddings) and Qwen3-0.6B
(Qwen3ForCausalLM, 151,936, tied); the exact configs are in benchlib.SHAPES. Data: real ids,
BBC News tokenized with the packaged e5 tokenizer (benchmarks/data/bbc_e5_ids.npz, written by
make_gpu_ids.py), articles packed into full-length rows; an id >= a model's vocabulary (Qwen3)
enters as `id % vocab_size`. The kept vocabulary is every id of the whole corpus (18,889 e5 ids)
plus the config's token ids, as a fine-tuning run on BBC News would keep.

Methods, each (shape, precision, batch, method) in a FRESH process (own CUDA context and
allocator), interleaved full / pruned / frozen / oracle:
- full: the model built on the CPU, moved to the device, fine-tuned.
- pruned (vocabprune): the same model built on the CPU, `vp.prune(model, kept,
  output="prune")` there (the restricted head; the dropped rows are offloaded to a temporary
  file), then moved: the full matrix never reaches the GPU, as
  with `vp.load_pruned` + `.to("cuda")`. It reads the original ids (remapped inside).
- frozen (causal LM shapes): pruned as above with `output="frozen"` (the full softmax, the
  dropped rows held once without gradient or optimizer state) and `vp.chunked_loss`, so the
  logits over the whole vocabulary are computed a tile at a time.
- oracle: the same architecture built from its config with vocab_size = kept rows (config token
  ids renumbered); a plain model, so its batches are remapped to kept ids by a table lookup.
Objectives: encoders, MSE between the mean-pooled last hidden state and a fixed random target,
at batch 32 x 128 and 8 x 512; LMs, their causal-LM loss with labels at 8 x 512 and 2 x 2048.
Precisions: fp32 (fp32 weights, fp32 AdamW) and bf16 (bf16 weights and AdamW states, autocast).
AdamW lr 5e-5, weight decay 0; 2 warm-up + 3 timed steps.

Measured per run: `cuda_max_memory_allocated_bytes` (peak counter reset before the model is
built; also `..._reserved_`), the median step time (CUDA-synchronized), and on every device
`state_bytes` (weights + gradients + optimizer states held after step 1) and the process peak
RSS (`cpu_peak_rss_bytes`, VmHWM; `cpu_peak_rss_growth_bytes` over the RSS before the model was
built). Without CUDA there is no allocator peak: the table then compares `state_bytes`.
An OOM or any error in one configuration is recorded in its run, not fatal.

Writes one JSON (default benchmarks/results/gpu_memory.json) and prints a table per shape,
precision and batch: the three peaks in GiB, pruned/full and pruned/oracle, the share of
embedding parameters removed and the memory saved. `main(argv) -> dict`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "gpu_memory.json"
METHODS = ("full", "pruned", "frozen", "oracle")
# vocabprune's head modes: "pruned" is prune's default head, "frozen" the full softmax with the
# dropped rows frozen (output="frozen", its loss tiled by chunked_loss); causal LM shapes only.
# pruned: the restricted head of an LM (an encoder's "auto": no head to prune); frozen: LMs only
HEAD_OF = {"pruned": "prune", "frozen": "frozen"}
LM_ONLY = ("frozen",)
PRECISIONS = ("fp32", "bf16")
# Imported once by the server the runs are forked from (seconds of start-up saved per run).
PRELOAD = (
    "torch",
    "transformers",
    "vocabprune",
    "transformers.models.bert.modeling_bert",
    "transformers.models.xlm_roberta.modeling_xlm_roberta",
    "transformers.models.gemma3.modeling_gemma3",
    "transformers.models.qwen3.modeling_qwen3",
)


def log(msg: str) -> None:
    print(f"[gpu_memory] {msg}", file=sys.stderr, flush=True)


# -- one configuration, in its own process --------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, (prune,) fine-tune and measure one (shape, precision, batch, method)."""
    import torch

    import vocabprune as vp

    loadavg_start = bl.start_child(spec)
    shape = bl.SHAPES[spec["shape"]]
    method, batch, length = spec["method"], spec["batch"], spec["length"]
    device = torch.device(spec["device"])
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    vocab = shape.vocab_size
    flat, _, _ = bl.load_ids(spec["ids"])
    config = bl.build_config(shape)
    data = bl.corpus_ids(flat, vocab, shape.corpus_tokens, pad_id=config.pad_token_id)
    kept = bl.kept_vocab(data, vocab, config)
    count = spec["warmup"] + spec["steps"]
    rows = torch.as_tensor(bl.packed_rows(data, batch * count, length))
    if method == "oracle":
        rows = bl.lookup(kept, rows)
    batches = [{"input_ids": rows[i * batch : (i + 1) * batch]} for i in range(count)]
    if shape.kind == "causal":
        for b in batches:
            b["labels"] = b["input_ids"]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)  # before the model is built
    rss_before = bl.rss_now_bytes()
    t0 = time.perf_counter()
    if method == "oracle":
        model = bl.build_model(bl.build_config(shape, kept=kept), shape.model_class, dtype)
    else:
        model = bl.build_model(config, shape.model_class, dtype)
    build_s = time.perf_counter() - t0
    prune_s = None
    if method in HEAD_OF:
        t0 = time.perf_counter()
        vp.prune(model, kept, output=HEAD_OF[method] if shape.kind == "causal" else "auto")
        if method == "frozen":
            vp.chunked_loss(model)  # the whole vocabulary's logits are never held at once
        prune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.to(device)
    move_s = time.perf_counter() - t0
    loss_fn = bl.model_loss if shape.kind == "causal" else _pooled_mse(batch, config, device)
    amp = dtype if dtype != torch.float32 else None
    result = bl.train_steps(
        model, batches, spec["steps"], warmup=spec["warmup"], loss_fn=loss_fn, amp_dtype=amp
    )
    state = result.pop("bytes")
    hwm = bl.peak_rss_bytes()
    result.update(
        {k: v for k, v in spec.items() if k != "threads"},  # `threads`: what torch used
        vocab_size=vocab,
        kept_ids=kept.size,
        embedding_rows=int(model.get_input_embeddings().weight.shape[0]),
        hidden_size=int(config.hidden_size),
        build_seconds=round(build_s, 3),
        prune_seconds=None if prune_s is None else round(prune_s, 3),
        move_seconds=round(move_s, 3),
        state_bytes=state,
        state_bytes_total=state["total"],
        cpu_peak_rss_bytes=hwm,
        cpu_rss_before_model_bytes=rss_before,
        cpu_peak_rss_growth_bytes=hwm - rss_before,
        loadavg_start=loadavg_start,
        loadavg_end=bl.load_average(),
        torch=torch.__version__,
    )
    if cuda:
        result["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        result["cuda_device"] = torch.cuda.get_device_name(device)
    return result


def _pooled_mse(batch: int, config: Any, device: Any) -> bl.LossFn:
    """Encoder objective: MSE of the mean-pooled last hidden state to a fixed random target."""
    import torch

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(batch, config.hidden_size, generator=gen).to(device)

    def loss(model: Any, b: dict[str, Any]) -> Any:
        pooled = model(input_ids=b["input_ids"]).last_hidden_state.float().mean(dim=1)
        return torch.nn.functional.mse_loss(pooled, target)

    return loss


# -- the driver -----------------------------------------------------------------------------------


def plan(shapes: list[str], precisions: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """Every configuration, methods interleaved (full, pruned, oracle, full, pruned, ...)."""
    specs = []
    for name in shapes:
        for precision in precisions:
            for batch, length in bl.SHAPES[name].batches:
                for method in methods:
                    if method in LM_ONLY and bl.SHAPES[name].kind != "causal":
                        continue
                    specs.append(
                        {
                            "shape": name,
                            "precision": precision,
                            "batch": batch,
                            "length": length,
                            "method": method,
                        }
                    )
    return specs


def _fork_broke_cuda(run: dict[str, Any]) -> bool:
    """A child forked from the server could not initialize CUDA (the server must never have)."""
    error = run.get("error", "")
    return "CUDA" in error and any(w in error.lower() for w in ("fork", "initializ"))


def _peak_field(device: str) -> str:
    return "cuda_max_memory_allocated_bytes" if device == "cuda" else "state_bytes_total"


def summarize(runs: list[dict[str, Any]], peak_field: str) -> list[dict[str, Any]]:
    """Per (shape, precision, batch): the three peaks, ratios, embedding share removed, saved."""
    groups: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for run in runs:
        key = (run["shape"], run["precision"], run["batch"], run["length"])
        groups.setdefault(key, {})[run["method"]] = run
    rows = []
    for (shape, precision, batch, length), by_method in groups.items():
        peak = {m: _number(by_method.get(m, {}).get(peak_field)) for m in METHODS}
        step = {m: _number(by_method.get(m, {}).get("median_step_seconds")) for m in METHODS}
        rss = {m: _number(by_method.get(m, {}).get("cpu_peak_rss_bytes")) for m in METHODS}
        any_run = next((r for r in by_method.values() if "kept_ids" in r), {})
        kept, vocab = any_run.get("kept_ids"), any_run.get("vocab_size")
        rows.append(
            {
                "shape": shape,
                "precision": precision,
                "batch": batch,
                "length": length,
                "peak_field": peak_field,
                "peak_bytes": peak,
                "median_step_seconds": step,
                "cpu_peak_rss_bytes": rss,
                "errors": {m: r["error"] for m, r in by_method.items() if "error" in r},
                "pruned_over_full": bl.ratio(peak["pruned"], peak["full"]),
                "pruned_over_oracle": bl.ratio(peak["pruned"], peak["oracle"]),
                "saved_bytes": None
                if None in (peak["full"], peak["pruned"])
                else peak["full"] - peak["pruned"],
                "step_full_over_pruned": bl.ratio(step["full"], step["pruned"]),
                "frozen_over_full": bl.ratio(peak["frozen"], peak["full"]),
                "frozen_over_oracle": bl.ratio(peak["frozen"], peak["oracle"]),
                "kept_ids": kept,
                "vocab_size": vocab,
                "embedding_params_removed": None if not vocab else 1 - kept / vocab,
            }
        )
    return rows


def _number(x: Any) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _gib(x: Any, scale: int = bl.GIB) -> str:
    return f"{x / scale:.2f}" if isinstance(x, (int, float)) else "–"


def _auto(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    return f"{x / bl.GIB:.2f} GiB" if x >= bl.GIB else f"{x / 2**20:.1f} MiB"


def _ms(x: Any) -> str:
    return f"{1000 * x:.0f}" if isinstance(x, (int, float)) else "–"


def _r(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "–"


def markdown_table(result: dict[str, Any]) -> list[str]:
    """The summary as a markdown table (printed here, and by run.py in benchmarks/README.md)."""
    rows = result.get("summary", [])
    cuda = result.get("device") == "cuda"
    what = "CUDA max allocated" if cuda else "weights+grads+AdamW states (CPU: no allocator peak)"
    peaks = [v for row in rows for v in row["peak_bytes"].values() if v]
    unit, scale = ("GiB", bl.GIB) if max(peaks, default=0) >= bl.GIB / 10 else ("MiB", 2**20)
    lines = [
        f"Peak: {what}, {unit}. Step: median ms of {result.get('steps')} timed steps"
        + ("" if cuda else "; peak RSS: VmHWM of the run's process")
        + ".",
        "",
        f"| shape | precision | batch×len | kept / vocab | emb. params removed | full {unit} | "
        f"vocabprune {unit} | frozen head {unit} | oracle {unit} | pruned/full | pruned/oracle | "
        f"frozen/full | saved {unit} | step ms full / pruned / frozen / oracle |"
        + ("" if cuda else " peak RSS GiB full / pruned / frozen / oracle |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("" if cuda else "---:|"),
    ]
    for row in rows:
        peak, step, errors = row["peak_bytes"], row["median_step_seconds"], row["errors"]
        cells = [_cell(peak[m], errors.get(m), scale) for m in METHODS]
        removed = row["embedding_params_removed"]
        line = (
            f"| {row['shape']} | {row['precision']} | {row['batch']}×{row['length']} | "
            f"{row['kept_ids'] or '–'} / {row['vocab_size'] or '–'} | "
            f"{'–' if removed is None else f'{100 * removed:.1f}%'} | {' | '.join(cells)} | "
            f"{_r(row['pruned_over_full'])} | {_r(row['pruned_over_oracle'])} | "
            f"{_r(row.get('frozen_over_full'))} | {_gib(row['saved_bytes'], scale)} | "
            f"{' / '.join(_ms(step[m]) for m in METHODS)} |"
        )
        if not cuda:
            line += f" {' / '.join(_gib(row['cpu_peak_rss_bytes'][m]) for m in METHODS)} |"
        lines.append(line)
    return lines


def _cell(value: Any, error: str | None, scale: int) -> str:
    if error:
        return "OOM" if "out of memory" in error.lower() else f"error: {error[:40]}"
    return _gib(value, scale)


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--shapes", help=f"comma-separated, of {', '.join(bl.SHAPES)}")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (hidden 32, 2 layers)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per run (default: torch's own; 1 with --tiny, whose ops are too "
        "small to share and whose timings a busy machine's thread waits would dominate)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--ids", type=Path, default=bl.IDS_FILE)
    p.add_argument("--timeout", type=float, default=240, help="seconds per configuration")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="launch no configuration after this many minutes (skipped ones are recorded; "
        "default 8 on CUDA, to fit a 10-minute device call, else none)",
    )
    p.add_argument(
        "--launcher",
        choices=("forkserver", "subprocess"),
        default="forkserver",
        help="fork each run from a server that imported torch once (default), or start a new "
        "interpreter per run",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every configuration; write and return the results."""
    args = parse(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.max_minutes is None and args.device == "cuda":
        args.max_minutes = 8.0
    shapes = (
        args.shapes.split(",")
        if args.shapes
        else list(bl.TINY_SHAPES if args.tiny else bl.REAL_SHAPES)
    )
    unknown = [s for s in shapes if s not in bl.SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; known: {', '.join(bl.SHAPES)}")
    specs = plan(shapes, args.precisions.split(","), args.methods.split(","))
    common = {
        "threads": args.threads or (1 if args.tiny else None),
        "device": args.device,
        "steps": args.steps,
        "warmup": args.warmup,
        "ids": str(args.ids),
    }
    result: dict[str, Any] = {
        "benchmark": "gpu_memory",
        "device": args.device,
        "tiny": args.tiny,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_field": _peak_field(args.device),
        "launcher": args.launcher,
        "max_minutes": args.max_minutes,
        "machine": bl.machine_info(),
        "shapes": {s: {**vars(bl.SHAPES[s])} for s in shapes},
        "data": "BBC News, e5 tokenizer (benchmarks/data/bbc_e5_ids.npz); ids >= vocab: id % vocab",
        "out": str(args.out),
        "runs": [],
    }
    started = time.monotonic()
    for i, spec in enumerate(specs, 1):
        elapsed = time.monotonic() - started
        label = (
            f"{spec['shape']} {spec['precision']} {spec['batch']}x{spec['length']} {spec['method']}"
        )
        if args.max_minutes is not None and elapsed > 60 * args.max_minutes:
            result["runs"].append(
                {**spec, "error": f"skipped: past --max-minutes {args.max_minutes}"}
            )
            continue
        run = bl.run_fresh(
            "gpu_memory:child",
            {**spec, **common},
            timeout=args.timeout,
            launcher=result["launcher"],
            preload=PRELOAD,
        )
        if result["launcher"] == "forkserver" and _fork_broke_cuda(run):
            log(f"CUDA failed in a forked child ({run['error'][:120]}): new interpreters from now")
            result["launcher"] = "subprocess"
            run = bl.run_fresh("gpu_memory:child", {**spec, **common}, timeout=args.timeout)
        run = {**spec, **run}
        result["runs"].append(run)
        eta = (time.monotonic() - started) / i * (len(specs) - i)
        if "error" in run:
            log(f"{i}/{len(specs)} {label}: {run['error'][:160]} ({elapsed:.0f} s)")
        else:
            log(
                f"{i}/{len(specs)} {label}: peak {_auto(run.get(result['peak_field']))}, "
                f"{_ms(run.get('median_step_seconds'))} ms/step, kept {run['kept_ids']}/"
                f"{run['vocab_size']} ({run['process_wall_seconds']:.1f} s; elapsed "
                f"{time.monotonic() - started:.0f} s, ~{eta:.0f} s left)"
            )
        result["summary"] = summarize(result["runs"], result["peak_field"])
        _write(args.out, result)  # after every run: a cut-off run keeps what it has
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["summary"] = summarize(result["runs"], result["peak_field"])
    _write(args.out, result)
    return result


if __name__ == "__main__":
    res = main()
    print("\n".join(markdown_table(res)))
    log(f"wrote {res['out']} in {res['wall_seconds']} s")
