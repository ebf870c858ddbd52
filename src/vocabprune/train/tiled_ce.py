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


class _Head:
    """One tile's head math, shared by the forward pass, the backward pass and the statistics:
    logits over the trainable columns and (separately, never concatenated) the frozen ones."""

    def __init__(
        self,
        w: torch.Tensor,
        b: torch.Tensor | None,
        frozen: tuple[torch.Tensor, torch.Tensor | None, float] | None,
        scale: float,
        softcap: float | None,
    ) -> None:
        self.w, self.b, self.frozen, self.scale, self.softcap = w, b, frozen, scale, softcap
        self.kept = w.shape[0]

    @classmethod
    def cast(
        cls,
        dtype: torch.dtype,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        frozen: torch.Tensor | None,
        frozen_bias: torch.Tensor | None,
        frozen_scale: float,
        scale: float,
        softcap: float | None,
    ) -> _Head:
        """The head with its weights (and frozen rows) in `dtype`, the dtype the tiles run in."""
        fz = None if frozen is None else (frozen.to(dtype), _cast(frozen_bias, dtype), frozen_scale)
        return cls(weight.to(dtype), _cast(bias, dtype), fz, scale, softcap)

    def split(self, safe: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block of columns (trainable, frozen): whether each target is in it, and its
        place there (clamped into range where it is not)."""
        return [
            (safe < self.kept, safe.clamp(max=self.kept - 1)),
            (safe >= self.kept, (safe - self.kept).clamp(min=0)),
        ]

    def logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """[trainable columns' logits] or [those, frozen columns' logits]."""
        z = [tile_logits(h, self.w, self.b, self.scale, self.softcap)]
        if self.frozen is not None:
            fw, fb, fs = self.frozen
            z.append(tile_logits(h, fw, fb, self.scale, self.softcap, weight_scale=fs))
        return z

    def lse_and_target(
        self, z: list[torch.Tensor], safe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's log-normalizer and its target's logit."""
        (in_kept, place), (_, frozen_place) = self.split(safe)
        lse = torch.logsumexp(z[0], dim=-1)
        target = z[0].gather(1, place[:, None]).squeeze(1)
        if len(z) == 2:
            lse = torch.logaddexp(lse, torch.logsumexp(z[1], dim=-1))
            frozen = z[1].gather(1, frozen_place[:, None]).squeeze(1)
            target = torch.where(in_kept, target, frozen)
        return lse, target

    def argmax(self, z: list[torch.Tensor]) -> torch.Tensor:
        """Each token's top column (the first of equal ones, as argmax over all columns)."""
        best, arg = z[0].max(-1)
        if len(z) == 2:
            frozen_best, frozen_arg = z[1].max(-1)
            arg = torch.where(frozen_best > best, frozen_arg + self.kept, arg)
        return arg

    def grad_logits_(
        self, z: list[torch.Tensor], lse: torch.Tensor, safe: torch.Tensor, g: torch.Tensor
    ) -> list[torch.Tensor]:
        """The loss's gradient w.r.t. the pre-cap, pre-scale logits, `g` (per token) times
        softmax - one-hot, written over `z` in place."""
        for part, (one_hot, place) in zip(z, self.split(safe), strict=False):
            # d(capped)/d(uncapped) = 1 - (capped / cap)^2, taken before z becomes the softmax.
            slope = None if self.softcap is None else (part / self.softcap).square_().neg_().add_(1)
            part.sub_(lse[:, None]).exp_()  # softmax, in place
            part.scatter_add_(1, place[:, None], -one_hot[:, None].to(part.dtype))
            part.mul_(g[:, None])
            if slope is not None:
                part.mul_(slope)
            if self.scale != 1.0:
                part.mul_(self.scale)
        return z

    def add_grads(
        self,
        dz: list[torch.Tensor],
        h: torch.Tensor,
        grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    ) -> None:
        """Add one tile's gradients: hidden states (rows of grads[0] given for the tile), the
        trainable weight and bias; the frozen columns only reach the hidden states."""
        grad_h, grad_w, grad_b = grads
        if grad_b is not None:
            grad_b += dz[0].sum(0)
        dk = dz[0].to(self.w.dtype)
        if grad_h is not None:
            grad_h.copy_(dk @ self.w)
            if self.frozen is not None:
                fw, _, fs = self.frozen
                grad_h.add_(dz[1].to(fw.dtype) @ fw, alpha=fs)
        if grad_w is not None and grad_w.dtype == dk.dtype:
            grad_w.addmm_(dk.t(), h)
        elif grad_w is not None:  # half precision: the tiles' sum is kept in float32
            grad_w += dk.t() @ h


class TiledCrossEntropy(torch.autograd.Function):
    """Per-token negative log-likelihood (0 where the target is -100), float32, in tiles; the
    columns are the rows of `weight`, then those of `frozen` (no gradient).

    With `fused` (a number: the upstream gradient the caller's reduction will give every labelled
    token, 1/N for a mean over N), the forward pass also computes the gradients, while the tile's
    logits are at hand; backward uses them (scaled, where the upstream gradient is another value
    shared by every labelled token), saving the recomputation of the logits. Any other upstream
    gradient recomputes them."""

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
        fused: float | None = None,
    ) -> torch.Tensor:
        # Under autocast the head runs in the autocast dtype; backward (no autocast) casts the same.
        dtype = hidden.dtype
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
        head = _Head.cast(dtype, weight, bias, frozen, frozen_bias, frozen_scale, scale, softcap)
        w, b, fz = head.w, head.b, head.frozen
        h = hidden.to(dtype)
        valid = targets != IGNORE
        safe = targets.masked_fill(~valid, 0)
        acc = acc_dtype(dtype)
        lse = torch.empty(h.shape[0], dtype=acc, device=h.device)
        nll = torch.empty_like(lse)
        grads = None if fused is None else _grad_buffers(ctx, h, w, acc)
        upstream = valid.to(acc) * (1.0 if fused is None else fused)
        for start in range(0, h.shape[0], tile):
            rows = slice(start, start + tile)
            z = head.logits(h[rows])
            lse[rows], target = head.lse_and_target(z, safe[rows])
            nll[rows] = lse[rows] - target
            if grads is not None:
                dz = head.grad_logits_(z, lse[rows], safe[rows], upstream[rows])
                head.add_grads(dz, h[rows], _tile_of(grads, rows))
            del z
        nll.masked_fill_(~valid, 0.0)
        ctx.save_for_backward(h, w, b, safe, valid, lse, *(fz[:2] if fz else (None, None)))
        ctx.frozen_scale = frozen_scale
        ctx.config = (tile, scale, softcap, hidden.dtype, weight.dtype)
        ctx.fused = (grads, upstream)
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h, w, b, safe, valid, lse, fw, fb = ctx.saved_tensors
        tile, scale, softcap, hidden_dtype, weight_dtype = ctx.config
        acc = acc_dtype(h.dtype)
        g = grad_nll.to(acc) * valid
        (grads, upstream), ctx.fused = ctx.fused, (None, None)
        ratio = None if grads is None else _common_ratio(g, upstream, valid)
        if ratio is not None:
            if ratio != 1.0:
                grads = tuple(None if x is None else x.mul_(ratio) for x in grads)
        else:
            grads = _grad_buffers(ctx, h, w, acc)
            fz = None if fw is None else (fw, fb, ctx.frozen_scale)
            head = _Head(w, b, fz, scale, softcap)
            for start in range(0, h.shape[0], tile):
                rows = slice(start, start + tile)
                z = head.logits(h[rows])
                dz = head.grad_logits_(z, lse[rows], safe[rows], g[rows])
                head.add_grads(dz, h[rows], _tile_of(grads, rows))
                del z, dz
        grad_h, grad_w, grad_b = grads
        return (
            None if grad_h is None else grad_h.to(hidden_dtype),
            None if grad_w is None else grad_w.to(weight_dtype),
            None if grad_b is None else grad_b.to(weight_dtype),
            *(None,) * 8,
        )


