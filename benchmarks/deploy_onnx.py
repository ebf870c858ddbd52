"""ONNX Runtime, full vs pruned, side by side in one run: file size, load time, peak RSS,
latency (encoders: one batch; causal LMs: greedy tokens/s with the KV cache at batch 1 and 8).

Models: MiniLM and multilingual-e5-small (kept: BBC News at max length 128), SmolLM2 (kept: the
BBC News business articles), the Gemma-3-270m shape (random weights; kept: the 18,890 ids of the
BBC News e5 stream, as train_compare.py). Full: `vp.export_onnx(stock folder)`; pruned:
`vp.export_onnx(model, tokenizer=, kept=)` (the standalone export converted), int8 too for the
encoders. The Gemma-3 shape has no tokenizer to rewrite: its pruned folder is the kept-rows model
(what a standalone export holds), converted the same way.

Every measurement runs in a fresh interpreter that imports only onnxruntime, numpy and
tokenizers (no torch), so its peak RSS is the runtime's; variants alternate, REPS each.

    flock /tmp/vp-heavy.lock python benchmarks/deploy_onnx.py   # -> results/deploy_onnx.json

Environment: VOCABPRUNE_BENCH_ONNX_MODELS (minilm,e5,smollm2,gemma3), ..._REPS (3),
..._TOKENS (new tokens per decode, 32).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

RESULT = HERE / "results" / "deploy_onnx.json"
MODELS = os.environ.get("VOCABPRUNE_BENCH_ONNX_MODELS", "minilm,e5,smollm2,gemma3").split(",")
REPS = int(os.environ.get("VOCABPRUNE_BENCH_ONNX_REPS", "3"))
NEW_TOKENS = int(os.environ.get("VOCABPRUNE_BENCH_ONNX_TOKENS", "32"))
ENC_BATCH, ENC_LENGTH = 32, 128
PROMPT_TOKENS = 32
LM_BATCHES = (1, 8)


# -- the child: one variant, in a fresh process ----------------------------------------------------


def _session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _encoder_feed(spec: dict[str, Any], sess: Any) -> dict[str, Any]:
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(spec["folder"]) / "tokenizer.json"))
    tok.enable_truncation(ENC_LENGTH)
    tok.enable_padding()
    enc = tok.encode_batch(spec["texts"][:ENC_BATCH])
    arrays = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    return {i.name: arrays[i.name] for i in sess.get_inputs()}


def _decode(sess: Any, prompts: Any, new_tokens: int) -> tuple[float, list[list[int]]]:
    """Greedy decoding with the cache: (seconds, generated ids)."""
    import numpy as np

    inputs = sess.get_inputs()
    past_inputs = [i for i in inputs if i.name.startswith("past_key_values")]
    batch, length = prompts.shape
    heads, dim = past_inputs[0].shape[1], past_inputs[0].shape[3]
    feed = {i.name: np.zeros((batch, heads, 0, dim), np.float32) for i in past_inputs}
    ids = prompts
    out: list[list[int]] = [[] for _ in range(batch)]
    start = time.perf_counter()
    total = 0
    for step in range(new_tokens):
        n = ids.shape[1]
        feed.update(
            input_ids=ids,
            attention_mask=np.ones((batch, total + n), np.int64),
            position_ids=np.broadcast_to(np.arange(total, total + n, dtype=np.int64), (batch, n)),
        )
        logits, *present = sess.run(None, feed)
        total += n
        feed.update(zip((i.name for i in past_inputs), present, strict=True))
        ids = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        for row, token in enumerate(ids[:, 0].tolist()):
            out[row].append(token)
        del step
    return time.perf_counter() - start, out


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant: load the session, run the workload; time, tokens/s, peak RSS."""
    import numpy as np

    start = time.perf_counter()
    sess = _session(spec["path"])
    result: dict[str, Any] = {"load_seconds": time.perf_counter() - start}
    if spec["kind"] == "encoder":
        feed = _encoder_feed(spec, sess)
        sess.run(None, feed)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        result["batch_seconds"] = statistics.median(times)
        result["batch_shape"] = list(feed["input_ids"].shape)
    else:
        prompts = np.asarray(spec["prompts"], dtype=np.int64)
        _decode(sess, prompts[:1], 2)  # warm-up
        for batch in LM_BATCHES:
            seconds, tokens = _decode(sess, prompts[:batch], spec["new_tokens"])
            result[f"tokens_per_second_b{batch}"] = batch * spec["new_tokens"] / seconds
            result[f"tokens_b{batch}"] = tokens
    result["peak_rss_bytes"] = benchlib.peak_rss_bytes()
    return result


