"""ONNX export of a standalone compact model, laid out as ONNX Runtime, optimum and
transformers.js expect: `onnx/model.onnx` (+ `onnx/model_quantized.onnx` with int8 dynamic
quantization), `config.json`, and the rewritten `tokenizer.json` of the standalone export.

Two kinds of graph:

- encoders (feature extraction, sequence classification, masked LM): inputs `input_ids`,
  `attention_mask` (and `token_type_ids` where the tokenizer makes them); output
  `last_hidden_state` (a base model) or `logits` (a model with a head);
- causal LMs, incremental: inputs `input_ids`, `attention_mask`, `position_ids`,
  `past_key_values.N.key` / `.value` ([batch, kv heads, past, head dim]; empty at the first
  step); outputs `logits` and `present.N.key` / `.value` (the cache grown by the new tokens).

The graph is traced with torch's TorchScript exporter (`torch.onnx.export(dynamo=False)`): on
the models here it exports in seconds where the torch.export-based one takes minutes, and every
export is checked against the PyTorch model at other shapes than it was traced with (batch,
length, past length, left padding) before the folder is renamed into place, so a trace that
baked in a shape is an aborted export, never a wrong file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError
from vocabprune.core.files import atomic_dir
from vocabprune.deploy.manifest import MANIFEST, read_manifest
from vocabprune.deploy.sentence_files import copy_sentence_transformers_files

ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
OPSET = 17
# The export aborts beyond this error relative to each output's scale (max(1, max |output|)):
# LM logits reach 30 and more, where fp32 kernels differ by ~1e-5 relative. Tests hold real text
# to 1e-5 (absolute for encoders, relative for logits).
CHECK_TOLERANCE = 1e-4
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def require_onnx() -> None:
    """onnx and onnxruntime are an extra: one clear line when they are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise VocabPruneError(
            f"ONNX export needs the onnx extra ({exc.name} is missing): "
            "pip install 'vocabprune[onnx]'"
        ) from exc


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForCausalLM")


def _head_dims(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder's KV cache."""
    config = getattr(config, "get_text_config", lambda: config)()
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), kv_heads, head_dim


