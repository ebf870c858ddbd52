"""Pruning: swap vocabulary-sized Parameters for their kept rows, in place.

We swap Parameters, not modules: the embedding module, its class, padding_idx and any scaling
stay. Tied heads stay tied (one new Parameter for all owners). Config ids and num_embeddings
follow the map while pruned, and `restore` puts everything back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from vocabprune.errors import MismatchError, UnsupportedModelError, VocabPruneError
from vocabprune.restore import restore
from vocabprune.rowstore import find_checkpoint_rows, offload
from vocabprune.state import AttrChange, PrunedState, PrunedTensor, attach, get_state
from vocabprune.vocab import CONFIG_ID_ATTRS, KeptVocab

OutputMode = Literal["auto", "prune", "keep"]


def _model_name(model: nn.Module) -> str:
    return getattr(model, "name_or_path", "") or type(model).__name__


def _owners(model: nn.Module, tensor: torch.Tensor) -> list[tuple[nn.Module, str, str]]:
    """Every (module, attribute, qualified name) that holds this exact tensor."""
    found = []
    for mname, module in model.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for attr, value in table.items():
                if value is tensor:
                    found.append((module, attr, f"{mname}.{attr}" if mname else attr))
    return found


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The model's input embedding, which must be an nn.Embedding (or a subclass)."""
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        raise UnsupportedModelError(
            f"model {_model_name(model)!r} has no get_input_embeddings(): not a transformers model"
        )
    emb = getter()
    if not isinstance(emb, nn.Embedding):
        raise UnsupportedModelError(
            f"model {_model_name(model)!r}: input embedding is {type(emb).__name__}, "
            "not an nn.Embedding; vocabprune can only prune nn.Embedding rows"
        )
    return emb


