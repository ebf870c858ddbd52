"""The record a pruned model carries: what was swapped, where the originals live, what to undo.

It also makes every save taken while pruned a full-vocabulary save: `state_dict()` returns the
full matrices (original rows from the row store, trained rows from the live parameter), loading a
full state dict slices it to the kept rows, and `save_pretrained` writes the full config.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.ids import IdRemapper
from vocabprune.core.model import STATE_ATTR, state_owner
from vocabprune.core.rowstore import CheckpointRows, MemoryRows, RowStore, move_out_of, offload
from vocabprune.core.vocab import KeptVocab

Owner = tuple[nn.Module, str, str]  # (module, attribute, qualified name in the model)


@dataclass
class PrunedTensor:
    """One vocabulary-indexed tensor (shared by all its owners when tied) and its original store."""

    owners: list[Owner]
    axis: int
    full_size: int
    is_parameter: bool
    store: RowStore | None = None
    # output="frozen": the dropped rows of a head, held once (no gradient, no optimizer state);
    # they score the dropped ids' logits (core/hooks.py, train/chunked.py).
    frozen: torch.Tensor | None = None

    def frozen_rows(self, like: torch.Tensor) -> torch.Tensor:
        """The frozen rows on `like`'s device and dtype, moved there once (never a second copy)."""
        assert self.frozen is not None
        if self.frozen.device != like.device or self.frozen.dtype != like.dtype:
            self.frozen = self.frozen.to(device=like.device, dtype=like.dtype)
        return self.frozen

    @property
    def name(self) -> str:
        return self.owners[0][2]

    @property
    def names(self) -> list[str]:
        return [q for _, _, q in self.owners]

    def live(self) -> torch.Tensor:
        module, attr, _ = self.owners[0]
        return getattr(module, attr)  # type: ignore[no-any-return]

    def set(self, value: torch.Tensor) -> None:
        """Put `value` in every owner (one object for all: ties stay ties)."""
        for module, attr, _ in self.owners:
            if self.is_parameter:
                setattr(module, attr, value)
            else:
                module._buffers[attr] = value

    def expanded(
        self, index: torch.Tensor, scale: float | None = None, live: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The full tensor: original rows (optionally scaled) with the kept rows written in, from
        the live tensor or from `live` (a trained copy of it, e.g. inside a PEFT wrapper)."""
        assert self.store is not None
        live = unsharded(self.live() if live is None else live).detach()
        if live.shape[self.axis] != index.numel():
            raise VocabPruneError(
                f"{self.name} has {live.shape[self.axis]} rows but the pruned model kept "
                f"{index.numel()}: it was resized while pruned, and its original rows no longer "
                "line up; resize before pruning (then build the kept vocabulary and prune)"
            )
        full = self.store.full().to(device=live.device, dtype=live.dtype)
        if scale is not None and scale != 1.0:
            full.mul_(scale)
        full.index_copy_(self.axis, index.to(live.device), live)
        return full


def is_sharded(tensor: torch.Tensor) -> bool:
    """A DTensor (FSDP2, tensor parallel): each rank holds a shard."""
    return hasattr(tensor, "full_tensor") and hasattr(tensor, "placements")


def zero3_managed(tensor: torch.Tensor) -> bool:
    """A parameter DeepSpeed ZeRO-3 manages (it may hold only this rank's partition)."""
    return hasattr(tensor, "ds_id") and hasattr(tensor, "ds_status")


def unsharded(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it), else the tensor.
    A ZeRO-3 parameter must be gathered by the caller: its partition alone is refused, never
    read as rows."""
    if zero3_managed(tensor) and getattr(tensor.ds_status, "name", "") != "AVAILABLE":
        raise VocabPruneError(
            "the pruned embedding is partitioned by DeepSpeed ZeRO-3: gather it first (inside "
            "deepspeed.zero.GatheredParameters(model.parameters()), state_dict() is the full "
            "vocabulary one)"
        )
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[operator]


@dataclass
class AttrChange:
    """An attribute changed while pruned (config ids, num_embeddings, padding_idx, ...)."""

    obj: Any
    attr: str
    old: Any
    new: Any

    def apply(self) -> None:
        setattr(self.obj, self.attr, self.new)

    def revert(self) -> None:
        setattr(self.obj, self.attr, self.old)


@dataclass
class PrunedState:
    """Everything `restore` needs, attached to the model as `model._vocabprune_state`."""

    kept: KeptVocab
    tensors: list[PrunedTensor]
    full_input_shape: tuple[int, int]
    module_changes: list[AttrChange] = field(default_factory=list)
    config_changes: list[AttrChange] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)  # checkpoint hooks (state_dict, load)
    forward_handles: list[Any] = field(default_factory=list)  # id hooks (core/hooks.py)
    output_pruned: bool = False
    # output="frozen": the head keeps the full softmax; its dropped rows are frozen (see
    # PrunedTensor.frozen) and its logits stay over the original vocabulary.
    frozen_head: bool = False
    # Which ids the pruned model reads: "original" (tokenizer ids, remapped inside the model)
    # or "kept" (the data was remapped by RemapCollator / remap_dataset).
    ids: str = "original"
    remapper: IdRemapper | None = None  # original -> kept ids, with the unknown-id policy
    logits: str = "auto"  # how a pruned head's logits come out (core/hooks.py)
    active: bool = True  # False once restored: hooks copied into other modules go inert
    # True while generate() decodes over the kept ids (core/decoding.py): the model reads kept
    # ids and emits the kept columns, its config ids moved to kept ids for the duration.
    over_kept: bool = False
    # Per pruned tensor (by name): the factor the dropped rows get at restore and in saves taken
    # while pruned (decoupled weight decay tracked by vocabprune.train.decay); 1 when absent.
    dropped_scale: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the attached DecayTracker
    _index: dict[Any, torch.Tensor] = field(default_factory=dict)

    def index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Kept ids as an int64 tensor on `device` (cached per device)."""
        dev = torch.device(device)
        if dev not in self._index:
            self._index[dev] = torch.as_tensor(self.kept.kept_ids, dtype=torch.long, device=dev)
        return self._index[dev]

    def dropped(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ids not kept, ascending, as an int64 tensor on `device` (cached per device)."""
        dev = torch.device(device)
        key = ("dropped", dev)
        if key not in self._index:
            mask = torch.ones(self.kept.vocab_size, dtype=torch.bool)
            mask[self.index("cpu")] = False
            self._index[key] = mask.nonzero().squeeze(1).to(dev)  # type: ignore[index]
        return self._index[key]  # type: ignore[index]

    def column_order(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """For each original id, its column among [kept columns, frozen columns]: gathering
        those columns by it gives logits in token-id order; indexing it by a label gives the
        label's column."""
        dev = torch.device(device)
        key = ("order", dev)
        if key not in self._index:
            order = torch.empty(self.kept.vocab_size, dtype=torch.long)
            order[self.index("cpu")] = torch.arange(self.kept.size)
            order[self.dropped("cpu")] = torch.arange(self.kept.size, self.kept.vocab_size)
            self._index[key] = order.to(dev)  # type: ignore[index]
        return self._index[key]  # type: ignore[index]

    @property
    def head(self) -> str | None:
        """The head mode: "frozen" (full softmax), "restricted" (kept ids only), None (none
        pruned: no head, or output='keep')."""
        if self.frozen_head:
            return "frozen"
        return "restricted" if self.output_pruned else None

    def frozen_tensors(self) -> list[PrunedTensor]:
        """The head's weight (and bias) whose dropped rows are frozen, in that order."""
        return [t for t in self.tensors if t.frozen is not None]

    def expand(
        self,
        tensor: PrunedTensor,
        dropped_scale: float | None = None,
        live: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`tensor` at full size; dropped rows scaled by `dropped_scale`, else by the tracked
        weight-decay factor."""
        kept_rows = tensor.live() if live is None else live
        scale = self.dropped_scale.get(tensor.name) if dropped_scale is None else dropped_scale
        return tensor.expanded(self.index(kept_rows.device), scale=scale, live=kept_rows)

    @contextlib.contextmanager
    def full_config(self) -> Iterator[None]:
        """Temporarily put the config back to the full vocabulary (for saving)."""
        for change in self.config_changes:
            change.revert()
        try:
            yield
        finally:
            for change in self.config_changes:
                change.apply()


def get_state(model: Any) -> PrunedState | None:
    """The pruned state of a model (or of the model inside a wrapper), None if not pruned."""
    owner = state_owner(model)
    return None if owner is None else owner.__dict__[STATE_ATTR]


def is_pruned(model: Any) -> bool:
    """True while the model holds a pruned vocabulary."""
    return get_state(model) is not None


# -- checkpoint hooks -------------------------------------------------------------------------


def _state_dict_post_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    state: PrunedState | None = module.__dict__.get(STATE_ATTR)
    if state is None:
        return
    for tensor in state.tensors:
        present = [prefix + q for q in tensor.names if prefix + q in state_dict]
        if not present:
            continue
        full = state.expand(tensor)
        for key in present:
            state_dict[key] = full  # one tensor for all tied keys, so savers see the tie


def _load_state_dict_pre_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    state: PrunedState | None = module.__dict__.get(STATE_ATTR)
    if state is None:
        return
    for tensor in state.tensors:
        for qualname in tensor.names:
            key = prefix + qualname
            value = state_dict.get(key)
            if isinstance(value, torch.Tensor) and value.shape[tensor.axis] == tensor.full_size:
                state_dict[key] = value.index_select(tensor.axis, state.index(value.device))


def _register(module: nn.Module, name: str, private: str, hook: Any) -> Any:
    """Register with the public hook API (torch >= 2.5), else its older private spelling."""
    register = getattr(module, name, None)
    if register is not None:
        return register(hook)
    if "load" in name:
        return getattr(module, private)(hook, with_module=True)
    return getattr(module, private)(hook)


def _save_pretrained_full(self: nn.Module, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
    """save_pretrained while pruned: full matrices and the full config, loadable by stock code."""
    state: PrunedState | None = self.__dict__.get(STATE_ATTR)
    original = type(self).save_pretrained
    if state is None:
        return original(self, save_directory, *args, **kwargs)
    for tensor in state.tensors:  # saving over the checkpoint that holds the original rows
        assert tensor.store is not None
        tensor.store = move_out_of(tensor.store, save_directory)
    if kwargs.get("state_dict") is None:
        kwargs["state_dict"] = self.state_dict()
    with state.full_config():
        return original(self, save_directory, *args, **kwargs)


def attach(model: nn.Module, state: PrunedState) -> None:
    """Attach the state and the hooks that make saves full-vocabulary; resizing, copying and
    pickling the pruned model go through this module's rules (below)."""
    model.__dict__[STATE_ATTR] = state
    _full_saves_on(model, state)
    for name, method in _INSTANCE_RULES.items():
        if hasattr(type(model), name) or name.startswith("__"):
            model.__dict__[name] = types.MethodType(method, model)


# -- resizing, generating, copying and pickling while pruned ------------------------------------
#
# These are instance attributes of the pruned model (as `save_pretrained` above), removed by
# `detach`: the model's own public methods, never transformers' module attributes.


def _resize_token_embeddings(
    self: nn.Module,
    new_num_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Refused while pruned unless it would change nothing: the kept rows cannot grow into the
    full matrix, and restore would have nothing to line them up with."""
    state: PrunedState = self.__dict__[STATE_ATTR]
    full = state.full_input_shape[0]
    rows = full if new_num_tokens is None else int(new_num_tokens)
    if pad_to_multiple_of:
        rows = -(-rows // pad_to_multiple_of) * pad_to_multiple_of
    if rows == full:  # e.g. TRL's chat-format helper with tokens the vocabulary already has
        return self.get_input_embeddings()  # type: ignore[operator]
    raise VocabPruneError(
        f"model {type(self).__name__} is pruned ({state.kept.size} of {full} ids kept): "
        f"resize_token_embeddings({rows}) is refused; add tokens before pruning (resize, build "
        "the kept vocabulary with model=..., then prune), or vocabprune.restore(model) first"
    )


def _deepcopy_pruned(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """copy.deepcopy: an independent pruned model (own row store, own hooks) that restores."""
    from vocabprune.core import hooks  # hooks import this module

    state: PrunedState = self.__dict__[STATE_ATTR]
    names = (STATE_ATTR, *_INSTANCE_RULES, *_SAVE_RULES)
    own = {name: self.__dict__.pop(name) for name in names if name in self.__dict__}
    try:
        copied: nn.Module = copy.deepcopy(self, memo)
    finally:
        self.__dict__.update(own)
    for handle in state.handles + state.forward_handles:
        # The copy's hook tables are copies of the original's and hold its hooks (closures over
        # the original state): drop them from the copied tables, found through the memo.
        refs = (handle.hooks_dict_ref, *getattr(handle, "extra_dict_ref", ()))
        for ref in refs:
            table = memo.get(id(ref()))
            if table is not None:
                table.pop(handle.id, None)
    new = dataclasses.replace(
        state,
        tensors=[_copied_tensor(t, memo) for t in state.tensors],
        module_changes=[_copied_change(c, memo) for c in state.module_changes],
        config_changes=[_copied_change(c, memo) for c in state.config_changes],
        handles=[],
        forward_handles=[],
        dropped_scale=dict(state.dropped_scale),
        extras={},  # a weight-decay tracker follows the original's optimizer, not the copy's
        _index={},
    )
    attach(copied, new)
    hooks.install(copied, new)
    return copied


def _copied_tensor(tensor: PrunedTensor, memo: dict[int, Any]) -> PrunedTensor:
    owners = [(memo.get(id(m), m), attr, q) for m, attr, q in tensor.owners]
    assert tensor.store is not None
    store = tensor.store  # a checkpoint's rows are read-only: both models can read them
    if isinstance(store, MemoryRows):
        store = MemoryRows(store.full())
    elif not isinstance(store, CheckpointRows):
        store = offload(store.full())  # the original's temporary file goes with the original
    frozen = None if tensor.frozen is None else tensor.frozen.clone()  # a frozen head's rows
    return PrunedTensor(owners, tensor.axis, tensor.full_size, tensor.is_parameter, store, frozen)


def _copied_change(change: AttrChange, memo: dict[int, Any]) -> AttrChange:
    return AttrChange(memo.get(id(change.obj), change.obj), change.attr, change.old, change.new)


def _generate(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """generate() over the kept ids where the head is restricted (core/decoding.py)."""
    from vocabprune.core.decoding import pruned_generate  # it imports this module

    return pruned_generate(self, self.__dict__[STATE_ATTR], args, kwargs)


def _refuse_pickle(self: nn.Module, protocol: Any = None) -> Any:
    raise VocabPruneError(
        f"a pruned {type(self).__name__} cannot be pickled (its id hooks are closures): "
        "save_pretrained it (full vocabulary), vocabprune.restore(model) first, or use "
        "copy.deepcopy for an independent pruned copy"
    )


_INSTANCE_RULES = {
    "resize_token_embeddings": _resize_token_embeddings,
    "generate": _generate,
    "__deepcopy__": _deepcopy_pruned,
    "__reduce_ex__": _refuse_pickle,
}
_SAVE_RULES = ("save_pretrained",)


def _full_saves_on(model: nn.Module, state: PrunedState) -> None:
    state.handles.append(
        _register(
            model,
            "register_state_dict_post_hook",
            "_register_state_dict_hook",
            _state_dict_post_hook,
        )
    )
    state.handles.append(
        _register(
            model,
            "register_load_state_dict_pre_hook",
            "_register_load_state_dict_pre_hook",
            _load_state_dict_pre_hook,
        )
    )
    if hasattr(type(model), "save_pretrained"):
        model.__dict__["save_pretrained"] = types.MethodType(_save_pretrained_full, model)


def _full_saves_off(model: nn.Module, state: PrunedState) -> None:
    for handle in state.handles:
        handle.remove()
    state.handles.clear()
    model.__dict__.pop("save_pretrained", None)


@contextlib.contextmanager
def compact_saves(model: nn.Module, state: PrunedState) -> Iterator[None]:
    """For the length of the block, saves write the model as it is: kept rows only (exports)."""
    _full_saves_off(model, state)
    try:
        yield
    finally:
        _full_saves_on(model, state)


def detach(model: nn.Module, state: PrunedState) -> None:
    """Remove the hooks and the state: the model is an ordinary model again."""
    _full_saves_off(model, state)
    for handle in state.forward_handles:
        handle.remove()
    state.forward_handles.clear()
    state.active = False
    model.__dict__.pop(STATE_ATTR, None)
    for name in _INSTANCE_RULES:
        model.__dict__.pop(name, None)
