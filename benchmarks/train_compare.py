"""Training cost of vocabprune against full fine-tuning, the ORACLE and the alternatives (issue 12),
with honest repetitions: every run in a fresh process, methods interleaved, >= 3 repetitions.

    python benchmarks/train_compare.py --case e5_128          # -> results/train_compare_e5_128.json
    python benchmarks/train_compare.py --case e5_128,e5_512,minilm_128,smollm2_256
    python benchmarks/train_compare.py --case all             # every real case (hours on 2 cores)
    python benchmarks/train_compare.py --list                 # the cases
    # smoke (seconds per run): one repetition, one timed step, tiny shapes, output elsewhere
    python benchmarks/train_compare.py --case minilm_128 --batch-size 2 --max-length 32 \\
        --steps 1 --reps 1 --out /tmp/minilm.json
    python benchmarks/train_compare.py --case tiny_gemma3 --steps 1 --reps 1 --out /tmp/t.json

Methods, run A B C D E A B C D E ... (`--reps` rounds), each in a new interpreter:
- full: stock fine-tuning of the whole model.
- pruned (vocabprune): `vp.load_pruned` for a model folder (the dropped rows are never read),
  `vp.prune` of the model built from its config otherwise; fed the tokenizer's original ids.
- oracle: the same config with vocab_size = kept rows (config token ids renumbered), random
  weights: an ordinary model that only ever had the kept rows; its batches remapped to kept ids
  by a table lookup. What vocabprune should cost at best.
- peft_tt: PEFT TrainableTokens on the kept ids, every other parameter trainable too; the full
  matrix stays, frozen.
- naive: load the full model, slice the kept rows into a new smaller embedding (and head), by
  hand (benchlib.naive_slice); batches remapped by lookup.

Cases: folders (packaged fixtures) e5 and MiniLM sequence classification (5 BBC News classes)
and SmolLM2 causal LM (the articles packed into rows of the case's length); large-vocabulary
causal LMs built from configs (Gemma-3-270m and Qwen3-0.6B shapes, as gpu_memory.py), fed BBC
News ids from the e5 tokenizer (benchmarks/data/bbc_e5_ids.npz; an id >= the vocabulary enters
as id % vocab_size, Qwen3); encoder-decoders built from configs (the NLLB-200 distilled 600M
translation shape, 256,206 ids, sources and targets from the same ids; the Whisper small shape,
random 30 s log-mel features to BBC News ids). The kept vocabulary: every id BBC News uses at
the case's length (classification), in the whole corpus (causal LMs, encoder-decoders), plus the
specials (encoder-decoders: every token id the config names).

Per run: median step time after the warm-up, peak RSS (VmHWM), bytes of weights + gradients +
optimizer states after the first step, load time, the load average at start and end (and
CUDA's peak where present). Per method: median and range (min-max) over repetitions, ratios of
medians to full and to the oracle, and a verdict against each: "tie" when the two ranges
overlap, else "lower" / "higher". Results: benchmarks/results/train_compare_<case>.json.
`main(argv) -> dict` (run.py: `--only train_compare`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib as bl  # noqa: E402

RESULTS = HERE / "results"
METHODS = ("full", "pruned", "oracle", "peft_tt", "naive")
# Variants of vocabprune, run where a case asks for them (Case.extra):
# - pruned_kept_ids: ids="kept", the batches remapped to kept ids by a table lookup beforehand
#   (the data-side remap): against "pruned" it prices the in-model lookup of original ids;
# - pruned_chunked: vp.chunked_loss, the causal-LM loss computed over the kept columns in tiles
#   (the [tokens x kept] logits never all held); records |chunked - unchunked loss| too.
# - frozen: prune(output="frozen") + chunked_loss, the full softmax with the dropped rows frozen
#   (no gradient, no optimizer state) in tiles: full fine-tuning's gradients at pruned memory.
VARIANTS = ("pruned_kept_ids", "pruned_chunked", "frozen")
# The run fields the summary compares (lower is better for all), and their labels.
METRICS = {
    "median_step_seconds": "median step s",
    "peak_rss_bytes": "peak RSS",
    "state_bytes_total": "w+g+opt bytes",
    "cuda_max_memory_allocated_bytes": "CUDA max allocated",
}


@dataclass(frozen=True)
class Case:
    """A model (a fixture folder or a benchlib shape), an objective and a batch shape."""

    model: str  # "e5", "minilm", "smollm2" (folders), a benchlib.SHAPES or ENCODER_DECODERS name
    task: str  # "classify", "causal", "seq2seq" (ids -> ids) or "speech" (audio -> ids)
    max_length: int
    batch_size: int
    methods: tuple[str, ...] = METHODS


CHUNK = ("pruned", "pruned_chunked", "oracle")
# Models built from configs: the naive slice of a random model is the oracle's tensors plus a
# moment of both matrices; the issue's comparison is full / vocabprune / oracle / PEFT.
SHAPE = ("full", "pruned", "oracle", "peft_tt")
CASES: dict[str, Case] = {
    "e5_128": Case("e5", "classify", 128, 16, (*METHODS, "pruned_kept_ids")),
    "e5_512": Case("e5", "classify", 512, 4),
    "minilm_128": Case("minilm", "classify", 128, 16),
    "smollm2_256": Case("smollm2", "causal", 256, 8, (*METHODS, "pruned_kept_ids")),
    "gemma3_256": Case("gemma3-270m", "causal", 256, 4, SHAPE),
    "gemma3_1024": Case("gemma3-270m", "causal", 1024, 1, (*SHAPE, "pruned_chunked")),
    "qwen3_256": Case("qwen3-0.6b", "causal", 256, 4, SHAPE),
    "qwen3_1024": Case("qwen3-0.6b", "causal", 1024, 1, SHAPE),
    # The logits' memory: chunked against unchunked loss at long sequences.
    "smollm2_1024": Case("smollm2", "causal", 1024, 1, CHUNK),
    "smollm2_4x1024": Case("smollm2", "causal", 1024, 4, CHUNK),
    "gemma3_4x1024": Case("gemma3-270m", "causal", 1024, 4, CHUNK),
    # Encoder-decoders users fine-tune on small budgets (issue 19): a 256k-id translation model
    # and Whisper small (30 s of audio -> the case's length of target ids).
    "nllb600m_128": Case("nllb-600m", "seq2seq", 128, 2, ("full", "pruned", "oracle")),
    "whisper_small_128": Case("whisper-small", "speech", 128, 2, ("full", "pruned", "oracle")),
    # Smoke runs only.
    "tiny_gemma3": Case("gemma3-tiny", "causal", 32, 2, (*METHODS, *VARIANTS)),
    "tiny_qwen3": Case("qwen3-tiny", "causal", 32, 2),
    "tiny_nllb": Case("nllb-tiny", "seq2seq", 32, 2, ("full", "pruned", "oracle")),
    "tiny_whisper": Case("whisper-tiny-shape", "speech", 32, 2, ("full", "pruned", "oracle")),
}
_NLLB_600M = {  # facebook/nllb-200-distilled-600M: shared embedding tied to the head
    "vocab_size": 256_206,
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "max_position_embeddings": 1024,
    "scale_embedding": True,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    # The checkpoint's own values (M2M100Config's defaults are 0.05): with layerdrop, training
    # skips random layers, and which ones depends on the RNG state each method's build leaves.
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
}
_WHISPER_SMALL = {  # openai/whisper-small: decoder embedding tied to proj_out
    "vocab_size": 51_865,
    "d_model": 768,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "pad_token_id": 50_257,
    "bos_token_id": 50_257,
    "eos_token_id": 50_257,
    "decoder_start_token_id": 50_258,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
}
_SMALL = {"d_model": 32, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "encoder_layers": 2}
_SMALL |= {"decoder_layers": 2, "encoder_attention_heads": 2, "decoder_attention_heads": 2}
# name -> (model class, config class, config): built from the config, random weights.
ENCODER_DECODERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "nllb-600m": ("M2M100ForConditionalGeneration", "M2M100Config", _NLLB_600M),
    "whisper-small": ("WhisperForConditionalGeneration", "WhisperConfig", _WHISPER_SMALL),
    "nllb-tiny": ("M2M100ForConditionalGeneration", "M2M100Config", _NLLB_600M | _SMALL),
    "whisper-tiny-shape": (
        "WhisperForConditionalGeneration",
        "WhisperConfig",
        _WHISPER_SMALL | _SMALL | {"num_mel_bins": 8, "max_source_positions": 64},
    ),
}
# The batch keys that hold token ids, per task (the oracle's batches are remapped to kept ids).
ID_KEYS = {
    "classify": ("input_ids",),
    "causal": ("input_ids", "labels"),
    "seq2seq": ("input_ids", "labels"),
    "speech": ("labels",),
}
REAL_CASES = tuple(c for c in CASES if not c.startswith("tiny_"))
FOLDERS = {"e5": "e5_path", "minilm": "minilm_path", "smollm2": "smollm2_path"}


def log(msg: str) -> None:
    print(f"[train_compare] {msg}", file=sys.stderr, flush=True)


# -- one run, in its own process ------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Prepare the data, load or build the model for one method, train and measure."""
    import torch

    import vocabprune as vp

    loadavg_start = bl.start_child(spec)
    case = Case(**{**spec["case"], "methods": tuple(spec["case"]["methods"])})
    method = spec["method"]
    count = spec["warmup"] + spec["steps"]
    if case.model in FOLDERS:
        batches, kept, load = _folder_case(case, spec["path"], count)
    elif case.model in ENCODER_DECODERS:
        batches, kept, load = _encoder_decoder_case(case, count)
    else:
        batches, kept, load = _shape_case(case, count)
    if method in ("oracle", "naive", "pruned_kept_ids"):  # these models read kept ids
        for b in batches:
            for key in ID_KEYS[case.task]:
                b[key] = bl.lookup(kept, b[key])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = bl.rss_now_bytes()
    t0 = time.perf_counter()
    model = load(method)
    if method == "peft_tt":
        model = bl.peft_trainable_tokens(model, kept.kept_ids)
    elif method == "naive":
        model = bl.naive_slice(model, kept)
    elif method in ("pruned_chunked", "frozen"):
        vp.chunked_loss(model)
    load_s = time.perf_counter() - t0
    rss_after_load = bl.rss_now_bytes()
    model.to(device)
    run = bl.train_steps(model, batches, spec["steps"], warmup=spec["warmup"])
    peak_rss = bl.peak_rss_bytes()  # before the loss check below runs its extra forwards
    state = run.pop("bytes")
    if method == "pruned_chunked":
        run.update(_chunked_loss_diff(model, kept, batches[0], device))
    run.update(
        method=method,
        kept_ids=kept.size,
        vocab_size=kept.vocab_size,
        embedding_rows=int(model.get_input_embeddings().weight.shape[0]),
        load_seconds=round(load_s, 3),
        rss_before_model_bytes=rss_before,
        rss_after_load_bytes=rss_after_load,
        peak_rss_bytes=peak_rss,
        state_bytes=state,
        state_bytes_total=state["total"],
        loadavg_start=loadavg_start,
        loadavg_end=bl.load_average(),
        device=str(device),
        torch=torch.__version__,
    )
    if cuda:
        run["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return run


def _chunked_loss_diff(
    model: Any, kept: Any, batch: dict[str, Any], device: Any
) -> dict[str, float]:
    """|chunked - unchunked loss| on one batch, the same weights, and each one's distance from
    the loss computed in float64 from the same hidden states (which of the two is rounding)."""
    import torch

    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    chunked = float(model(**batch).loss.detach())  # training with labels: the tiled loss
    with torch.no_grad():  # no gradients: the model's own forward and loss
        plain = float(model(**batch).loss)
        hidden = model.base_model(input_ids=batch["input_ids"]).last_hidden_state[:, :-1]
        labels = batch["labels"][:, 1:].cpu()  # original ids -> kept columns, as the oracle's
        targets = torch.where(labels < 0, -100, bl.lookup(kept, labels.clamp(min=0))).to(device)
        logits = hidden.double() @ model.get_output_embeddings().weight.double().t()
        cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        reference = float(
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        )
    return {
        "chunked_loss_abs_diff": abs(chunked - plain),
        "chunked_loss_float64_diff": abs(chunked - reference),
        "plain_loss_float64_diff": abs(plain - reference),
    }


def _folder_case(case: Case, path: str, count: int) -> tuple[list[dict], Any, Any]:
    """A fixture folder: tokenized BBC News batches, the kept vocabulary, a loader per method."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    import vocabprune as vp

    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, labels = bl.bbc_news()
    batch, length = case.batch_size, case.max_length
    if case.task == "classify":
        auto, kwargs = AutoModelForSequenceClassification, {"num_labels": 5}

        def encode(chunk: list[str]) -> dict[str, torch.Tensor]:
            enc = tokenizer(
                chunk, truncation=True, max_length=length, padding=True, return_tensors="pt"
            )
            return dict(enc)

        batches = bl.make_batches(encode, texts, labels, batch, count)
        config = AutoConfig.from_pretrained(path, **kwargs)
        counts = vp.count_texts(
            tokenizer, texts, max_length=length, vocab_size=config.vocab_size, progress=False
        )
    else:  # causal LM: the articles packed one after another (eos between), cut into rows
        import numpy as np

        auto, kwargs = AutoModelForCausalLM, {}
        config = AutoConfig.from_pretrained(path)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        enc = [ids + eos for ids in tokenizer(texts)["input_ids"]]
        stream = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in enc])
        rows = torch.as_tensor(bl.packed_rows(stream, batch * count, length))
        batches = []
        for i in range(count):
            ids = rows[i * batch : (i + 1) * batch]
            batches.append({"input_ids": ids, "labels": ids.clone()})
        counts = vp.count_token_ids(enc, config.vocab_size)  # the whole corpus
    kept = vp.KeptVocab.from_counts(
        counts,
        tokenizer=tokenizer,
        vocab_size=config.vocab_size,
        extra_ids=bl.config_token_ids(config),
    )

    def load(method: str) -> Any:
        if method == "frozen":  # the dropped rows are read, once, from the loaded model
            model = auto.from_pretrained(path, **kwargs)
            vp.prune(model, kept, output="frozen")
            return model
        if method.startswith("pruned"):
            ids = "kept" if method == "pruned_kept_ids" else "original"
            return vp.load_pruned(auto, path, kept, ids=ids, **kwargs)
        if method == "oracle":
            return auto.from_config(bl.oracle_config(config, kept))
        return auto.from_pretrained(path, **kwargs)

    return batches, kept, load


def _shape_case(case: Case, count: int) -> tuple[list[dict], Any, Any]:
    """A shape built from its config, fed packed BBC News e5 ids (id % vocab_size)."""
    import torch

    import vocabprune as vp

    shape = bl.SHAPES[case.model]
    flat, _, _ = bl.load_ids()
    config = bl.build_config(shape)
    data = bl.corpus_ids(flat, shape.vocab_size, shape.corpus_tokens, pad_id=config.pad_token_id)
    kept = bl.kept_vocab(data, shape.vocab_size, config)
    rows = torch.as_tensor(bl.packed_rows(data, case.batch_size * count, case.max_length))
    batches = []
    for i in range(count):
        ids = rows[i * case.batch_size : (i + 1) * case.batch_size]
        batches.append({"input_ids": ids, "labels": ids.clone()})

    def load(method: str) -> Any:
        if method == "oracle":
            return bl.build_model(bl.build_config(shape, kept=kept), shape.model_class)
        model = bl.build_model(config, shape.model_class)
        if method == "frozen":
            vp.prune(model, kept, output="frozen")
        elif method.startswith("pruned"):  # the restricted head, where there is one
            head = "prune" if model.get_output_embeddings() is not None else "auto"
            ids = "kept" if method == "pruned_kept_ids" else "original"
            vp.prune(model, kept, ids=ids, output=head)
        return model

    return batches, kept, load


def _encoder_decoder_case(case: Case, count: int) -> tuple[list[dict], Any, Any]:
    """An encoder-decoder built from its config. seq2seq: packed BBC News e5 ids (id %
    vocab_size) as sources, the rows after them as targets; speech: random log-mel features
    (30 s at whisper's frame rate) and BBC News ids as targets. The kept vocabulary: every id
    the data uses plus every token id the config names (vocabprune's rule, core/configs.py)."""
    import copy

    import torch
    import transformers

    import vocabprune as vp
    from vocabprune.core.configs import config_token_ids, token_id_attrs

    model_class, config_class, values = ENCODER_DECODERS[case.model]
    config = getattr(transformers, config_class)(
        **values, use_cache=False, attn_implementation="sdpa"
    )
    vocab = config.vocab_size
    flat, _, _ = bl.load_ids()
    data = bl.corpus_ids(flat, vocab, pad_id=config.pad_token_id)
    model_of = type("Configured", (), {"config": config})  # what config_token_ids reads
    kept = vp.KeptVocab.from_counts(
        vp.count_token_ids([data], vocab), vocab_size=vocab, extra_ids=config_token_ids(model_of)
    )
    rows = torch.as_tensor(bl.packed_rows(data, 2 * case.batch_size * count, case.max_length))
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        src, tgt = rows[2 * i * case.batch_size :].split(case.batch_size)[:2]
        if case.task == "speech":
            frames = 2 * config.max_source_positions
            features = torch.randn(
                case.batch_size, config.num_mel_bins, frames, generator=generator
            )
            batches.append({"input_features": features, "labels": tgt.clone()})
        else:
            batches.append({"input_ids": src.clone(), "labels": tgt.clone()})

    def oracle_config() -> Any:
        small = copy.deepcopy(config)
        small.vocab_size = kept.size
        for attr in token_id_attrs(small):
            value = getattr(small, attr)
            if isinstance(value, int) and value >= 0:
                setattr(small, attr, kept.new_id(value))
        return small

    def load(method: str) -> Any:
        if method == "oracle":
            return bl.build_model(oracle_config(), model_class)
        model = bl.build_model(config, model_class)
        if method.startswith("pruned"):  # the restricted head (the oracle's)
            ids = "kept" if method == "pruned_kept_ids" else "original"
            vp.prune(model, kept, ids=ids, output="prune")
        return model

    return batches, kept, load


# -- the driver -----------------------------------------------------------------------------------


def compare(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Every method `--reps` times, interleaved, each in a new interpreter; the summary."""
    path = None
    if case.model in FOLDERS:
        import vocabprune.fixtures as fx

        path = str(getattr(fx, FOLDERS[case.model])())  # converted once, before any timing
    methods = [m for m in (args.methods or ",".join(case.methods)).split(",") if m]
    spec = {
        "case": asdict(case),
        "path": path,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "device": args.device,
    }
    result: dict[str, Any] = {
        "benchmark": "train_compare",
        "case": name,
        **asdict(case),
        "model_path": path,
        "methods": methods,
        "reps": args.reps,
        "steps": args.steps,
        "warmup": args.warmup,
        "machine": bl.machine_info(),
        "loadavg_start": bl.load_average(),
        "runs": {m: [] for m in methods},
    }
    total = args.reps * len(methods)
    for rep in range(args.reps):
        for j, method in enumerate(methods):
            t0 = time.monotonic()
            run = bl.run_fresh(
                "train_compare:child", {**spec, "method": method}, timeout=args.timeout
            )
            run["rep"] = rep
            result["runs"][method].append(run)
            done = rep * len(methods) + j + 1
            if "error" in run:
                log(f"{name} {done}/{total} {method}: {run['error'][:200]}")
            else:
                log(
                    f"{name} {done}/{total} {method}: {run['median_step_seconds']:.3f} s/step, "
                    f"peak RSS {run['peak_rss_bytes'] / 2**20:,.0f} MiB, "
                    f"w+g+opt {run['state_bytes_total'] / 2**20:,.0f} MiB, load "
                    f"{run['loadavg_start'][0]}->{run['loadavg_end'][0]} "
                    f"({time.monotonic() - t0:.0f} s)"
                )
    result["loadavg_end"] = bl.load_average()
    result["summary"] = summarize(result["runs"])
    return result


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per method and metric: median, range, and against full, the oracle and vocabprune the
    ratio of medians (`over_<ref>`) and the verdict (`vs_<ref>`: tie when the ranges overlap)."""
    spreads = {
        m: {k: bl.spread([r.get(k) for r in rs if "error" not in r]) for k in METRICS}
        for m, rs in runs.items()
    }
    out: dict[str, Any] = {}
    for method, by_metric in spreads.items():
        entry: dict[str, Any] = {
            "runs_ok": sum("error" not in r for r in runs[method]),
            "errors": [r["error"] for r in runs[method] if "error" in r],
        }
        for metric, sp in by_metric.items():
            if not sp.values:
                continue
            item = sp.to_dict()
            for ref in ("full", "oracle", "pruned"):
                other = spreads.get(ref, {}).get(metric)
                if other is None or not other.values or ref == method:
                    continue
                item[f"over_{ref}"] = bl.ratio(sp.median, other.median)
                item[f"vs_{ref}"] = bl.verdict(sp, other)
            entry[metric] = item
        out[method] = entry
    return out


def markdown_table(result: dict[str, Any]) -> list[str]:
    """One row per method: medians, ranges, ratios and verdicts (also used by run.py)."""
    lines = [
        f"{result['case']}: {result['model']} {result['task']}, {result['max_length']} × "
        f"{result['batch_size']}, {result['reps']} repetitions of {result['steps']} timed steps "
        f"(after {result['warmup']} warm-up); load average {result.get('loadavg_start')} → "
        f"{result.get('loadavg_end')}.",
        "",
        "| method | runs | step s median [min–max] | /full | /oracle | vs full | vs oracle | "
        "peak RSS MiB median [min–max] | /full | /oracle | vs full | vs oracle | "
        "w+g+opt MiB | /oracle |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for method, entry in result.get("summary", {}).items():
        step = entry.get("median_step_seconds", {})
        rss = entry.get("peak_rss_bytes", {})
        state = entry.get("state_bytes_total", {})
        if not step:
            errors = "; ".join(entry.get("errors", []))[:80]
            lines.append(f"| {method} | 0 | error: {errors} |||||||||||")
            continue
        lines.append(
            f"| {_label(method)} | {entry['runs_ok']} | {_range(step, 1, '.3f')} | "
            f"{_f(step.get('over_full'))} | {_f(step.get('over_oracle'))} | "
            f"{step.get('vs_full', '–')} | {step.get('vs_oracle', '–')} | "
            f"{_range(rss, 2**20, ',.0f')} | {_f(rss.get('over_full'))} | "
            f"{_f(rss.get('over_oracle'))} | {rss.get('vs_full', '–')} | "
            f"{rss.get('vs_oracle', '–')} | {_f((state.get('median') or 0) / 2**20, ',.0f')} | "
            f"{_f(state.get('over_oracle'))} |"
        )
    return lines + _variant_lines(result)


def _variant_lines(result: dict[str, Any]) -> list[str]:
    """The vocabprune variants against vocabprune itself (ratio of medians, verdict)."""
    lines = []
    for method in VARIANTS:
        entry = result.get("summary", {}).get(method, {})
        step, rss = entry.get("median_step_seconds"), entry.get("peak_rss_bytes")
        if not step or not rss:
            continue
        text = (
            f"{_label(method)} / vocabprune: step time {_f(step.get('over_pruned'))} "
            f"({step.get('vs_pruned')}), peak RSS {_f(rss.get('over_pruned'))} "
            f"({rss.get('vs_pruned')})"
        )
        runs = result["runs"].get(method, [])
        diffs = [r["chunked_loss_abs_diff"] for r in runs if "chunked_loss_abs_diff" in r]
        if diffs:
            text += f"; |chunked - unchunked loss| at most {max(diffs):.2e}"
        exact = [r for r in runs if "chunked_loss_float64_diff" in r]
        if exact:
            chunk = max(r["chunked_loss_float64_diff"] for r in exact)
            plain = max(r["plain_loss_float64_diff"] for r in exact)
            text += f" (from the float64 loss: chunked {chunk:.1e}, unchunked {plain:.1e})"
        lines.append(f"- {text}.")
    return ["", *lines] if lines else []


def _label(method: str) -> str:
    return {
        "pruned_kept_ids": "vocabprune, ids remapped in the data",
        "pruned_chunked": "vocabprune + chunked loss",
        "pruned": "**vocabprune** (restricted softmax)",
        "frozen": "vocabprune, frozen head (full softmax, tiled)",
        "peft_tt": "PEFT TrainableTokens",
    }.get(method, method)


def _f(x: Any, fmt: str = ".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "–"


def _range(item: dict[str, Any], scale: float, fmt: str) -> str:
    if item.get("median") is None:
        return "–"
    lo, hi = item["min"] / scale, item["max"] / scale
    return f"{item['median'] / scale:{fmt}} [{lo:{fmt}}–{hi:{fmt}}]"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--case", default="all", help="comma-separated case names, or all")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument(
        "--methods",
        help=f"comma-separated, of {', '.join((*METHODS, *VARIANTS))} (default: the case's)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions of every method")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch-size", type=int, help="override the case's batch size")
    p.add_argument("--max-length", type=int, help="override the case's sequence length")
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--out", type=Path, help="output file (one case only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the cases; write results/train_compare_<case>.json each; return {case: result}."""
    args = parse(argv)
    if args.list:
        for name, case in CASES.items():
            print(
                f"{name:12s} {case.model:12s} {case.task:9s} {case.max_length} x {case.batch_size}"
            )
        return {}
    names = list(REAL_CASES) if args.case == "all" else [c for c in args.case.split(",") if c]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if args.out and len(names) != 1:
        raise SystemExit("--out takes one case")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {}
    for name in names:
        case = CASES[name]
        overrides = {"batch_size": args.batch_size, "max_length": args.max_length}
        case = Case(**{**asdict(case), **{k: v for k, v in overrides.items() if v}})
        result = compare(name, case, args)
        target = args.out or RESULTS / f"train_compare_{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2))
        log(f"wrote {target}")
        print("\n".join(markdown_table(result)) + "\n")
        results[name] = result
    return results


if __name__ == "__main__":
    main()