def _grad_buffers(
    ctx: Any, h: torch.Tensor, w: torch.Tensor, acc: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Zeroed gradients of the hidden states, weight and bias (None where not needed); the
    weight's and bias's summed over tiles in `acc`."""
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    return (
        torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None,
        torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None,
        torch.zeros(w.shape[0], dtype=acc, device=w.device) if need_b else None,
    )


def _tile_of(
    grads: tuple[torch.Tensor | None, ...], rows: slice
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    grad_h, grad_w, grad_b = grads
    return (None if grad_h is None else grad_h[rows], grad_w, grad_b)


def _common_ratio(g: torch.Tensor, upstream: torch.Tensor, valid: torch.Tensor) -> float | None:
    """g / upstream where that is one number for every labelled token, else None."""
    got, assumed = g[valid], upstream[valid]
    if got.numel() == 0:
        return 1.0
    if bool((got == assumed).all()):
        return 1.0
    first = got[0]
    if not bool((got == first).all()) or float(assumed[0]) == 0.0:
        return None
    return float(first) / float(assumed[0])


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
    upstream: float | None = 1.0,
) -> torch.Tensor:
    """Per-token NLL of `targets` under softmax(softcap(scale * (hidden @ W.T + bias))),
    `tile` tokens at a time; hidden [tokens, dim], weight [columns, dim], targets [tokens].
    W is `weight`, then `frozen` [frozen columns, dim] (and bias, then `frozen_bias`): frozen
    columns are in every normalizer and take no gradient (targets >= weight rows name them);
    `frozen_scale` multiplies `frozen` (not its bias) without copying it. `upstream`: the
    gradient each labelled token's NLL will receive (1/N when the caller takes the mean over N
    tokens), with which the gradients are computed in the forward pass; None computes them in
    backward (one more head matmul per tile; what any other upstream gradient also does)."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of tokens, got {tile}")
    if frozen is not None:
        frozen = frozen.detach()
        frozen_bias = None if frozen_bias is None else frozen_bias.detach()
        if (bias is None) != (frozen_bias is None):
            raise ValueError("a bias needs a frozen bias for the frozen columns, and only then")
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    fused = float(upstream) if training and upstream is not None else None
    return TiledCrossEntropy.apply(
        hidden,
        weight,
        bias,
        targets,
        tile,
        scale,
        softcap,
        frozen,
        frozen_bias,
        frozen_scale,
        fused,
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
    dtype = hidden.dtype
    head = _Head.cast(dtype, weight, bias, frozen, frozen_bias, frozen_scale, scale, softcap)
    safe = targets.masked_fill(~valid, 0)
    entropy = torch.zeros(hidden.shape[0], dtype=acc_dtype(hidden.dtype), device=hidden.device)
    top1 = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    for start in range(0, hidden.shape[0], tile):
        rows = slice(start, start + tile)
        z = head.logits(hidden[rows])
        lse, _ = head.lse_and_target(z, safe[rows])
        top1[rows] = head.argmax(z) == targets[rows]
        logps = [part - lse[:, None] for part in z]
        entropy[rows] = -sum((p.exp() * p).sum(-1) for p in logps)
        del z
    return entropy * valid, top1 & valid
