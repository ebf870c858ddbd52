"""The surgery plan: the one place that decides which tensors of a model are indexed by
vocabulary id, who owns them, what else changes with them (module sizes, padding_idx, config
vocab_size and token ids), and performs the swap.

`prune`, `load_pruned`, the compact model that grows rows on demand, and the parameter accounting
all use it. We swap Parameters, not modules: the embedding module, its class, padding_idx
semantics and any scaling stay. Tied tensors are one tensor with several owners and get one new
Parameter, so ties stay ties.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vocabprune.core import hooks
from vocabprune.core.configs import config_tree, vocab_size_attrs
from vocabprune.core.errors import MismatchError, UnsupportedModelError, VocabPruneError
from vocabprune.core.ids import IdRemapper, config_id_updates, required_new_id
from vocabprune.core.model import input_embedding, model_name, output_head, state_owner
from vocabprune.core.rowstore import RowStore
from vocabprune.core.state import AttrChange, Owner, PrunedState, PrunedTensor, attach
from vocabprune.core.vocab import KeptVocab

OutputMode = Literal["auto", "prune", "frozen", "keep"]
OUTPUT_MODES = ("auto", "prune", "frozen", "keep")
IdsMode = Literal["original", "kept"]
LogitsMode = Literal["auto", "kept", "full"]
CONFIG_ID_HINT = "build the kept vocabulary with model=... so config ids are always kept"


# -- which tensors are vocabulary-indexed ---------------------------------------------------------


def owners_of(model: nn.Module, tensor: torch.Tensor) -> list[Owner]:
    """Every (module, attribute, qualified name) that holds this exact tensor."""
    found = []
    for mname, module in model.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for attr, value in table.items():
                if value is tensor:
                    found.append((module, attr, f"{mname}.{attr}" if mname else attr))
    return found


def _vocab_head(model: nn.Module, rows: int, output: OutputMode) -> nn.Linear | None:
    """The output head to prune with the input embedding, None for none (or output='keep').
    Heads vocabprune cannot prune are refused here, before anything changes."""
    if output not in OUTPUT_MODES:
        raise VocabPruneError(f"output must be one of {', '.join(OUTPUT_MODES)}, not {output!r}")
    head = output_head(model)
    if head is None:
        if output == "prune":
            raise UnsupportedModelError(f"model {model_name(model)!r} has no output head to prune")
        return None
    emb_weight = input_embedding(model).weight
    weight = getattr(head, "weight", None)
    if not isinstance(head, nn.Linear) or weight is None:
        # A head that owns no vocabulary-sized matrix reads the input embedding itself (e.g.
        # DeBERTa-v2 with legacy=False): neither pruning it nor keeping it full can work.
        owns_matrix = any(
            p is not emb_weight and p.ndim >= 1 and p.shape[0] == rows for p in head.parameters()
        )
        if not owns_matrix:
            raise UnsupportedModelError(
                f"model {model_name(model)!r}: output head {type(head).__name__} multiplies by "
                "the input embedding matrix itself; vocabprune cannot prune this model's "
                "vocabulary (load it without the LM head, e.g. AutoModel)"
            )
        if output == "keep":
            return None
        raise UnsupportedModelError(
            f"model {model_name(model)!r}: output head is {type(head).__name__}, not a plain "
            "linear layer over the vocabulary; use output='keep'"
        )
    if weight.shape[0] != rows and weight.shape[0] == emb_weight.shape[1]:
        # A hidden-to-hidden projection reported as the output head (DeBERTa-v2 legacy=False):
        # the logits come from the input embedding matrix itself.
        raise UnsupportedModelError(
            f"model {model_name(model)!r}: its output head is a {tuple(weight.shape)} projection "
            "and the logits multiply by the input embedding matrix itself; vocabprune cannot "
            "prune this model's vocabulary (load it without the LM head, e.g. AutoModel)"
        )
    if output == "keep":
        if weight is emb_weight:
            raise UnsupportedModelError(
                f"model {model_name(model)!r} ties its output head to the input embedding: "
                "inputs-only pruning would untie it; use output='prune'"
            )
        return None
    if weight.shape[0] != rows:
        raise UnsupportedModelError(
            f"model {model_name(model)!r}: output head has {weight.shape[0]} rows but the input "
            f"embedding has {rows}; cannot prune both with one map (use output='keep')"
        )
    return head


def resolve_output(
    model: nn.Module, output: OutputMode, *, ids: IdsMode = "original", logits: LogitsMode = "auto"
) -> OutputMode:
    """The one place "auto" is decided. A vocabulary-sized output head (tied or untied) gets the
    frozen head, "frozen": the full softmax, whose training equals full fine-tuning's (the
    restricted softmax measured 23% worse held-out perplexity, issue 21). Two requests only the
    restricted head can meet make "auto" mean "prune": logits="kept" (kept-column logits, said
    nothing more) and ids="kept" (a model reading remapped ids scores kept ids; a one-line
    warning says so). No head: "auto" prunes the input embedding alone. Other modes pass as given.
    """
    if output != "auto":
        return output
    emb = input_embedding(model)
    if _vocab_head(model, int(emb.weight.shape[0]), "auto") is None:
        return "auto"
    if ids == "kept":
        warnings.warn(
            "output='auto' with ids='kept' prunes the head to the kept ids (restricted softmax): "
            "the frozen head reads original ids; pass output='prune' to silence this",
            stacklevel=4,  # the caller of prune() / load_pruned()
        )
        return "prune"
    return "prune" if logits == "kept" else "frozen"


def vocab_tensors(model: nn.Module, *, output: OutputMode = "auto") -> list[PrunedTensor]:
    """Every tensor indexed by vocabulary id: the input embedding and, unless output='keep', a
    vocabulary-sized output head (weight, bias) and `*logits_bias` buffers or parameters.
    Each comes once, with all its owners (no store yet)."""
    emb = input_embedding(model)
    rows = int(emb.weight.shape[0])
    head = _vocab_head(model, rows, output)
    found: list[tuple[torch.Tensor, int, bool]] = [(emb.weight, 0, True)]
    if head is not None:
        found.append((head.weight, 0, True))
        if head.bias is not None:
            found.append((head.bias, 0, True))
        # A frozen head's logits stay over the whole vocabulary: logits biases stay whole.
        for module in model.modules() if output != "frozen" else ():
            for table, is_param in ((module._buffers, False), (module._parameters, True)):
                for name, value in table.items():
                    if value is not None and "logits_bias" in name and value.shape[-1] == rows:
                        found.append((value, value.ndim - 1, is_param))
    unique: dict[int, tuple[torch.Tensor, int, bool]] = {}
    for item in found:
        unique.setdefault(id(item[0]), item)
    tensors = []
    for tensor, axis, is_param in unique.values():
        owners = owners_of(model, tensor)
        if not owners:
            raise UnsupportedModelError(f"tensor of shape {tuple(tensor.shape)} has no owner")
        tensors.append(PrunedTensor(owners, axis, rows, is_param))
    return tensors


# -- what changes with them -----------------------------------------------------------------------


def size_changes(
    model: nn.Module, tensors: Iterable[PrunedTensor], old: int, new: int
) -> list[AttrChange]:
    """Module sizes that follow the row count: Embedding.num_embeddings, Linear.out_features."""
    changes: list[AttrChange] = []
    seen: set[int] = set()
    for tensor in tensors:
        if tensor.axis != 0:
            continue
        for module, attr, _ in tensor.owners:
            if attr != "weight" or id(module) in seen:
                continue
            seen.add(id(module))
            if isinstance(module, nn.Embedding):
                changes.append(AttrChange(module, "num_embeddings", old, new))
            elif isinstance(module, nn.Linear):
                changes.append(AttrChange(module, "out_features", old, new))
    return changes


def config_vocab_change(model: nn.Module, old: int, new: int) -> list[AttrChange]:
    """Every vocabulary size the model's configs hold that describes the rows that change:
    config.vocab_size, sub-configs' (text_config, ...), decoder_vocab_size, the generation
    config's (core/configs.py)."""
    return [
        AttrChange(cfg, attr, old, new)
        for cfg in config_tree(model)
        for attr in vocab_size_attrs(cfg)
        if getattr(cfg, attr) == old
    ]


