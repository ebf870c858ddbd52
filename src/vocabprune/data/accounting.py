"""Memory accounting: parameters and training bytes, full model vs pruned vs the floor.

Three parameter counts for one model and one kept vocabulary:
  full    every parameter of the model (tied parameters once)
  pruned  the model after `prune`: every vocabulary-indexed tensor cut to the kept rows
  floor   non-embedding parameters + the kept rows: what a pruned run cannot go below
          (equal to pruned; a method that keeps any unused row, or a frozen full copy, is above)

Byte model: bytes per *trainable* parameter held during training, split into weights +
gradients + optimizer states (activations, the framework and the data are not included):
  fp32_adamw  4 (fp32 weights) + 4 (fp32 grads) + 8 (two fp32 AdamW moments)        = 16
  bf16_mixed  2 (bf16 weights) + 2 (bf16 grads) + 12 (fp32 master weights + two fp32
              moments: the usual mixed-precision AdamW recipe)                         = 16
  adamw_8bit  4 (fp32 weights) + 4 (fp32 grads) + 2 (two 8-bit moments; the per-block
              scales of bitsandbytes add under 0.5%, small tensors stay 32-bit)    = 10
benchmarks/train_memory.py measures the fp32_adamw case after one real AdamW step: the measured
bytes of a pruned run equal 16 x the floor parameters (plus AdamW's per-tensor step counters).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from vocabprune.core.model import input_embedding
from vocabprune.core.surgery import vocab_param_count

BYTES_BREAKDOWN: dict[str, dict[str, int]] = {
    "fp32_adamw": {"weights": 4, "grads": 4, "optimizer": 8},
    "bf16_mixed": {"weights": 2, "grads": 2, "optimizer": 12},
    "adamw_8bit": {"weights": 4, "grads": 4, "optimizer": 2},
}
BYTES_PER_PARAM = {regime: sum(parts.values()) for regime, parts in BYTES_BREAKDOWN.items()}


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Parameters counted once each (tied parameters once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@dataclass(frozen=True)
class ParamBudget:
    """Parameter counts for one model and one kept vocabulary."""

    vocab_size: int
    kept: int
    hidden: int
    model_params: int
    vocab_params: int  # every parameter indexed by vocabulary id (input rows, untied head, bias)

    @property
    def per_id(self) -> int:
        return self.vocab_params // self.vocab_size if self.vocab_size else 0

    @property
    def embedding_params(self) -> int:
        return self.vocab_params

    @property
    def pruned_params(self) -> int:
        return self.model_params - (self.vocab_size - self.kept) * self.per_id

    @property
    def floor_params(self) -> int:
        """Non-embedding parameters + kept rows: what a pruned run cannot go below."""
        return self.model_params - self.vocab_params + self.kept * self.per_id

    def bytes(self, regime: str = "fp32_adamw") -> dict[str, int]:
        per = BYTES_PER_PARAM[regime]
        return {
            "full": self.model_params * per,
            "pruned": self.pruned_params * per,
            "floor": self.floor_params * per,
        }

    def params(self) -> dict[str, int]:
        return {"full": self.model_params, "pruned": self.pruned_params, "floor": self.floor_params}

    def breakdown(self, regime: str = "fp32_adamw") -> dict[str, dict[str, int]]:
        """{full|pruned|floor: {weights, grads, optimizer, total}} in bytes for one regime."""
        parts = BYTES_BREAKDOWN[regime]
        out = {}
        for which, n in self.params().items():
            row = {part: n * per for part, per in parts.items()}
            row["total"] = sum(row.values())
            out[which] = row
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            embedding_params=self.embedding_params,
            pruned_params=self.pruned_params,
            floor_params=self.floor_params,
        )
        out["bytes"] = {regime: self.bytes(regime) for regime in BYTES_PER_PARAM}
        out["bytes_breakdown"] = {regime: self.breakdown(regime) for regime in BYTES_PER_PARAM}
        out["bytes_per_param"] = {
            regime: dict(BYTES_BREAKDOWN[regime]) for regime in BYTES_PER_PARAM
        }
        return out


def vocab_params(model: nn.Module) -> tuple[int, int]:
    """(parameters indexed by vocabulary id, hidden size): input rows plus an untied head, as the
    surgery plan finds them."""
    return vocab_param_count(model), int(input_embedding(model).weight.shape[1])


def budget(model: nn.Module, kept: int, vocab_size: int | None = None) -> ParamBudget:
    """Budget for a full (unpruned) model, or a meta-device one built from its config."""
    vparams, hidden = vocab_params(model)
    rows = vocab_size or int(input_embedding(model).weight.shape[0])
    return ParamBudget(
        vocab_size=rows,
        kept=kept,
        hidden=hidden,
        model_params=count_params(model),
        vocab_params=vparams,
    )