# -- the parent: exports, then the variants alternating ---------------------------------------


def _bbc(step: int = 1) -> tuple[list[str], list[int]]:
    texts, labels = benchlib.bbc_news()
    return texts[::step], labels[::step]


def _export_hf(name: str, root: Path) -> dict[str, Any]:
    """MiniLM / e5 / SmolLM2: full (stock folder) and pruned (standalone) ONNX folders."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    import vocabprune as vp
    from vocabprune.fixtures import e5_path, minilm_path, smollm2_path

    folder = {"minilm": minilm_path, "e5": e5_path, "smollm2": smollm2_path}[name]()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts, labels = _bbc()
    causal = name == "smollm2"
    if causal:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        business = [t for t, lab in zip(texts, labels, strict=True) if lab == 0]
        kept = vp.build_kept_vocab(tokenizer, business, model=model, progress=False)
    else:
        model = AutoModel.from_pretrained(folder).eval()
        kept = vp.build_kept_vocab(tokenizer, texts, model=model, max_length=128, progress=False)
    vp.export_onnx(folder, root / "full")
    vp.export_onnx(model, root / "pruned", tokenizer=tokenizer, kept=kept, quantize=not causal)
    out: dict[str, Any] = {"kind": "causal" if causal else "encoder", "kept": kept.size}
    out["vocab_size"] = kept.vocab_size
    if causal:
        enc = tokenizer(business[: max(LM_BATCHES)], truncation=True, max_length=PROMPT_TOKENS)
        out["prompts_full"] = [ids[:PROMPT_TOKENS] for ids in enc["input_ids"]]
        written = vp.KeptVocab.load(root / "pruned" / "kept_vocab.json")
        out["prompts_pruned"] = [[written.new_id(i) for i in p] for p in out["prompts_full"]]
        out["back"] = written.kept_ids.tolist()
    else:
        out["texts"] = texts[:ENC_BATCH]
    return out


def _export_gemma(root: Path) -> dict[str, Any]:
    import copy

    import numpy as np

    import vocabprune as vp

    full, data, kept = benchlib.decoding_model(benchlib.SHAPES["gemma3-270m"])
    oracle = benchlib.naive_slice(copy.deepcopy(full), kept).eval()
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        full.save_pretrained(Path(tmp) / "full")
        oracle.save_pretrained(Path(tmp) / "pruned")
        del full, oracle
        vp.export_onnx(Path(tmp) / "full", root / "full")
        vp.export_onnx(Path(tmp) / "pruned", root / "pruned")
    prompts = np.resize(data, max(LM_BATCHES) * PROMPT_TOKENS).reshape(-1, PROMPT_TOKENS)
    return {
        "kind": "causal",
        "kept": kept.size,
        "vocab_size": kept.vocab_size,
        "prompts_full": prompts.tolist(),
        "prompts_pruned": kept.old_to_new[prompts].tolist(),
        "back": kept.kept_ids.tolist(),
    }


def _variants(info: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    variants = {
        "full": root / "full" / "onnx" / "model.onnx",
        "pruned": root / "pruned" / "onnx" / "model.onnx",
    }
    quantized = root / "pruned" / "onnx" / "model_quantized.onnx"
    if quantized.is_file():
        variants["pruned_int8"] = quantized
    specs = {}
    for name, path in variants.items():
        folder = path.parent.parent
        spec: dict[str, Any] = {"path": str(path), "folder": str(folder), "kind": info["kind"]}
        if info["kind"] == "encoder":
            spec["texts"] = info["texts"]
        else:
            spec["prompts"] = info["prompts_full" if name == "full" else "prompts_pruned"]
            spec["new_tokens"] = NEW_TOKENS
        specs[name] = spec
    return specs


def _summary(runs: dict[str, list[dict[str, Any]]], info: dict[str, Any], files: dict) -> dict:
    out: dict[str, Any] = {}
    keys = ["load_seconds", "peak_rss_bytes", "batch_seconds"]
    keys += [f"tokens_per_second_b{b}" for b in LM_BATCHES]
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        row: dict[str, Any] = {"file_bytes": files[name], "errors": len(results) - len(ok)}
        for key in keys:
            values = [r[key] for r in ok if key in r]
            if values:
                row[key] = statistics.median(values)
                row[key + "_range"] = [min(values), max(values)]
        out[name] = row
    if info["kind"] == "causal":  # greedy tokens: pruned (mapped back) vs full
        back = info["back"]
        first = {n: next((r for r in runs[n] if "error" not in r), None) for n in runs}
        if first.get("full") and first.get("pruned"):
            for b in LM_BATCHES:
                full_tokens = first["full"][f"tokens_b{b}"]
                pruned_tokens = [[back[t] for t in row] for row in first["pruned"][f"tokens_b{b}"]]
                out[f"same_tokens_b{b}"] = full_tokens == pruned_tokens
    return out


def main() -> dict[str, Any]:
    results: dict[str, Any] = {"reps": REPS, "new_tokens": NEW_TOKENS, "models": {}}
    results["machine"] = benchlib.machine_info()
    for name in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            info = _export_gemma(root) if name == "gemma3" else _export_hf(name, root)
            export_seconds = time.perf_counter() - started
            specs = _variants(info, root)
            files = {n: Path(s["path"]).stat().st_size for n, s in specs.items()}
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in specs}
            for _ in range(REPS):
                for variant, spec in specs.items():
                    runs[variant].append(benchlib.run_fresh("deploy_onnx:measure", spec))
            summary = _summary(runs, info, files)
            summary.update(kept=info["kept"], vocab_size=info["vocab_size"], kind=info["kind"])
            summary["export_seconds"] = export_seconds
            results["models"][name] = summary
            print(json.dumps({name: summary}, default=str)[:2000], flush=True)
            _save(results)  # after each model: a long run stopped midway keeps what it measured
    return results


def _save(results: dict[str, Any]) -> None:
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2, default=str))


def table(results: dict[str, Any]) -> str:
    """The markdown table of a results file: one row per model and variant."""
    lines = [
        "| model | variant | kept / vocabulary | file MiB | load s | peak RSS MiB | latency |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, row in results["models"].items():
        for variant in ("full", "pruned", "pruned_int8"):
            cell = row.get(variant)
            if not cell:
                continue
            if row["kind"] == "encoder":
                shape = "x".join(str(n) for n in (ENC_BATCH, ENC_LENGTH))
                latency = f"{cell.get('batch_seconds', float('nan')) * 1e3:,.0f} ms / {shape}"
            else:
                latency = " / ".join(
                    f"b{b} {cell.get(f'tokens_per_second_b{b}', float('nan')):.1f} tok/s"
                    for b in LM_BATCHES
                )
            kept = f"{row['kept']:,} / {row['vocab_size']:,}" if variant != "full" else "–"
            lines.append(
                f"| {name} | {variant} | {kept} | {cell['file_bytes'] / 2**20:,.1f} | "
                f"{cell.get('load_seconds', float('nan')):.2f} | "
                f"{cell.get('peak_rss_bytes', 0) / 2**20:,.0f} | {latency} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        print(table(json.loads(RESULT.read_text())))
        sys.exit(0)
    print(table(main()))
