"""Cross-entropy of a linear head, computed in tiles of tokens so that the [tokens x columns]
logits, their softmax and their gradient are never held whole.

Forward: per tile, logits = head(h) (then the model's scale and soft-capping), logsumexp and the
target's logit; only one float per token (the logsumexp) is kept. Backward: per tile, the logits
are recomputed and turned in place into their gradient, softmax - one-hot, which gives the
hidden states' gradient and adds to the head's. The extra cost is one more head matmul per tile.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100  # the label transformers' losses skip


def tile_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """The float32 logits of one tile, as the model's head computes them."""
    z = hidden @ weight.t()
    if bias is not None:
        z = z + bias
    z = z.float()
    if scale != 1.0:
        z.mul_(scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


class TiledCrossEntropy(torch.autograd.Function):
    """Per-token negative log-likelihood (0 where the target is -100), float32, in tiles."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        tile: int,
        scale: float,
        softcap: float | None,
    ) -> torch.Tensor:
        # Under autocast the head runs in the autocast dtype; backward (no autocast) casts the same.
        dtype = hidden.dtype
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        h = hidden.to(dtype)
        valid = targets != IGNORE
        safe = targets.masked_fill(~valid, 0)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        nll = torch.empty_like(lse)
        for start in range(0, h.shape[0], tile):
            rows = slice(start, start + tile)
            z = tile_logits(h[rows], w, b, scale, softcap)
            lse[rows] = torch.logsumexp(z, dim=-1)
            nll[rows] = lse[rows] - z.gather(1, safe[rows, None]).squeeze(1)
            del z
        nll.masked_fill_(~valid, 0.0)
        ctx.save_for_backward(h, w, b, safe, valid, lse)
        ctx.config = (tile, scale, softcap, hidden.dtype, weight.dtype)
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h, w, b, safe, valid, lse = ctx.saved_tensors
        tile, scale, softcap, hidden_dtype, weight_dtype = ctx.config
        g = grad_nll.float() * valid
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
        for start in range(0, h.shape[0], tile):
            rows = slice(start, start + tile)
            z = tile_logits(h[rows], w, b, scale, softcap)
            # d(capped)/d(uncapped) = 1 - (capped / cap)^2, taken before z becomes the softmax.
            cap_slope = None if softcap is None else (z / softcap).square_().neg_().add_(1)
            dz = z.sub_(lse[rows, None]).exp_()  # softmax, in place
            dz.scatter_add_(1, safe[rows, None], -torch.ones_like(lse[rows, None]))
            dz.mul_(g[rows, None])
            if cap_slope is not None:
                dz.mul_(cap_slope)
                del cap_slope
            if scale != 1.0:
                dz.mul_(scale)
            if grad_b is not None:
                grad_b += dz.sum(0)
            dz = dz.to(w.dtype)
            if grad_h is not None:
                grad_h[rows] = dz @ w
            if grad_w is not None and w.dtype == torch.float32:
                grad_w.addmm_(dz.t(), h[rows])
            elif grad_w is not None:  # half precision: the tiles' sum is kept in float32
                grad_w += dz.t() @ h[rows]
            del dz
        return (
            None if grad_h is None else grad_h.to(hidden_dtype),
            None if grad_w is None else grad_w.to(weight_dtype),
            None if grad_b is None else grad_b.to(weight_dtype),
            None,
            None,
            None,
            None,
        )


def tiled_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    tile: int,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Per-token NLL of `targets` under softmax(softcap(scale * (hidden @ weight.T + bias))),
    `tile` tokens at a time; hidden [tokens, dim], weight [columns, dim], targets [tokens]."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of tokens, got {tile}")
    return TiledCrossEntropy.apply(hidden, weight, bias, targets, tile, scale, softcap)