def _emb_dim(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


def _output_head(model: nn.Module, full_size: int, mode: OutputMode) -> nn.Linear | None:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    if head is None:
        return None
    weight = getattr(head, "weight", None)
    if not isinstance(head, nn.Linear) or weight is None:
        # A head that owns no vocabulary-sized matrix reads the input embedding itself (e.g.
        # DeBERTa-v2 with legacy=False): neither pruning it nor keeping it full can work.
        emb_weight = model.get_input_embeddings().weight
        owns_matrix = any(
            p is not emb_weight and p.ndim >= 1 and p.shape[0] == full_size
            for p in head.parameters()
        )
        if not owns_matrix:
            raise UnsupportedModelError(
                f"model {_model_name(model)!r}: output head {type(head).__name__} multiplies by "
                "the input embedding matrix itself; vocabprune cannot prune this model's "
                "vocabulary (load it without the LM head, e.g. AutoModel)"
            )
        if mode == "keep":
            return None
        raise UnsupportedModelError(
            f"model {_model_name(model)!r}: output head is {type(head).__name__}, not a plain "
            "linear layer over the vocabulary; use output='keep'"
        )
    if weight.shape[0] != full_size and weight.shape[0] == _emb_dim(model):
        # A hidden-to-hidden projection reported as the output head (DeBERTa-v2 legacy=False):
        # the logits come from the input embedding matrix itself.
        raise UnsupportedModelError(
            f"model {_model_name(model)!r}: its output head is a {tuple(weight.shape)} projection "
            "and the logits multiply by the input embedding matrix itself; vocabprune cannot "
            "prune this model's vocabulary (load it without the LM head, e.g. AutoModel)"
        )
    if mode == "keep":
        return None
    if weight.shape[0] != full_size:
        raise UnsupportedModelError(
            f"model {_model_name(model)!r}: output head has {weight.shape[0]} rows but the input "
            f"embedding has {full_size}; cannot prune both with one map (use output='keep')"
        )
    return head


def _vocab_tensors(
    model: nn.Module, emb: nn.Embedding, head: nn.Linear | None, full_size: int
) -> list[tuple[torch.Tensor, int, bool]]:
    """(tensor, axis, is_parameter) for every tensor indexed by vocabulary id."""
    found: list[tuple[torch.Tensor, int, bool]] = [(emb.weight, 0, True)]
    if head is not None:
        found.append((head.weight, 0, True))
        if head.bias is not None:
            found.append((head.bias, 0, True))
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None and "logits_bias" in name and buf.shape[-1] == full_size:
                    found.append((buf, buf.ndim - 1, False))
            for name, par in module._parameters.items():
                if par is not None and "logits_bias" in name and par.shape[-1] == full_size:
                    found.append((par, par.ndim - 1, True))
    unique: dict[int, tuple[torch.Tensor, int, bool]] = {}
    for item in found:
        unique.setdefault(id(item[0]), item)
    return list(unique.values())


def _remap_id(kept: KeptVocab, value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if value < 0:
            return value
        if value not in kept:
            raise MismatchError(
                f"{where} = {value} is not in the kept vocabulary; build the kept vocabulary "
                "with model=... so config ids are always kept"
            )
        return kept.new_id(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_remap_id(kept, v, where) for v in value)
    return value


def _config_changes(model: nn.Module, kept: KeptVocab, resize_vocab: bool) -> list[AttrChange]:
    changes: list[AttrChange] = []
    configs = [
        ("config", getattr(model, "config", None)),
        ("generation_config", getattr(model, "generation_config", None)),
    ]
    for label, cfg in configs:
        if cfg is None:
            continue
        if resize_vocab and getattr(cfg, "vocab_size", None) == kept.vocab_size:
            changes.append(AttrChange(cfg, "vocab_size", kept.vocab_size, kept.size))
        changes.extend(config_id_changes(cfg, kept, label))
    return changes


def config_id_changes(cfg: Any, kept: KeptVocab, label: str) -> list[AttrChange]:
    """The token-id attributes of a config (pad, bos, eos, ...) moved to their kept ids."""
    changes = []
    for attr in CONFIG_ID_ATTRS:
        old = getattr(cfg, attr, None)
        if old is None:
            continue
        new = _remap_id(kept, old, f"{label}.{attr}")
        if new != old:
            changes.append(AttrChange(cfg, attr, old, new))
    return changes


def _module_changes(
    model: nn.Module, kept: KeptVocab, tensors: list[PrunedTensor]
) -> list[AttrChange]:
    changes: list[AttrChange] = []
    pruned_modules = set()
    for tensor in tensors:
        if tensor.axis != 0:
            continue
        for module, attr, _ in tensor.owners:
            if attr != "weight" or id(module) in pruned_modules:
                continue
            pruned_modules.add(id(module))
            if isinstance(module, nn.Embedding):
                changes.append(
                    AttrChange(module, "num_embeddings", module.num_embeddings, kept.size)
                )
                pad = module.padding_idx
                if pad is not None:
                    if pad not in kept:
                        raise MismatchError(
                            f"padding_idx {pad} of {type(module).__name__} is not in the kept "
                            "vocabulary; build it with model=... so the pad id is always kept"
                        )
                    changes.append(AttrChange(module, "padding_idx", pad, kept.new_id(pad)))
            elif isinstance(module, nn.Linear):
                changes.append(AttrChange(module, "out_features", module.out_features, kept.size))
    # Wrapper modules that compare input ids with a cached pad id (RoBERTa-style embeddings use
    # the same number as a position offset, so it cannot follow the map): it must not move.
    for name, module in model.named_modules():
        if id(module) in pruned_modules or isinstance(module, nn.Embedding):
            continue
        pad = module.__dict__.get("padding_idx")
        moved = isinstance(pad, int) and pad in kept and kept.new_id(pad) != pad
        if moved and not isinstance(pad, bool) and _uses_pad_for_positions(module, pad):
            raise UnsupportedModelError(
                f"{name or type(module).__name__} uses pad id {pad} as a position offset and "
                f"the kept vocabulary renumbers it to {kept.new_id(pad)}; keep every id below "
                f"{pad} (extra_ids=range({pad}))"
            )
    return changes


def _uses_pad_for_positions(module: nn.Module, pad: int) -> bool:
    """RoBERTa/MPNet-style embeddings (a position embedding whose padding_idx is the pad id) and
    sinusoidal position modules count positions from the pad id. Decoder stacks (Llama, BART, ...)
    only keep `padding_idx` to build their token embedding: their pad id may move."""
    if "Positional" in type(module).__name__:
        return True
    return any(
        isinstance(child, nn.Embedding) and child.padding_idx == pad and "position" in cname
        for cname, child in module.named_children()
    )


def prune(
    model: nn.Module,
    kept: KeptVocab,
    *,
    output: OutputMode = "auto",
    offload_dir: str | None = None,
) -> PrunedState:
    """Swap the model's vocabulary-sized tensors for their kept rows, in place.

    Prune before creating the optimizer (or Trainer) so it holds the small Parameters.
    output: "auto"/"prune" prune a vocabulary-sized output head too (tied heads stay tied);
    "keep" leaves an untied head full (inputs-only pruning, exact full softmax).
    Returns the state that `restore` consumes (also reachable as vocabprune.get_state(model)).
    """
    if get_state(model) is not None:
        raise VocabPruneError(f"model {_model_name(model)!r} is already pruned; restore it first")
    emb = input_embedding(model)
    full_size = emb.weight.shape[0]
    full_shape = (int(emb.weight.shape[0]), int(emb.weight.shape[1]))
    kept.check_model(model, full_shape=full_shape)
    head = _output_head(model, full_size, output)
    if output == "keep":
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if out is not None and getattr(out, "weight", None) is emb.weight:
            raise UnsupportedModelError(
                f"model {_model_name(model)!r} ties its output head to the input embedding: "
                "inputs-only pruning would untie it; use output='prune'"
            )
    if output == "prune" and head is None:
        raise UnsupportedModelError(f"model {_model_name(model)!r} has no output head to prune")

    # Plan everything first: nothing is changed unless every check passes.
    base_prefix = getattr(model, "base_model_prefix", None)
    folder = getattr(model, "name_or_path", None)
    planned: list[tuple[torch.Tensor, int, bool, list[tuple[nn.Module, str, str]]]] = []
    for tensor, axis, is_param in _vocab_tensors(model, emb, head, full_size):
        owners = _owners(model, tensor)
        if not owners:
            raise UnsupportedModelError(f"tensor of shape {tuple(tensor.shape)} has no owner")
        planned.append((tensor, axis, is_param, owners))
    pruned_tensors = [
        PrunedTensor(
            owners=owners, axis=axis, full_size=full_size, is_parameter=is_param, store=None
        )  # type: ignore[arg-type]
        for _, axis, is_param, owners in planned
    ]
    module_changes = _module_changes(model, kept, pruned_tensors)
    config_changes = _config_changes(model, kept, resize_vocab=head is not None or _no_head(model))

    # Now swap.
    state = PrunedState(
        kept=kept,
        tensors=pruned_tensors,
        full_input_shape=full_shape,
        module_changes=module_changes,
        config_changes=config_changes,
        output_pruned=head is not None,
    )
    for (tensor, axis, is_param, owners), record in zip(planned, pruned_tensors, strict=True):
        qualnames = [q for _, _, q in owners]
        record.store = find_checkpoint_rows(folder, qualnames, tensor, base_prefix) or offload(
            tensor, directory=offload_dir
        )
        small = tensor.detach().index_select(axis, state.index(tensor.device))
        if is_param:
            small = nn.Parameter(small, requires_grad=tensor.requires_grad)
        record.set(small)
    for change in module_changes + config_changes:
        change.apply()
    attach(model, state)
    return state


def _no_head(model: nn.Module) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    return getter is None or getter() is None


@contextlib.contextmanager
def pruned(model: nn.Module, kept: KeptVocab, **kwargs: Any) -> Iterator[PrunedState]:
    """Prune for the duration of a block and restore on the way out, even after an error."""
    state = prune(model, kept, **kwargs)
    try:
        yield state
    finally:
        if get_state(model) is not None:
            restore(model)
