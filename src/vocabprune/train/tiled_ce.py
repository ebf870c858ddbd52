"""Cross-entropy of a linear head, computed in tiles of tokens so that the [tokens x columns]
logits, their softmax and their gradient are never held whole.

Forward: per tile, logits = head(h) (then the model's scale and soft-capping), logsumexp and the
target's logit; only one float per token (the logsumexp) is kept. Backward: per tile, the logits
are recomputed and turned in place into their gradient, softmax - one-hot, which gives the
hidden states' gradient and adds to the head's. The extra cost is one more head matmul per tile.

Frozen columns (`frozen`, a matrix of rows that take no gradient: the dropped rows of a head pruned
with output="frozen") are scored after the trainable ones: targets index the columns
[weight rows, frozen rows]. They add to every token's normalizer and to the hidden states'
gradient, never to a weight gradient, so the trainable rows and everything below the head get
the gradient of the full softmax.
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
    weight_scale: float = 1.0,
) -> torch.Tensor:
    """The logits of one tile, as the model's head computes them, in float32 (float64 stays);
    `weight_scale` multiplies the weight (a frozen head's weight-decay factor) without a copy."""
    z = hidden @ weight.t()
    if weight_scale != 1.0:
        z = z * weight_scale
    if bias is not None:
        z = z + bias
    z = z.to(acc_dtype(z.dtype))
    if scale != 1.0:
        z.mul_(scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype logits, normalizers and summed gradients are kept in: float32, or float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _columns(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    frozen: tuple[torch.Tensor, torch.Tensor | None, float] | None,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """One tile's logits over the trainable columns, then the frozen ones."""
    z = tile_logits(h, w, b, scale, softcap)
    if frozen is None:
        return z
    fw, fb, fs = frozen
    return torch.cat([z, tile_logits(h, fw, fb, scale, softcap, weight_scale=fs)], dim=1)


class TiledCrossEntropy(torch.autograd.Function):
    """Per-token negative log-likelihood (0 where the target is -100), float32, in tiles; the
    columns are the rows of `weight`, then those of `frozen` (no gradient)."""

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
        frozen: torch.Tensor | None = None,
        frozen_bias: torch.Tensor | None = None,
        frozen_scale: float = 1.0,
    ) -> torch.Tensor:
        # Under autocast the head runs in the autocast dtype; backward (no autocast) casts the same.
        dtype = hidden.dtype
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        h = hidden.to(dtype)
        fz = None if frozen is None else (frozen.to(dtype), _cast(frozen_bias, dtype), frozen_scale)
        valid = targets != IGNORE
        safe = targets.masked_fill(~valid, 0)
        lse = torch.empty(h.shape[0], dtype=acc_dtype(dtype), device=h.device)
        nll = torch.empty_like(lse)
        for start in range(0, h.shape[0], tile):
            rows = slice(start, start + tile)
            z = _columns(h[rows], w, b, fz, scale, softcap)
            lse[rows] = torch.logsumexp(z, dim=-1)
            nll[rows] = lse[rows] - z.gather(1, safe[rows, None]).squeeze(1)
            del z
        nll.masked_fill_(~valid, 0.0)
        ctx.save_for_backward(h, w, b, safe, valid, lse, *(fz[:2] if fz else (None, None)))
        ctx.frozen_scale = frozen_scale
        ctx.config = (tile, scale, softcap, hidden.dtype, weight.dtype)
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h, w, b, safe, valid, lse, fw, fb = ctx.saved_tensors
        fz = None if fw is None else (fw, fb, ctx.frozen_scale)
        kept = w.shape[0]
        tile, scale, softcap, hidden_dtype, weight_dtype = ctx.config
        acc = acc_dtype(h.dtype)
        g = grad_nll.to(acc) * valid
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=acc, device=w.device) if need_b else None
        for start in range(0, h.shape[0], tile):
            rows = slice(start, start + tile)
            z = _columns(h[rows], w, b, fz, scale, softcap)
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
                grad_b += dz[:, :kept].sum(0)
            dz = dz.to(w.dtype)
            dk = dz[:, :kept]  # the frozen columns' part only flows to the hidden states
            if grad_h is not None:
                grad_h[rows] = dk @ w
                if fw is not None:
                    grad_h[rows] += (dz[:, kept:] @ fw).mul_(ctx.frozen_scale)
            if grad_w is not None and w.dtype == acc:
                grad_w.addmm_(dk.t(), h[rows])
            elif grad_w is not None:  # half precision: the tiles' sum is kept in float32
                grad_w += dk.t() @ h[rows]
            del dz, dk
        return (
            None if grad_h is None else grad_h.to(hidden_dtype),
            None if grad_w is None else grad_w.to(weight_dtype),
            None if grad_b is None else grad_b.to(weight_dtype),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(dtype)


def tiled_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    tile: int,
    scale: float = 1.0,
    softcap: float | None = None,
    frozen: torch.Tensor | None = None,
    frozen_bias: torch.Tensor | None = None,
    frozen_scale: float = 1.0,
) -> torch.Tensor:
    """Per-token NLL of `targets` under softmax(softcap(scale * (hidden @ W.T + bias))),
    `tile` tokens at a time; hidden [tokens, dim], weight [columns, dim], targets [tokens].
    W is `weight`, then `frozen` [frozen columns, dim] (and bias, then `frozen_bias`): frozen
    columns are in every normalizer and take no gradient (targets >= weight rows name them);
    `frozen_scale` multiplies `frozen` (not its bias) without copying it."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of tokens, got {tile}")
    if frozen is not None:
        frozen = frozen.detach()
        frozen_bias = None if frozen_bias is None else frozen_bias.detach()
        if (bias is None) != (frozen_bias is None):
            raise ValueError("a bias needs a frozen bias for the frozen columns, and only then")
    return TiledCrossEntropy.apply(
        hidden, weight, bias, targets, tile, scale, softcap, frozen, frozen_bias, frozen_scale
    )


@torch.no_grad()
def tiled_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    tile: int,
    scale: float = 1.0,
    softcap: float | None = None,
    frozen: torch.Tensor | None = None,
    frozen_bias: torch.Tensor | None = None,
    frozen_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, over the same columns as tiled_cross_entropy and `tile` tokens at a time: the
    entropy of the softmax and whether the target is its top-1 (0 / False where it is -100)."""
    valid = targets != IGNORE
    fz = None
    if frozen is not None:
        fz = (frozen.to(hidden.dtype), _cast(frozen_bias, hidden.dtype), frozen_scale)
    w, b = weight.to(hidden.dtype), _cast(bias, hidden.dtype)
    entropy = torch.zeros(hidden.shape[0], dtype=acc_dtype(hidden.dtype), device=hidden.device)
    top1 = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    for start in range(0, hidden.shape[0], tile):
        rows = slice(start, start + tile)
        z = _columns(hidden[rows], w, b, fz, scale, softcap)
        top1[rows] = z.argmax(-1) == targets[rows]
        logp = z.log_softmax(-1)
        entropy[rows] = -(logp.exp() * logp).sum(-1)
        del z, logp
    return entropy * valid, top1 & valid
