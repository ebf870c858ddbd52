"""Exact weight decay: what the optimizer does to the rows a pruned model does not hold.

In full fine-tuning a row that never gets a gradient is still moved by weight decay. With AdamW
(decoupled decay) its moments stay zero, so each step only multiplies it by (1 - lr_t * wd): after
T steps the row is w * prod_t(1 - lr_t * wd). A `DecayTracker` hooks the optimizer (a step
post-hook, so skipped steps, e.g. on fp16 overflow, are not counted), reads the actual lr and
weight decay of the param group that holds each pruned tensor at every step, and keeps that
product on the pruned state; `restore` (and every save taken while pruned) multiplies the dropped
rows by it. The factor is a float64 product, applied once in the parameter's dtype.

Exact (to float rounding): torch AdamW, Adam(decoupled_weight_decay=True), Adam/AdamW/SGD with
weight decay 0, plain SGD with weight decay (coupled L2 is w * (1 - lr*wd) too) and SGD with
momentum/dampening/nesterov and weight decay (a linear recurrence, tracked as two scalars).
Not exact: Adam (coupled L2) with weight decay > 0, Adagrad/RMSprop/Adadelta/... with weight
decay > 0 (the decay enters the adaptive normalisation non-linearly), and Adafactor at any weight
decay (its factored second moment and relative step size are means over all rows). A warning
(`InexactDecayWarning`) says so when such an optimizer holds a pruned tensor.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from vocabprune.core.errors import VocabPruneError
from vocabprune.core.state import PrunedState, get_state

EXTRA_KEY = "decay_tracker"


class InexactDecayWarning(UserWarning):
    """The optimizer moves rows without a gradient in a way restore cannot reproduce."""


@dataclass
class _Track:
    factor: float = 1.0  # the dropped rows are factor * w0
    buf: float | None = None  # SGD momentum buffer, in units of w0 (None: not started)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers (accelerate's AcceleratedOptimizer, ...)."""
    opt = optimizer
    for _ in range(8):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not opt:
            opt = inner
        else:
            break
    if not isinstance(opt, torch.optim.Optimizer):
        raise VocabPruneError(f"not a torch optimizer: {type(optimizer).__name__}")
    return opt


def _kind(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str:
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.Adam) or name in ("AdamW", "Adam"):
        decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
        return "decoupled" if decoupled or name == "AdamW" else "coupled-adaptive"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if name == "Adafactor":
        return "never"
    return "coupled-adaptive"