def module_vocab_changes(model: nn.Module, old: int, new: int) -> list[AttrChange]:
    """The copies of config.vocab_size that modules keep (Gemma 2/3, Mixtral and others copy it
    at construction and reshape their loss by it)."""
    return [
        AttrChange(module, attr, old, new)
        for module in model.modules()
        for attr in vocab_size_attrs(module)
        if module.__dict__[attr] == old
    ]


def _padding_changes(tensors: Iterable[PrunedTensor], kept: KeptVocab) -> list[AttrChange]:
    changes = []
    seen: set[int] = set()
    for tensor in tensors:
        for module, attr, _ in tensor.owners:
            if not (isinstance(module, nn.Embedding) and attr == "weight") or id(module) in seen:
                continue
            seen.add(id(module))
            pad = module.padding_idx
            if pad is None:
                continue
            if pad not in kept:
                raise MismatchError(
                    f"padding_idx {pad} of {type(module).__name__} is not in the kept "
                    "vocabulary; build it with model=... so the pad id is always kept"
                )
            changes.append(AttrChange(module, "padding_idx", pad, kept.new_id(pad)))
    return changes


def config_id_changes(
    model: nn.Module, kept: KeptVocab, rows: int | None = None
) -> list[AttrChange]:
    """The config and generation-config token ids (pad, bos, eos, ...) moved to their kept ids,
    for a model that reads kept ids (ids='kept', compact exports, a pruned model decoding over
    the kept ids: `rows` = its input embedding's, when its configs already give the kept size).
    Refuses a kept vocabulary that would move a pad id the model also uses as a position
    offset."""
    _check_position_offsets(model, kept)
    return _config_id_changes(model, kept, kept.vocab_size if rows is None else rows)


