"""Inference with compact models: full vs pruned for BBC News, e5 and MiniLM, in one run.

    python benchmarks/inference.py [--models e5,minilm] [--variants standalone,compact,oracle]
                                   [--limit N] [--out benchmarks/results/inference.json]

For each model the corpus (BBC News, every article, truncated to 128 tokens) is pruned with
`vocabprune prune --max-length 128` twice: a standalone export (tokenizer rewritten, stock
AutoModel) and a compact one (original tokenizer, `vocabprune.load_compact`). The ORACLE for
deployment is the compact folder itself loaded as what it is, an ordinary model with only the
kept rows: stock `from_pretrained`, no vocabprune hooks, its input ids remapped to kept ids by a
table lookup before the timed loop (like tokenization). compact / oracle is what vocabprune's
adapter (the id remap in front of the embedding) costs. Each of full / standalone / compact /
oracle runs in a FRESH subprocess: load the model, run the whole corpus in batches of 64, and
report

- files on disk (the weights, and the whole folder with config and tokenizer);
- load time;
- RSS growth (VmRSS, so memory-mapped weight pages count once touched) after loading and after
  the corpus, over the process's RSS just before loading (torch, transformers and the tokenized
  corpus already in memory);
- time per batch (forward only, tokenization done before);
- outputs: the mean-pooled last hidden state of every article, compared with the full model's
  (max absolute difference; identical means equal);
- compact / oracle (`compact_vs_oracle`): RSS growth after load and after the corpus, peak RSS
  growth, load time and time per batch.
On a CUDA machine the model runs there and torch.cuda.max_memory_allocated is reported too.

`main() -> dict` returns (and writes) the results; benchmarks/run.py calls it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import benchlib as bl  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "inference.json"
BATCH = 64
MAX_LENGTH = 128
# What compact / oracle compares (worker fields).
ORACLE_KEYS = (
    "rss_after_load_bytes",
    "rss_after_corpus_bytes",
    "rss_after_corpus_trimmed_bytes",
    "peak_rss_growth_bytes",
    "load_s",
    "s_per_batch",
    "s_per_batch_median",
)
TARGETS = {"e5": {"disk_saved_min": 0.75, "rss_after_corpus_ratio_max": 0.5}}


def _malloc_trim() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


def model_path(name: str) -> str:
    from vocabprune import fixtures

    return str(fixtures.e5_path() if name == "e5" else fixtures.minilm_path())


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def disk(folder: Path, files: list[Path]) -> dict[str, int]:
    return {
        "weights_bytes": sum(p.stat().st_size for p in files),
        "folder_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
    }


def model_folder_files(folder: Path) -> list[Path]:
    """The files stock from_pretrained reads from a model folder (not READMEs or extras)."""
    names = {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    }
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and (p.name in names or p.suffix == ".safetensors")
    ]


# -- worker: one fresh process per (model, variant) ---------------------------------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from vocabprune.core.loaders import model_class, model_kwargs
    from vocabprune.deploy.compact import load_compact

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    folder = Path(args.folder)
    original = args.variant in ("compact", "oracle")
    tok_dir = folder / "original_tokenizer" if original else folder
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    batches = [
        tokenizer(
            texts[i : i + BATCH],
            truncation=True,
            max_length=MAX_LENGTH,
            padding=True,
            return_tensors="pt",
        )
        for i in range(0, len(texts), BATCH)
    ]
    if args.variant == "oracle":  # a plain model with the kept rows reads kept ids
        from vocabprune import KeptVocab

        table = torch.as_tensor(KeptVocab.load(folder / "kept_vocab.json").old_to_new)
        for batch in batches:
            batch["input_ids"] = table[batch["input_ids"]]
    base = bl.rss_now_bytes()
    started = time.perf_counter()
    if args.variant == "compact":
        model, _ = load_compact(folder, tokenizer=tokenizer)
    else:
        cls = model_class(AutoConfig.from_pretrained(str(folder)))
        model = cls.from_pretrained(str(folder), **model_kwargs(cls, folder))
        model.eval()
    model.to(device)
    load_s = time.perf_counter() - started
    after_load = bl.rss_now_bytes() - base
    pooled = []
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            t0 = time.perf_counter()
            hidden = model(**batch).last_hidden_state
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu().numpy())
    after_corpus = bl.rss_now_bytes() - base
    trimmed = _malloc_trim() and bl.rss_now_bytes() - base
    np.save(args.emb, np.concatenate(pooled))
    result = {
        "load_s": round(load_s, 3),
        "rss_after_load_bytes": after_load,
        "rss_after_corpus_bytes": after_corpus,
        # after glibc's malloc_trim(0): what the allocator kept of freed activations is gone
        "rss_after_corpus_trimmed_bytes": trimmed or None,
        "peak_rss_growth_bytes": bl.peak_rss_bytes() - base,
        "batches": len(times),
        "s_per_batch": round(sum(times) / len(times), 4),
        "s_per_batch_median": round(sorted(times)[len(times) // 2], 4),
        "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
        "device": device,
    }
    if device == "cuda":
        result["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return result


def run_worker(
    folder: Path, variant: str, texts_file: Path, emb: Path, timeout: float = 1800
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--folder",
        str(folder),
        "--variant",
        variant,
        "--texts",
        str(texts_file),
        "--emb",
        str(emb),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {variant} on {folder} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- driver -----------------------------------------------------------------------------------


def bench_model(
    name: str, variants: list[str], texts_file: Path, n_texts: int, work: Path
) -> dict[str, Any]:
    import numpy as np

    from vocabprune.cli.options import PruneOptions
    from vocabprune.cli.prune import run_prune

    source = Path(model_path(name))
    data = [str(texts_file.with_suffix(".jsonl"))]
    out: dict[str, Any] = {"model": str(source), "examples": n_texts}
    full_files = model_folder_files(source)
    out["full"] = {
        **disk_of(full_files),
        **run_worker(source, "full", texts_file, work / f"{name}-full.npy"),
    }
    full_emb = np.load(work / f"{name}-full.npy")
    exports: dict[str, tuple[Path, dict[str, Any], float | None]] = {}

    def export(kind: str) -> tuple[Path, dict[str, Any], float | None]:
        """The export of this kind (standalone or compact), written once."""
        if kind not in exports:
            folder = work / f"{name}-{kind}"
            t0 = time.perf_counter()
            options = PruneOptions(
                out=str(folder),
                model=str(source),
                data=data,
                max_length=MAX_LENGTH,
                standalone=kind == "standalone",
            )
            exports[kind] = (folder, run_prune(options), time.perf_counter() - t0)
            return exports[kind]
        folder, report, _ = exports[kind]
        return folder, report, None  # reused: no export time of its own

    # The oracle is the compact folder loaded as a plain model: compact goes first.
    for variant in sorted(variants, key=lambda v: v == "oracle"):
        folder, report, export_s = export("compact" if variant == "oracle" else variant)
        res = run_worker(folder, variant, texts_file, work / f"{name}-{variant}.npy")
        emb = np.load(work / f"{name}-{variant}.npy")
        diff = float(np.abs(emb - full_emb).max())
        full = out["full"]
        size = disk(folder, weight_files(folder))
        entry = {
            **size,
            **res,
            "export_s": None if export_s is None else round(export_s, 2),
            "kept_tokens": report["kept_tokens"],
            "vocab_size": report["vocab_size"],
            "max_abs_diff_vs_full": diff,
            "outputs_identical": diff == 0.0,
            "weights_saved_fraction": 1 - size["weights_bytes"] / full["weights_bytes"],
            "folder_saved_fraction": 1 - size["folder_bytes"] / full["folder_bytes"],
            "rss_after_load_ratio": ratio(
                res["rss_after_load_bytes"], full["rss_after_load_bytes"]
            ),
            "rss_after_corpus_ratio": ratio(
                res["rss_after_corpus_bytes"], full["rss_after_corpus_bytes"]
            ),
            "rss_after_corpus_trimmed_ratio": ratio(
                res["rss_after_corpus_trimmed_bytes"] or 0,
                full["rss_after_corpus_trimmed_bytes"] or 0,
            ),
            "load_time_ratio": ratio(res["load_s"], full["load_s"]),
            "time_per_batch_ratio": ratio(res["s_per_batch"], full["s_per_batch"]),
        }
        if "cuda_max_memory_allocated_bytes" in res:
            entry["cuda_max_memory_ratio"] = ratio(
                res["cuda_max_memory_allocated_bytes"], full["cuda_max_memory_allocated_bytes"]
            )
        target = TARGETS.get(name)
        if target:
            entry["targets"] = {
                "disk_saved_min": target["disk_saved_min"],
                "disk_ok": entry["weights_saved_fraction"] >= target["disk_saved_min"],
                "rss_after_corpus_ratio_max": target["rss_after_corpus_ratio_max"],
                "rss_ok": entry["rss_after_corpus_ratio"] <= target["rss_after_corpus_ratio_max"],
                # the same after malloc_trim: stable from run to run (glibc keeps a varying
                # amount of freed activation memory, +-250 MB on e5 between two runs here)
                "rss_trimmed_ok": (entry["rss_after_corpus_trimmed_ratio"] or 1.0)
                <= target["rss_after_corpus_ratio_max"],
            }
        out[variant] = entry
    if "compact" in out and "oracle" in out:
        compact, oracle = out["compact"], out["oracle"]
        out["compact_vs_oracle"] = {
            f"{key}_ratio": ratio(compact[key] or 0, oracle[key] or 0) for key in ORACLE_KEYS
        }
        out["compact_vs_oracle"]["outputs_equal"] = bool(
            np.array_equal(
                np.load(work / f"{name}-compact.npy"), np.load(work / f"{name}-oracle.npy")
            )
        )
    return out


def disk_of(files: list[Path]) -> dict[str, int]:
    return {
        "weights_bytes": sum(p.stat().st_size for p in files if p.suffix == ".safetensors"),
        "folder_bytes": sum(p.stat().st_size for p in files),
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def main(
    models: tuple[str, ...] = ("e5", "minilm"),
    variants: tuple[str, ...] = ("standalone", "compact", "oracle"),
    limit: int | None = None,
    out: str | os.PathLike[str] = DEFAULT_OUT,
) -> dict[str, Any]:
    """Run the benchmark; write and return the results."""
    from vocabprune.core.files import atomic_file
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir

    started = time.perf_counter()
    texts = read_labelled_folder(bbc_news_dir())["text"]
    if limit:
        texts = texts[:limit]
    work = Path(tempfile.mkdtemp(prefix="vocabprune-bench-inference-"))
    try:
        texts_file = work / "texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        texts_file.with_suffix(".jsonl").write_text(
            "\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8"
        )
        results: dict[str, Any] = {
            "benchmark": "inference",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "batch_size": BATCH,
            "max_length": MAX_LENGTH,
            "examples": len(texts),
            "cpu_count": os.cpu_count(),
            "models": {},
        }
        for name in models:
            results["models"][name] = bench_model(
                name, list(variants), texts_file, len(texts), work
            )
        results["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    target = Path(out)
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def summary(results: dict[str, Any]) -> str:
    def mib(n: float) -> str:
        return f"{n / 2**20:,.0f}"

    lines = []
    for name, res in results["models"].items():
        full = res["full"]
        for variant in ("standalone", "compact", "oracle"):
            if variant not in res:
                continue
            r = res[variant]
            lines.append(
                f"{name} {variant}: kept {r['kept_tokens']:,}/{r['vocab_size']:,}; weights "
                f"{mib(r['weights_bytes'])} vs {mib(full['weights_bytes'])} MiB "
                f"({r['weights_saved_fraction']:.1%} smaller); load {r['load_s']:.2f} vs "
                f"{full['load_s']:.2f} s; RSS growth after load {mib(r['rss_after_load_bytes'])} "
                f"vs {mib(full['rss_after_load_bytes'])} MiB, after corpus "
                f"{mib(r['rss_after_corpus_bytes'])} vs {mib(full['rss_after_corpus_bytes'])} MiB "
                f"(x{r['rss_after_corpus_ratio']}); {r['s_per_batch']:.3f} vs "
                f"{full['s_per_batch']:.3f} s/batch; max |diff| {r['max_abs_diff_vs_full']:.2g}"
            )
        vs = res.get("compact_vs_oracle")
        if vs:
            lines.append(
                f"{name} compact / oracle: RSS growth after load "
                f"x{vs['rss_after_load_bytes_ratio']}, after corpus "
                f"x{vs['rss_after_corpus_bytes_ratio']} (trimmed "
                f"x{vs['rss_after_corpus_trimmed_bytes_ratio']}), peak growth "
                f"x{vs['peak_rss_growth_bytes_ratio']}; load x{vs['load_s_ratio']}; time per "
                f"batch x{vs['s_per_batch_ratio']} (median x{vs['s_per_batch_median_ratio']}); "
                f"outputs equal: {vs['outputs_equal']}"
            )
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> list[str]:
    """Per model and variant, beside full: weights, load, RSS growth, time per batch, outputs;
    then compact / oracle (also rendered by run.py in benchmarks/README.md)."""

    def mib(n: Any) -> str:
        return f"{n / 2**20:,.0f}" if isinstance(n, (int, float)) else "–"

    def num(x: Any, fmt: str = ".3f") -> str:
        return format(x, fmt) if isinstance(x, (int, float)) else "–"

    lines = [
        f"Inference, BBC News ({results.get('examples')} articles, {results.get('max_length')} "
        f"tokens, batches of {results.get('batch_size')}); RSS growth is over the RSS before "
        "loading; oracle = the compact folder loaded as a plain model, fed ids remapped by lookup.",
        "",
        "| model | variant | kept ids | weights MiB | load s | RSS after load MiB | RSS after "
        "corpus MiB | peak RSS growth MiB | s / batch | vs full: RSS after corpus | vs full: "
        "s / batch | max abs diff vs full |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.get("models", {}).items():
        for variant in ("full", "standalone", "compact", "oracle"):
            r = res.get(variant)
            if not r:
                continue
            cells = [
                r.get("kept_tokens", "–"),
                mib(r.get("weights_bytes")),
                num(r.get("load_s"), ".2f"),
                mib(r.get("rss_after_load_bytes")),
                mib(r.get("rss_after_corpus_bytes")),
                mib(r.get("peak_rss_growth_bytes")),
                num(r.get("s_per_batch")),
                num(r.get("rss_after_corpus_ratio")),
                num(r.get("time_per_batch_ratio")),
                num(r.get("max_abs_diff_vs_full"), ".2g"),
            ]
            lines.append(f"| {name} | {variant} | " + " | ".join(map(str, cells)) + " |")
        vs = res.get("compact_vs_oracle")
        if vs:
            lines.append(
                f"| {name} | **compact / oracle** | | | {num(vs.get('load_s_ratio'))} | "
                f"{num(vs.get('rss_after_load_bytes_ratio'))} | "
                f"{num(vs.get('rss_after_corpus_bytes_ratio'))} | "
                f"{num(vs.get('peak_rss_growth_bytes_ratio'))} | {num(vs.get('s_per_batch_ratio'))}"
                f" | | | outputs equal: {vs.get('outputs_equal')} |"
            )
    return lines


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--emb", help=argparse.SUPPRESS)
    p.add_argument("--models", default="e5,minilm")
    p.add_argument("--variants", default="standalone,compact,oracle")
    p.add_argument("--limit", type=int, help="only the first N articles (quick runs)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = _parse(None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ns.worker:
        print(json.dumps(worker(ns)))
    else:
        res = main(tuple(ns.models.split(",")), tuple(ns.variants.split(",")), ns.limit, ns.out)
        print(summary(res))