class _CausalGraph(nn.Module):
    """A causal LM as a function of flat tensors: (ids, mask, positions, past k/v ...) ->
    (logits, present k/v ...), the cache rebuilt as a transformers DynamicCache."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        import inspect

        super().__init__()
        self.model = model
        self.layers = layers
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache()  # full layers: a sliding window is applied by the mask
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_arg: cache},
        )
        grown = out.get("cache", None) or out.get("past_key_values", None)
        present: list[torch.Tensor] = []
        for layer in grown.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class _EncoderGraph(nn.Module):
    """An encoder as a function of its named inputs -> its main output."""

    def __init__(self, model: nn.Module, names: Sequence[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.output = output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=True)
        return getattr(out, self.output)  # type: ignore[no-any-return]


def _encoder_inputs(model: nn.Module, input_names: Sequence[str] | None) -> list[str]:
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    names = ["input_ids", "attention_mask"]
    wanted = input_names if input_names is not None else ("token_type_ids",)
    if "token_type_ids" in wanted and "token_type_ids" in accepted:
        names.append("token_type_ids")
    return names


# Encoder heads: class-name suffix -> the task name optimum gives it (output "logits").
ENCODER_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForMaskedLM": "fill-mask",
    "ForTokenClassification": "token-classification",
}


def _encoder_task(model: nn.Module) -> str:
    name = type(model).__name__
    return next((t for s, t in ENCODER_TASKS.items() if name.endswith(s)), "feature-extraction")


def _ids(vocab: int, batch: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, max(4, vocab), (batch, length), generator=generator)


def _left_padded_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, : length // 3] = 0  # row 0 left-padded: the masks must not be traced as constants
    return mask


class Graph:
    """What is exported: the traceable module, its input/output names, dynamic axes, and how to
    make sample inputs (for tracing and for the check)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str] | None = None) -> None:
        self.model = model
        self.vocab = int(model.get_input_embeddings().weight.shape[0])
        self.causal = is_causal_lm(model)
        if self.causal:
            self.layers, self.kv_heads, self.head_dim = _head_dims(model.config)
            self.past_names = [
                f"past_key_values.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")
            ]
            present = [n.replace("past_key_values", "present") for n in self.past_names]
            self.inputs = ["input_ids", "attention_mask", "position_ids", *self.past_names]
            self.outputs = ["logits", *present]
            self.task = "text-generation-with-past"
            self.module: nn.Module = _CausalGraph(model, self.layers)
        else:
            self.inputs = _encoder_inputs(model, input_names)
            self.task = _encoder_task(model)
            self.outputs = ["last_hidden_state" if self.task == "feature-extraction" else "logits"]
            self.module = _EncoderGraph(model, self.inputs, self.outputs[0])
        # The exporter restores the wrapper's training flag after tracing, and a new module is
        # in training mode: keep it (and so the model) in eval, or dropout runs in the check.
        self.module.eval()

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for name in self.inputs:
            if name.startswith("past_key_values"):
                axes[name] = {0: "batch_size", 2: "past_sequence_length"}
            elif name == "attention_mask" and self.causal:
                axes[name] = {0: "batch_size", 1: "total_sequence_length"}
            else:
                axes[name] = {0: "batch_size", 1: "sequence_length"}
        for name in self.outputs:
            if name.startswith("present"):
                axes[name] = {0: "batch_size", 2: "total_sequence_length"}
            elif self.task == "text-classification":  # [batch, labels]
                axes[name] = {0: "batch_size"}
            else:
                axes[name] = {0: "batch_size", 1: "sequence_length"}
        return axes

    def sample(self, batch: int, length: int, past: int, seed: int) -> dict[str, torch.Tensor]:
        """Inputs by name: random ids, row 0 left-padded, a random cache of `past` tokens."""
        ids = _ids(self.vocab, batch, length, seed)
        if not self.causal:
            feed = {"input_ids": ids, "attention_mask": _left_padded_mask(batch, length)}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = torch.zeros_like(ids)
            return feed
        mask = _left_padded_mask(batch, past + length)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        generator = torch.Generator().manual_seed(seed + 1)
        dtype = self.model.get_input_embeddings().weight.dtype
        for name in self.past_names:
            shape = (batch, self.kv_heads, past, self.head_dim)
            feed[name] = torch.randn(shape, generator=generator, dtype=dtype)
        return feed

    def reference(self, feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = self.module(*(feed[n] for n in self.inputs))
        return list(out) if isinstance(out, tuple) else [out]


def _export_graph(graph: Graph, path: Path, opset: int) -> None:
    sample = graph.sample(batch=2, length=3, past=2, seed=0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(
            graph.module,
            tuple(sample[n] for n in graph.inputs),
            str(path),
            input_names=graph.inputs,
            output_names=graph.outputs,
            dynamic_axes=graph.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime CPU session of `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(
    graph: Graph, path: Path, cases: Sequence[tuple[int, int, int]]
) -> tuple[float, float]:
    """(absolute, relative) largest |ONNX Runtime - PyTorch| over every output at the given
    (batch, length, past) shapes, at the positions the attention mask keeps (padded positions
    are don't-care); relative: each output's error over max(1, its largest magnitude)."""
    sess = session(path)
    worst = worst_relative = 0.0
    for seed, (batch, length, past) in enumerate(cases, start=1):
        feed = graph.sample(batch, length, past, seed)
        want = graph.reference(feed)
        got = sess.run(graph.outputs, {n: feed[n].numpy() for n in graph.inputs})
        keep = feed["attention_mask"].bool()
        for name, ref, out in zip(graph.outputs, want, got, strict=True):
            diff = (torch.from_numpy(out) - ref).abs()
            if name.startswith("present"):
                diff = diff.transpose(1, 2)[keep]  # [batch, total, heads, dim] -> kept tokens
            elif diff.ndim >= 3:  # per token: [batch, length, ...]
                diff = diff[keep[:, -length:]]
            if diff.numel():
                worst = max(worst, float(diff.max()))
                scale = max(1.0, float(ref.abs().max()))
                worst_relative = max(worst_relative, float(diff.max()) / scale)
    return worst, worst_relative


CHECK_CASES = ((1, 5, 0), (3, 4, 6), (1, 1, 9))


def write_onnx(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    quantize: bool = False,
    input_names: Sequence[str] | None = None,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Write `folder/onnx/model.onnx` (and the int8 `model_quantized.onnx`) for a stock
    transformers model, checked against it; returns what was written and the measured error."""
    require_onnx()
    model.eval()
    graph = Graph(model, input_names)
    target = Path(folder) / ONNX_DIR
    target.mkdir(parents=True, exist_ok=True)
    path = target / MODEL_FILE
    try:
        _export_graph(graph, path, opset)
    except Exception as exc:  # another library's tracer: one line naming the model
        raise UnsupportedModelError(
            f"could not export {type(model).__name__} to ONNX: {str(exc).splitlines()[0]}"
        ) from exc
    cases = CHECK_CASES if graph.causal else tuple((b, n, 0) for b, n, _ in CHECK_CASES)
    error, relative = max_difference(graph, path, cases)
    if not relative <= CHECK_TOLERANCE:
        raise VocabPruneError(
            f"the ONNX graph of {type(model).__name__} differs from the PyTorch model by "
            f"{relative:.2e} of an output's scale (> {CHECK_TOLERANCE:g}); export aborted"
        )
    report: dict[str, Any] = {
        "task": graph.task,
        "files": [f"{ONNX_DIR}/{MODEL_FILE}"],
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "opset": opset,
        "max_abs_difference": error,
        "max_relative_difference": relative,
        "onnx_bytes": path.stat().st_size,
    }
    if quantize:
        report.update(_quantize(graph, path, target / QUANTIZED_FILE, cases))
        report["files"].append(f"{ONNX_DIR}/{QUANTIZED_FILE}")
    return report


def _quantize(graph: Graph, src: Path, dst: Path, cases: Sequence[tuple[int, int, int]]) -> dict:
    """int8 dynamic quantization of the weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales: MiniLM's mean-pooled embeddings stay at cosine >= 0.99 of fp32
    # (per-tensor: 0.95), at the same size.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return {
        "quantized": "int8 dynamic (onnxruntime quantize_dynamic: QInt8 weights, per channel)",
        "quantized_max_abs_difference": max_difference(graph, dst, cases)[0],
        "quantized_bytes": dst.stat().st_size,
    }


# -- folders ----------------------------------------------------------------------------------


def _load_folder(folder: Path) -> nn.Module:
    from vocabprune.core.loaders import load_config, load_model, model_class, model_kwargs

    cls = model_class(load_config(str(folder)))
    return load_model(cls, str(folder), **model_kwargs(cls, folder))  # type: ignore[no-any-return]


def _tokenizer_inputs(folder: Path) -> list[str] | None:
    """The tokenizer's model_input_names (which of token_type_ids the graph takes)."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        names = json.loads(config.read_text(encoding="utf-8")).get("model_input_names")
    except (OSError, ValueError, AttributeError):
        return None
    return list(names) if isinstance(names, list) else None


def convert_folder(
    folder: str | os.PathLike[str], *, quantize: bool = False, keep_weights: bool = False
) -> dict[str, Any]:
    """Turn a stock model folder (a standalone export, or any transformers model) into its ONNX
    layout in place: `onnx/model.onnx` beside config.json and the tokenizer files; the PyTorch
    weights are removed unless `keep_weights`."""
    folder = Path(folder)
    model = _load_folder(folder)
    report = write_onnx(model, folder, quantize=quantize, input_names=_tokenizer_inputs(folder))
    del model
    if not keep_weights:
        for name in WEIGHT_FILES:
            (folder / name).unlink(missing_ok=True)
    return report


def export_onnx(
    model_or_folder: Any,
    out: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    kept: Any = None,
    quantize: bool = False,
    overwrite: bool = False,
    keep_weights: bool = False,
    sentence_transformers: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write an ONNX folder (`onnx/model.onnx`, config.json, tokenizer files) to `out`.

    `model_or_folder` is either a model (full, or pruned with `kept`) with its original
    `tokenizer` and the kept vocabulary: a standalone export is written (rewritten tokenizer,
    kept rows only) and converted; or a folder: a standalone export or any stock transformers
    model folder, converted as it is (to compare a full model's ONNX with a pruned one's).
    A folder's sentence-transformers files come along, and so do a SentenceTransformer's (as it
    is in memory), or those of the folder `sentence_transformers` names (deploy/sentence_files.py).
    Written atomically; returns the ONNX report (task, inputs, outputs, measured error).
    """
    require_onnx()
    if isinstance(model_or_folder, (str, os.PathLike)):
        import shutil

        source = Path(model_or_folder)
        if not (source / "config.json").is_file():
            raise VocabPruneError(f"{source} is not a model folder (no config.json)")
        if (source / MANIFEST).is_file() and read_manifest(source).get("kind") == "compact":
            raise VocabPruneError(
                f"{source} is a compact export (its model reads remapped ids, its tokenizer is "
                "the original): export with --standalone for ONNX"
            )
        with atomic_dir(out, overwrite=overwrite) as tmp:
            for item in source.iterdir():
                if item.is_file() and (keep_weights or item.name not in WEIGHT_FILES):
                    shutil.copy2(item, tmp / item.name)
            copy_sentence_transformers_files(source, tmp)
            report = write_onnx(
                _load_folder(source), tmp, quantize=quantize, input_names=_tokenizer_inputs(source)
            )
        return report
    if tokenizer is None or kept is None:
        raise VocabPruneError("export_onnx(model, out) needs tokenizer= and kept=")
    from vocabprune.deploy.export import export_pruned

    _, _, report = export_pruned(
        model_or_folder,
        tokenizer,
        kept,
        out,
        standalone=True,
        overwrite=overwrite,
        unknown="unk",
        export_format="onnx",
        quantize=quantize,
        sentence_transformers=sentence_transformers,
    )
    return report["onnx"]  # type: ignore[no-any-return]