def _config_id_changes(model: nn.Module, kept: KeptVocab, rows: int) -> list[AttrChange]:
    changes = []
    for cfg in config_tree(model, rows):  # sub-configs too: text_config, decoder
        names = {id(getattr(model, n, None)): n for n in ("config", "generation_config")}
        label = names.get(id(cfg), f"config's {type(cfg).__name__}")
        updates = config_id_updates(
            cfg, lambda attr, label=label: required_new_id(kept, f"{label}.{attr}", CONFIG_ID_HINT)
        )
        changes += [AttrChange(cfg, attr, old, new) for attr, old, new in updates]
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


def _check_position_offsets(model: nn.Module, kept: KeptVocab) -> None:
    """Wrapper modules that compare input ids with a cached pad id and use the same number as a
    position offset (RoBERTa) cannot follow the map: refuse a kept vocabulary that moves it."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):  # an embedding's padding_idx follows the map
            continue
        pad = module.__dict__.get("padding_idx")
        if not isinstance(pad, int) or isinstance(pad, bool) or pad not in kept:
            continue
        if kept.new_id(pad) != pad and _uses_pad_for_positions(module, pad):
            raise UnsupportedModelError(
                f"{name or type(module).__name__} uses pad id {pad} as a position offset and "
                f"the kept vocabulary renumbers it to {kept.new_id(pad)}; keep every id below "
                f"{pad} (extra_ids=range({pad}))"
            )


# -- the plan -------------------------------------------------------------------------------------


@dataclass
class Surgery:
    """Everything pruning `model` to `kept` will change, decided before anything changes."""

    model: nn.Module
    kept: KeptVocab
    tensors: list[PrunedTensor]
    full_shape: tuple[int, int]
    output_pruned: bool
    frozen_head: bool = False
    module_changes: list[AttrChange] = field(default_factory=list)
    config_changes: list[AttrChange] = field(default_factory=list)
    ids: IdsMode = "original"


def plan(
    model: nn.Module,
    kept: KeptVocab,
    *,
    output: OutputMode = "auto",
    ids: IdsMode = "original",
    logits: LogitsMode = "auto",
) -> Surgery:
    """Decide the surgery; raises (changing nothing) when the model or kept vocabulary can't.

    output="auto" is resolved here (`resolve_output`; `logits` only takes part in that).
    ids="original": the model keeps reading tokenizer ids (its config ids stay original);
    ids="kept": it reads kept ids, so its config ids follow the map too.
    """
    if ids not in hooks.IDS_MODES:
        raise VocabPruneError(f"ids must be one of {', '.join(hooks.IDS_MODES)}, not {ids!r}")
    if state_owner(model) is not None:
        raise VocabPruneError(f"model {model_name(model)!r} is already pruned; restore it first")
    output = resolve_output(model, output, ids=ids, logits=logits)
    if output == "frozen" and ids != "original":
        raise VocabPruneError(
            "output='frozen' keeps the logits over the original vocabulary; it reads original "
            "ids (ids='original')"
        )
    emb = input_embedding(model)
    full_shape = (int(emb.weight.shape[0]), int(emb.weight.shape[1]))
    kept.check_model(model, full_shape=full_shape)
    tensors = vocab_tensors(model, output=output)
    output_pruned = any(
        isinstance(m, nn.Linear) for t in tensors for m, a, _ in t.owners if a == "weight"
    )
    frozen = output == "frozen"
    if frozen and not output_pruned:
        raise UnsupportedModelError(f"model {model_name(model)!r} has no output head to freeze")
    module_changes = size_changes(model, tensors, kept.vocab_size, kept.size)
    module_changes += _padding_changes(tensors, kept)
    config_changes: list[AttrChange] = []
    # config.vocab_size describes the live rows, except under a frozen head, whose logits (and
    # the loss the model reshapes by vocab_size) stay over the whole vocabulary.
    if (output_pruned and not frozen) or output_head(model) is None:
        module_changes += module_vocab_changes(model, kept.vocab_size, kept.size)
        config_changes += config_vocab_change(model, kept.vocab_size, kept.size)
    if ids == "kept":
        config_changes += config_id_changes(model, kept)
    return Surgery(
        model, kept, tensors, full_shape, output_pruned, frozen, module_changes, config_changes, ids
    )


def _is_head(tensor: PrunedTensor) -> bool:
    """The weight or bias of a linear output head (tied or not)."""
    return any(isinstance(m, nn.Linear) and a in ("weight", "bias") for m, a, _ in tensor.owners)


RowSource = Callable[[PrunedTensor, torch.Tensor], tuple[torch.Tensor, RowStore]]
FrozenSource = Callable[[PrunedTensor, torch.Tensor], torch.Tensor]


def _sliced(tensor: PrunedTensor, dropped: torch.Tensor) -> torch.Tensor:
    return tensor.live().detach().index_select(tensor.axis, dropped)


def perform(
    surgery: Surgery,
    rows: RowSource,
    *,
    remapper: IdRemapper,
    logits: LogitsMode = "auto",
    frozen_rows: FrozenSource = _sliced,
) -> PrunedState:
    """Swap every planned tensor for its kept rows and apply every change; attach the state and
    the id hooks (core/hooks.py).

    `rows(tensor, index)` gives the kept rows of one tensor and the store its original rows
    come back from at restore (the live tensor sliced, or the rows read from a checkpoint).
    `frozen_rows(tensor, dropped)` gives a frozen head's dropped rows (default: the live tensor
    sliced; load_pruned reads them from the checkpoint, its live tensor being a stand-in).
    `remapper` maps original ids to kept ids with the unknown-id policy.
    """
    if logits not in hooks.LOGITS_MODES:
        raise VocabPruneError(f"logits must be one of {', '.join(hooks.LOGITS_MODES)}: {logits!r}")
    if surgery.frozen_head and logits == "kept":
        raise VocabPruneError("output='frozen' gives logits over the original vocabulary, not kept")
    state = PrunedState(
        kept=surgery.kept,
        tensors=surgery.tensors,
        full_input_shape=surgery.full_shape,
        module_changes=surgery.module_changes,
        config_changes=surgery.config_changes,
        output_pruned=surgery.output_pruned,
        frozen_head=surgery.frozen_head,
        ids=surgery.ids,
        remapper=remapper,
        logits=logits,
    )
    prepared = []
    for tensor in surgery.tensors:  # every read first: a failure leaves the model as it was
        live = tensor.live()
        small, store = rows(tensor, state.index(live.device))
        small = small.to(device=live.device, dtype=live.dtype)
        frozen = None
        if surgery.frozen_head and _is_head(tensor):  # held once: no gradient, no optimizer state
            frozen = frozen_rows(tensor, state.dropped(live.device))
            frozen = frozen.to(device=live.device, dtype=live.dtype)
        prepared.append((tensor, live, small, store, frozen))
    for tensor, live, small, store, frozen in prepared:
        tensor.store = store
        tensor.frozen = frozen
        tensor.set(
            nn.Parameter(small, requires_grad=live.requires_grad) if tensor.is_parameter else small
        )
    for change in surgery.module_changes + surgery.config_changes:
        change.apply()
    attach(surgery.model, state)
    hooks.install(surgery.model, state)
    return state


def resize(model: nn.Module, tensors: list[PrunedTensor], values: list[torch.Tensor]) -> None:
    """Give vocabulary tensors new values with another row count (a compact model growing), and
    make module sizes and config.vocab_size follow."""
    old = int(tensors[0].live().shape[tensors[0].axis])
    new = int(values[0].shape[tensors[0].axis])
    for tensor, value in zip(tensors, values, strict=True):
        live = tensor.live()
        tensor.set(
            nn.Parameter(value, requires_grad=live.requires_grad) if tensor.is_parameter else value
        )
    changes = size_changes(model, tensors, old, new) + module_vocab_changes(model, old, new)
    for change in changes + config_vocab_change(model, old, new):
        change.apply()


def vocab_param_count(model: nn.Module) -> int:
    """Parameters indexed by vocabulary id (input rows, an untied head and its bias), once each."""
    return sum(t.live().numel() for t in vocab_tensors(model) if t.is_parameter)
