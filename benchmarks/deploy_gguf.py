"""llama.cpp (GGUF): the full model against its pruned standalone export, side by side.

Embedding models: MiniLM (all-MiniLM-L6-v2, WordPiece) and multilingual-e5-small (Unigram,
llama.cpp's "t5" tokenizer), the packaged weights, mean-pooled; kept = every id BBC News uses
with that model's tokenizer. Each file embeds one batch of 8 BBC News article openings
(truncated to 128 tokens, the full tokenizer's ids, mapped to the pruned file's) in one
llama_batch, in a fresh process: file size, load time, peak RSS, seconds per batch (wall and
CPU, median of --batches timed batches after one warm-up), and whether the pruned file's
pooled embeddings equal the full file's (lowest cosine, largest absolute difference).

Causal LMs: for SmolLM2-135M (the packaged weights) and the Gemma-3-270m shape (random
weights, 262,144 ids: SmolLM2's byte-level vocabulary padded with unreachable tokens, so the GGUF
has a real tokenizer), the kept vocabulary is every id BBC News uses with SmolLM2's tokenizer (plus
specials and what the rewritten tokenizer needs). Both models are exported with
`vocabprune.deploy.gguf.export_gguf` (full folder and standalone folder, same outtype), then
each file is measured in a fresh interpreter that imports only llama-cpp-python and numpy
(`benchlib.run_fresh`), full and pruned interleaved, --reps times:

- file size; load time (llama_model_load_from_file + context, mmap as llama.cpp's default);
- peak RSS of that process (VmHWM: the mapped pages it touched, the KV cache, the logits);
- greedy decoding tokens/s at batch 1 (one prompt) and batch 8 (8 prompts in one llama_batch,
  one sequence each), --tokens new tokens after a 32-token prompt (article openings), argmax
  over the file's own vocabulary; also tokens per CPU second of that process (with one thread,
  steadier than wall time on a shared machine);
- whether the pruned file's greedy tokens, mapped back to original ids, equal the full file's
  (up to the first token the kept vocabulary lacks).

One llama.cpp thread by default (--threads): its worker threads spin at barriers, and on this
shared 2-core machine a second busy process slowed 2-thread decoding 10-100x.

    python benchmarks/deploy_gguf.py                      # all four models, f16, 3 repetitions
    python benchmarks/deploy_gguf.py --models smollm2 --reps 1 --tokens 16 --outtype q8_0
    python benchmarks/deploy_gguf.py --models minilm,e5   # the encoders (added to the results)

Results: benchmarks/results/deploy_gguf.json (and a markdown table on stdout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402

RESULT = HERE / "results" / "deploy_gguf.json"
PROMPT_TOKENS = 32
BATCH = 8
ENCODERS = ("minilm", "e5")
MODELS = (*ENCODERS, "smollm2", "gemma3-270m")
ENCODER_TOKENS = 128  # each text of the encoders' batch, truncated (specials included)
POOLING = (
    "MEAN"  # both encoders are mean-pooled (the e5 fixture has no sentence-transformers files)
)


# -- the child: one file, measured --------------------------------------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one GGUF and decode greedily at batch 1 and batch 8 (llama.cpp's C API)."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    loadavg = benchlib.load_average()
    prompts: list[list[int]] = spec["prompts"]
    steps, threads = int(spec["tokens"]), int(spec["threads"])
    per_seq = PROMPT_TOKENS + steps + 8
    L.llama_backend_init()
    started = time.perf_counter()
    model = L.llama_model_load_from_file(spec["path"].encode(), L.llama_model_default_params())
    cparams = L.llama_context_default_params()
    cparams.n_ctx = per_seq * BATCH
    cparams.n_batch = max(512, PROMPT_TOKENS * BATCH)
    cparams.n_ubatch = cparams.n_batch
    cparams.n_seq_max = BATCH
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cparams)
    load_seconds = time.perf_counter() - started
    if not model or not ctx:
        raise RuntimeError(f"llama.cpp could not load {spec['path']}")
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(cparams.n_batch, 0, BATCH)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, int(logits)
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i: int) -> int:
        ptr = L.llama_get_logits_ith(ctx, i)
        row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,))
        return int(row.argmax())

    def run(seqs: list[list[int]]) -> tuple[float, float, list[list[int]]]:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        entries = []
        for s, ids in enumerate(seqs):
            entries += [(t, p, s, p == len(ids) - 1) for p, t in enumerate(ids)]
        decode(entries)
        last = [i for i, e in enumerate(entries) if e[3]]
        out: list[list[int]] = [[argmax(i)] for i in last]
        started, cpu = time.perf_counter(), time.process_time()
        for step in range(1, steps):
            decode(
                [
                    (o[-1], len(ids) + step - 1, s, True)
                    for s, (ids, o) in enumerate(zip(seqs, out, strict=True))
                ]
            )
            for s, o in enumerate(out):
                o.append(argmax(s))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        n = len(seqs) * (steps - 1)
        return n / seconds, n / cpu, out

    tok_s_1, cpu_1, out_1 = run(prompts[:1])
    tok_s_8, cpu_8, out_8 = run(prompts[:BATCH])
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {
        "load_seconds": load_seconds,
        "peak_rss": benchlib.peak_rss_bytes(),
        "tokens_per_second_b1": tok_s_1,
        "tokens_per_second_b8": tok_s_8,
        "tokens_per_cpu_second_b1": cpu_1,
        "tokens_per_cpu_second_b8": cpu_8,
        "outputs_b1": out_1,
        "outputs_b8": out_8,
        "n_vocab": n_vocab,
        "loadavg_start": loadavg,
    }


def measure_encoder(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one embedding GGUF and embed one batch (one sequence per text, pooled by the file's
    pooling type) --batches times after a warm-up (llama.cpp's C API)."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    loadavg = benchlib.load_average()
    seqs: list[list[int]] = spec["inputs"]
    total = sum(len(s) for s in seqs)
    L.llama_backend_init()
    started = time.perf_counter()
    model = L.llama_model_load_from_file(spec["path"].encode(), L.llama_model_default_params())
    cparams = L.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max(512, total)
    cparams.n_seq_max = len(seqs)
    cparams.embeddings = True
    cparams.n_threads = cparams.n_threads_batch = int(spec["threads"])
    ctx = L.llama_init_from_model(model, cparams)
    load_seconds = time.perf_counter() - started
    if not model or not ctx:
        raise RuntimeError(f"llama.cpp could not load {spec['path']}")
    n_embd = L.llama_model_n_embd(model)
    batch = L.llama_batch_init(total, 0, len(seqs))

    def embed() -> np.ndarray:
        memory = L.llama_get_memory(ctx)
        if memory:  # an encoder without causal attention may have none
            L.llama_memory_clear(memory, True)
        batch.n_tokens = total
        i = 0
        for s, ids in enumerate(seqs):
            for p, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, p, 1
                batch.seq_id[i][0], batch.logits[i] = s, int(p == len(ids) - 1)
                i += 1
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        rows = []
        for s in range(len(seqs)):
            ptr = L.llama_get_embeddings_seq(ctx, s)
            vec = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
            rows.append(np.ctypeslib.as_array(vec, (n_embd,)).copy())
        return np.stack(rows)

    embeddings = embed()  # warm-up (and the output compared)
    wall, cpu = [], []
    for _ in range(int(spec["batches"])):
        started, cpu_started = time.perf_counter(), time.process_time()
        embed()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {
        "load_seconds": load_seconds,
        "peak_rss": benchlib.peak_rss_bytes(),
        "batch_seconds": statistics.median(wall),
        "batch_cpu_seconds": statistics.median(cpu),
        "batch_tokens": total,
        "embeddings": embeddings.tolist(),
        "n_vocab": L.llama_vocab_n_tokens(L.llama_model_get_vocab(model)),
        "loadavg_start": loadavg,
    }


# -- the parent: folders, exports, repetitions --------------------------------------------------


def _gemma3_folder(work: Path, smollm2: Path) -> Path:
    """The Gemma-3-270m shape, random weights, with SmolLM2's tokenizer padded to 262,144 ids
    (the extra tokens are plain vocabulary entries no merge reaches)."""
    import transformers

    shape = benchlib.SHAPES["gemma3-270m"]
    folder = work / "gemma3-270m"
    data = json.loads((smollm2 / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), shape.vocab_size):
        vocab[f"<unused{i}>"] = i
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_bytes((smollm2 / "tokenizer_config.json").read_bytes())
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    config = transformers.Gemma3TextConfig(**{**shape.config, **ids})
    config.architectures = ["Gemma3ForCausalLM"]
    import torch

    # bf16 halves the memory the export needs (the GGUF is written in --outtype either way)
    model = benchlib.build_model(config, "Gemma3ForCausalLM", dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def _prepare(name: str, work: Path, texts: list[str], outtype: str) -> dict[str, Any]:
    """Full and pruned GGUF files of one model, and the kept vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vocabprune as vp
    from vocabprune.deploy.export import export_pruned
    from vocabprune.deploy.gguf import export_gguf
    from vocabprune.fixtures import smollm2_path

    source = smollm2_path() if name == "smollm2" else _gemma3_folder(work, smollm2_path())
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    kept = vp.build_kept_vocab(tokenizer, texts, model=model, progress=False)
    _, written, _ = export_pruned(model, tokenizer, kept, work / f"{name}-pruned", standalone=True)
    del model
    files, export_seconds = {}, {}
    for variant, folder in (("full", source), ("pruned", work / f"{name}-pruned")):
        started = time.perf_counter()
        report = export_gguf(folder, work / f"{name}-{variant}.gguf", outtype=outtype)
        export_seconds[variant] = time.perf_counter() - started
        files[variant] = report
    prompts = [tokenizer(t)["input_ids"][:PROMPT_TOKENS] for t in texts[:: len(texts) // BATCH]]
    return {
        "files": files,
        "export_seconds": export_seconds,
        "kept": written,
        "prompts": prompts[:BATCH],
        "vocab_size": written.vocab_size,
    }


def _prepare_encoder(name: str, work: Path, texts: list[str], outtype: str) -> dict[str, Any]:
    """Full and pruned GGUF files of one embedding model, the kept vocabulary and the batch."""
    from transformers import AutoModel, AutoTokenizer

    import vocabprune as vp
    from vocabprune.deploy.export import export_pruned
    from vocabprune.deploy.gguf import export_gguf
    from vocabprune.fixtures import e5_path, minilm_path

    source = minilm_path() if name == "minilm" else e5_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    kept = vp.build_kept_vocab(tokenizer, texts, model=model, progress=False)
    _, written, _ = export_pruned(model, tokenizer, kept, work / f"{name}-pruned", standalone=True)
    del model
    files, export_seconds = {}, {}
    for variant, folder in (("full", source), ("pruned", work / f"{name}-pruned")):
        started = time.perf_counter()
        out = work / f"{name}-{variant}.gguf"
        files[variant] = export_gguf(folder, out, outtype=outtype, pooling=POOLING)
        export_seconds[variant] = time.perf_counter() - started
    batch = texts[:: len(texts) // BATCH][:BATCH]
    enc = tokenizer(batch, truncation=True, max_length=ENCODER_TOKENS)["input_ids"]
    return {
        "files": files,
        "export_seconds": export_seconds,
        "kept": written,
        "inputs": enc,
        "vocab_size": written.vocab_size,
    }


def _embeddings_equal(full: list[list[float]], pruned: list[list[float]]) -> dict[str, float]:
    """The pruned file's pooled embeddings against the full file's."""
    import numpy as np

    a, b = np.asarray(full, dtype=np.float64), np.asarray(pruned, dtype=np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(a - b).max())}


def run_encoder(name: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    machine = benchlib.machine_info()  # load average at the start of this model's run
    with tempfile.TemporaryDirectory(prefix="vp-gguf-bench-") as tmp:
        prep = _prepare_encoder(name, Path(tmp), texts, args.outtype)
        kept = prep["kept"]
        pruned = [[int(kept.old_to_new[t]) for t in ids] for ids in prep["inputs"]]
        runs = _interleaved(
            name,
            prep["files"],
            {"full": {"inputs": prep["inputs"]}, "pruned": {"inputs": pruned}},
            "deploy_gguf:measure_encoder",
            {"batches": args.batches, "threads": args.threads},
            args.reps,
        )
    out: dict[str, Any] = {
        "model": name,
        "kind": "encoder",
        "kept": kept.size,
        "vocab_size": prep["vocab_size"],
        "batch": {"texts": BATCH, "tokens": sum(len(i) for i in prep["inputs"])},
        "settings": {"reps": args.reps, "batches": args.batches, "threads": args.threads},
        "machine": machine,
    }
    for variant in ("full", "pruned"):
        out[variant] = _summary(
            prep, variant, runs[variant], ("batch_seconds", "batch_cpu_seconds"), "embeddings"
        )
    full_ok = [r for r in runs["full"] if "embeddings" in r]
    pruned_ok = [r for r in runs["pruned"] if "embeddings" in r]
    if full_ok and pruned_ok:
        out["embeddings"] = _embeddings_equal(full_ok[0]["embeddings"], pruned_ok[0]["embeddings"])
    return out


def _covered_equal(full: list[list[int]], pruned: list[list[int]], kept: Any) -> dict[str, Any]:
    """Pruned outputs mapped back to original ids against the full ones, up to the first token
    the kept vocabulary lacks."""
    same, compared = 0, 0
    for f, p in zip(full, pruned, strict=True):
        mapped = [int(kept.kept_ids[t]) for t in p]
        n = next((i for i, t in enumerate(f) if t not in kept), len(f))
        compared += n
        same += int(mapped[:n] == f[:n])
    return {"sequences_equal": same, "sequences": len(full), "tokens_compared": compared}


def _interleaved(
    name: str,
    files: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
    child: str,
    settings: dict[str, Any],
    reps: int,
) -> dict[str, list[dict[str, Any]]]:
    """Each variant's file measured by `child` in a fresh process, `reps` times, full and pruned
    alternating which goes first."""
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "pruned": []}
    for rep in range(reps):
        for variant in ("full", "pruned") if rep % 2 == 0 else ("pruned", "full"):
            spec = {"path": files[variant]["out"], **inputs[variant], **settings}
            result = benchlib.run_fresh(child, spec, timeout=1200)
            benchlib_log(f"{name} {variant} rep {rep}: " + _short(result))
            runs[variant].append(result)
    return runs


def _summary(
    prep: dict[str, Any],
    variant: str,
    runs: list[dict[str, Any]],
    metrics: Sequence[str],
    bulky: str,
) -> dict[str, Any]:
    """One variant's file facts and the medians of its runs (load, peak RSS, `metrics`); the
    runs themselves kept without their `bulky*` outputs."""
    files = prep["files"][variant]
    summary = {
        "file_bytes": files["bytes"],
        "export_seconds": prep["export_seconds"][variant],
        "tokens": files["tokens"],
    }
    for key in ("load_seconds", "peak_rss", *metrics):
        summary[key] = _median(runs, key)
    summary["runs"] = [{k: v for k, v in r.items() if not k.startswith(bulky)} for r in runs]
    return summary


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def run_model(name: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    machine = benchlib.machine_info()  # load average at the start of this model's run
    with tempfile.TemporaryDirectory(prefix="vp-gguf-bench-") as tmp:
        prep = _prepare(name, Path(tmp), texts, args.outtype)
        kept = prep["kept"]
        prompts = {"full": prep["prompts"]}
        prompts["pruned"] = [[int(kept.old_to_new[t]) for t in p] for p in prep["prompts"]]
        runs = _interleaved(
            name,
            prep["files"],
            {v: {"prompts": prompts[v]} for v in ("full", "pruned")},
            "deploy_gguf:measure",
            {"tokens": args.tokens, "threads": args.threads},
            args.reps,
        )
    out: dict[str, Any] = {
        "model": name,
        "kind": "lm",
        "kept": kept.size,
        "vocab_size": prep["vocab_size"],
        "settings": {"reps": args.reps, "tokens": args.tokens, "threads": args.threads},
        "machine": machine,
    }
    rates = [f"tokens_per_{u}_b{b}" for u in ("second", "cpu_second") for b in (1, 8)]
    for variant in ("full", "pruned"):
        out[variant] = _summary(prep, variant, runs[variant], rates, "outputs")
    full_ok = [r for r in runs["full"] if "outputs_b1" in r]
    pruned_ok = [r for r in runs["pruned"] if "outputs_b1" in r]
    if full_ok and pruned_ok:
        out["greedy_b1"] = _covered_equal(
            full_ok[0]["outputs_b1"], pruned_ok[0]["outputs_b1"], kept
        )
        out["greedy_b8"] = _covered_equal(
            full_ok[0]["outputs_b8"], pruned_ok[0]["outputs_b8"], kept
        )
    return out


def benchlib_log(msg: str) -> None:
    print(f"[deploy_gguf] {msg}", file=sys.stderr, flush=True)


def _short(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error {result['error']}"
    if "batch_seconds" in result:
        return (
            f"load {result['load_seconds']:.2f} s, rss {result['peak_rss'] / 2**20:.0f} MiB, "
            f"batch {result['batch_seconds']:.3f} s (cpu {result['batch_cpu_seconds']:.3f} s)"
        )
    return (
        f"load {result['load_seconds']:.2f} s, rss {result['peak_rss'] / 2**20:.0f} MiB, "
        f"b1 {result['tokens_per_second_b1']:.1f} tok/s, b8 {result['tokens_per_second_b8']:.1f}"
    )


def _range(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    if not values:
        return "–"
    return f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]"


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _settings(models: list[dict[str, Any]], key: str) -> str:
    values = sorted({str(m.get("settings", {}).get(key, "?")) for m in models})
    return "/".join(values)


def table(results: dict[str, Any]) -> str:
    """The markdown tables of a results dict (causal LMs, then encoders; a row per file)."""
    lms = [m for m in results["models"] if m.get("kind", "lm") == "lm"]
    encoders = [m for m in results["models"] if m.get("kind") == "encoder"]
    parts = []
    if lms:
        parts.append(lm_table(results, lms))
    if encoders:
        parts.append(encoder_table(results, encoders))
    return "\n\n".join(parts)


def lm_table(results: dict[str, Any], models: list[dict[str, Any]]) -> str:
    names = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270m shape"}
    lines = [
        f"llama.cpp (llama-cpp-python {results.get('llama_cpp_python', '?')}), "
        f"{results['outtype']}, {_settings(models, 'threads')} thread(s), median [min–max] of "
        f"{_settings(models, 'reps')} runs, full and pruned interleaved, each in a fresh "
        f"process; greedy, {_settings(models, 'tokens')} new tokens after a "
        f"{PROMPT_TOKENS}-token prompt.",
        "",
        "| model | file | tokens | file size | load | peak RSS | tokens/s, batch 1 "
        "| tokens/s, batch 8 | tokens / CPU s, batch 1 | tokens / CPU s, batch 8 "
        "| pruned greedy = full |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in models:
        for variant in ("full", "pruned"):
            v = m[variant]
            same = "–"
            if variant == "pruned" and "greedy_b1" in m:
                g1, g8 = m["greedy_b1"], m["greedy_b8"]
                same = (
                    f"{g1['sequences_equal'] + g8['sequences_equal']}/"
                    f"{g1['sequences'] + g8['sequences']} sequences, "
                    f"{g1['tokens_compared'] + g8['tokens_compared']} tokens"
                )
            lines.append(
                f"| {names.get(m['model'], m['model'])} | {variant} | {v['tokens']:,} "
                f"| {v['file_bytes'] / 2**20:,.0f} MiB | {_fmt(v['load_seconds'], '.2f')} s "
                f"| {_fmt(v['peak_rss'] and v['peak_rss'] / 2**20, ',.0f')} MiB "
                f"| {_range(v['runs'], 'tokens_per_second_b1')} "
                f"| {_range(v['runs'], 'tokens_per_second_b8')} "
                f"| {_range(v['runs'], 'tokens_per_cpu_second_b1')} "
                f"| {_range(v['runs'], 'tokens_per_cpu_second_b8')} | {same} |"
            )
    return "\n".join(lines)


def _range_ms(runs: list[dict[str, Any]], key: str) -> str:
    values = [1000 * r[key] for r in runs if isinstance(r.get(key), (int, float))]
    if not values:
        return "–"
    return f"{statistics.median(values):.0f} [{min(values):.0f}–{max(values):.0f}]"


def encoder_table(results: dict[str, Any], models: list[dict[str, Any]]) -> str:
    names = {"minilm": "all-MiniLM-L6-v2", "e5": "multilingual-e5-small"}
    batch = models[0].get("batch", {})
    lines = [
        f"llama.cpp (llama-cpp-python {results.get('llama_cpp_python', '?')}), "
        f"{results['outtype']}, {_settings(models, 'threads')} thread(s), median [min–max] of "
        f"{_settings(models, 'reps')} runs (each the median of {_settings(models, 'batches')} "
        f"batches after a warm-up), full and pruned interleaved, each in a fresh process; one "
        f"batch = {batch.get('texts', BATCH)} BBC News article openings, at most "
        f"{ENCODER_TOKENS} tokens each, mean-pooled.",
        "",
        "| model | file | tokens | file size | load | peak RSS | ms / batch "
        "| CPU ms / batch | pruned embeddings vs full |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in models:
        for variant in ("full", "pruned"):
            v = m[variant]
            same = "–"
            if variant == "pruned" and "embeddings" in m:
                e = m["embeddings"]
                same = f"cosine ≥ {e['min_cosine']:.7f}, max abs diff {e['max_abs_diff']:.1e}"
            lines.append(
                f"| {names.get(m['model'], m['model'])} | {variant} | {v['tokens']:,} "
                f"| {v['file_bytes'] / 2**20:,.0f} MiB | {_fmt(v['load_seconds'], '.2f')} s "
                f"| {_fmt(v['peak_rss'] and v['peak_rss'] / 2**20, ',.0f')} MiB "
                f"| {_range_ms(v['runs'], 'batch_seconds')} "
                f"| {_range_ms(v['runs'], 'batch_cpu_seconds')} | {same} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import importlib.metadata

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--batches", type=int, default=5, help="encoders: timed batches per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--outtype", default="f16", choices=("f32", "f16", "q8_0"))
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    texts, _labels = benchlib.bbc_news()
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choose from {', '.join(MODELS)})")
    models = [
        (run_encoder if m in ENCODERS else run_model)(m, texts, args)
        for m in args.models.split(",")
    ]
    names = {m["model"] for m in models}
    out = Path(args.out)
    # Models run before (same outtype) stay in the file: `--models gemma3-270m` adds one.
    previous = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    kept_before = previous.get("models", []) if previous.get("outtype") == args.outtype else []
    for m in kept_before:  # entries from before settings were kept per model
        m.setdefault("kind", "lm")
        m.setdefault("settings", {k: previous.get(k) for k in ("reps", "tokens", "threads")})
    results: dict[str, Any] = {
        "benchmark": "deploy_gguf",
        "machine": benchlib.machine_info(),
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "outtype": args.outtype,
        "reps": args.reps,
        "tokens": args.tokens,
        "threads": args.threads,
        "kept_from": "BBC News, all 2,225 articles, each model's tokenizer (SmolLM2's for the "
        "Gemma-3 shape)",
        "models": [m for m in kept_before if m["model"] not in names] + models,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