class DecayTracker:
    """Tracks, per pruned tensor, the factor the optimizer applied to rows without a gradient."""

    def __init__(self, model: Any) -> None:
        state = get_state(model)
        if state is None:
            raise VocabPruneError("model is not pruned: prune it before tracking weight decay")
        self.state: PrunedState = state
        self.tracks: dict[str, _Track] = {t.name: _Track() for t in state.tensors}
        self.steps = 0
        self._handles: list[Any] = []
        self._warned: set[str] = set()
        self._global: Any = None
        self._seen: list[Any] = []
        for name, track in self.tracks.items():
            track.factor = float(state.dropped_scale.get(name, 1.0))

    # -- hooking --------------------------------------------------------------------------------

    def attach(self, optimizer: Any) -> DecayTracker:
        """Hook the optimizer (idempotent per optimizer)."""
        opt = unwrap_optimizer(optimizer)
        if any(o is opt for o, _ in self._handles):
            return self
        self._check(opt)
        self._handles.append((opt, opt.register_step_post_hook(self._after_step)))
        return self

    def attach_global(self) -> DecayTracker:
        """Track every optimizer that holds a pruned tensor (a global torch step hook): for
        trainers that create the optimizer themselves (HF Trainer, accelerate)."""
        if self._global is None:
            from torch.optim.optimizer import register_optimizer_step_post_hook

            self._global = register_optimizer_step_post_hook(self._global_step)
        return self

    def _global_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(o is opt for o, _ in self._handles) or unwrap_optimizer(opt) is not opt:
            return  # hooked per instance already, or a wrapper whose inner step counts
        if not self._groups(opt):
            return
        if not any(o is opt for o in self._seen):
            self._seen.append(opt)
            self._check(opt)
        self._after_step(opt, args, kwargs)

    def detach(self) -> None:
        for _, handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._global is not None:
            self._global.remove()
            self._global = None

    def _groups(self, opt: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
        found = {}
        for tensor in self.state.tensors:
            live = tensor.live()
            for group in opt.param_groups:
                if any(p is live for p in group["params"]):
                    found[tensor.name] = group
                    break
        return found

    def _check(self, opt: torch.optim.Optimizer) -> None:
        for name, group in self._groups(opt).items():
            kind = _kind(opt, group)
            wd = float(group.get("weight_decay", 0.0) or 0.0)
            if (kind == "never" or (kind == "coupled-adaptive" and wd != 0)) and (
                name not in self._warned
            ):
                self._warned.add(name)
                warnings.warn(
                    f"{type(opt).__name__} (weight_decay={wd}) on {name}: rows that are not kept "
                    "are not restored exactly as full fine-tuning would leave them (use AdamW, "
                    "or weight decay 0)",
                    InexactDecayWarning,
                    stacklevel=3,
                )

    def _after_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        groups = self._groups(opt)
        for name, group in groups.items():
            track = self.tracks[name]
            wd = float(group.get("weight_decay", 0.0) or 0.0)
            lr = float(group["lr"])
            kind = _kind(opt, group)
            if kind == "decoupled":
                track.factor *= 1.0 - lr * wd
            elif kind == "sgd":
                self._sgd_step(track, group, lr, wd)
            else:
                self._check(opt)
        for name in groups:
            self.state.dropped_scale[name] = self.tracks[name].factor

    @staticmethod
    def _sgd_step(track: _Track, group: dict[str, Any], lr: float, wd: float) -> None:
        # torch.optim.SGD on a row whose gradient is zero: d = wd * w (maximize negates only
        # the gradient); the momentum buffer starts as d, then buf = m * buf + (1 - damp) * d.
        momentum = float(group.get("momentum", 0.0) or 0.0)
        d = wd * track.factor
        if momentum != 0.0:
            if track.buf is None:
                track.buf = d
            else:
                track.buf = momentum * track.buf + (1.0 - float(group.get("dampening", 0.0))) * d
            d = d + momentum * track.buf if group.get("nesterov") else track.buf
        track.factor -= lr * d

    # -- persistence (checkpoints) --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tensors": {n: {"factor": t.factor, "buf": t.buf} for n, t in self.tracks.items()},
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        tensors = data.get("tensors", {})
        if set(tensors) != set(self.tracks):
            raise VocabPruneError(
                f"weight-decay state covers {sorted(tensors)} but the model prunes "
                f"{sorted(self.tracks)}"
            )
        for name, item in tensors.items():
            factor = float(item["factor"])
            if not math.isfinite(factor):
                raise VocabPruneError(f"weight-decay factor of {name} is not finite: {factor}")
            self.tracks[name] = _Track(factor, None if item.get("buf") is None else item["buf"])
            self.state.dropped_scale[name] = factor
        self.steps = int(data.get("steps", 0))

    @property
    def factors(self) -> dict[str, float]:
        return {n: t.factor for n, t in self.tracks.items()}


def get_tracker(model: Any) -> DecayTracker | None:
    """The tracker attached to a pruned model, if any."""
    state = get_state(model)
    return None if state is None else state.extras.get(EXTRA_KEY)


def track_weight_decay(optimizer: Any, model: Any) -> DecayTracker:
    """Track what `optimizer` does to the rows the pruned `model` does not hold.

    Call after creating the optimizer; `vocabprune.restore(model)` then applies the factor to the
    dropped rows, so pruned fine-tuning + restore equals full fine-tuning with weight decay too.
    One tracker per pruned model; calling again attaches it to another optimizer as well.
    """
    tracker = get_tracker(model)
    if tracker is None:
        tracker = DecayTracker(model)
        tracker.state.extras[EXTRA_KEY] = tracker
    return tracker.attach(optimizer)
