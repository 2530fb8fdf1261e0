"""Lean autograd ops for the engine's functional forward (``engine/llama.py``).

Each op saves the least its backward needs and, where the weights are frozen,
returns gradients for its inputs only: a oneDNN-prepacked linear, a linear whose
frozen weight is stored in a lower precision than the activations (``CastLinear``:
bfloat16 GEMMs, float32 everywhere else), RMSNorm, SwiGLU, rotary embedding, and
the fused unembedding + log-softmax + target gather (``TokenLogprob``) that never
keeps a ``[tokens, vocab]`` tensor.
Plain tensors in, plain tensors out; nothing here knows about adapters,
models or tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding ``x * cos + rotate_half(x) * sin`` (plain autograd; ``RopeFn`` is the lean one)."""
    return x * cos + rotate_half(x) * sin


class PackedLinear(torch.autograd.Function):
    """``x @ W.T + b`` through a oneDNN-prepacked ``W`` (about 1.3-2.5x ``F.linear`` at small batch on CPU).

    ``W`` is frozen: the backward returns the gradient for ``x`` only.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, bias: Any) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (weight,) = ctx.saved_tensors
        return grad.matmul(weight), None, None, None


class CastLinear(torch.autograd.Function):
    """``x @ W.T + b`` for a frozen ``W`` stored in a lower precision than ``x`` (bfloat16 under float32).

    The GEMM runs in ``W``'s dtype (``x`` is cast to it; the products accumulate in
    float32 inside the kernel) and its result is cast back to ``x``'s dtype, so
    the activations, norms, attention and LoRA factors around it stay in
    ``x``'s precision. The backward multiplies the incoming gradient by the same
    weight the same way and returns the gradient for ``x`` only. Use ``cast_linear``,
    which skips autograd when no gradient is wanted.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.dtype = x.dtype
        return _cast_mm(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (weight,) = ctx.saved_tensors
        return grad.to(weight.dtype).matmul(weight).to(ctx.dtype), None, None


def cast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``CastLinear`` where ``x`` needs a gradient, the same arithmetic without autograd otherwise."""
    if torch.is_grad_enabled() and x.requires_grad:
        return CastLinear.apply(x, weight, bias)  # type: ignore[no-any-return]
    return _cast_mm(x, weight, bias)


def _cast_mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


class RMSNormFn(torch.autograd.Function):
    """RMSNorm with a frozen weight that saves only its input and the per-row 1/rms for the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        g = (grad * weight).float()
        dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        return dx.to(x.dtype), None, None


class SwiGLUFn(torch.autograd.Function):
    """``silu(gate) * up`` of a fused ``[gate | up]`` tensor, saving only that tensor (silu recomputed)."""

    @staticmethod
    def forward(ctx: Any, gate_up: torch.Tensor, width: int) -> torch.Tensor:
        ctx.save_for_backward(gate_up)
        ctx.width = width
        gate, up = gate_up.split(width, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.split(ctx.width, dim=-1)
        sig = torch.sigmoid(gate)
        silu = gate * sig
        d_gate = grad * up * sig * (1 + gate * (1 - sig))
        return torch.cat((d_gate, grad * silu), dim=-1), None


class RopeFn(torch.autograd.Function):
    """Rotary embedding ``x * cos + rotate_half(x) * sin``; linear, so the backward is the inverse rotation."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return rope(x, cos, sin)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        cos, sin = ctx.saved_tensors
        gs = grad * sin
        half = gs.shape[-1] // 2
        return grad * cos + torch.cat((gs[..., half:], -gs[..., :half]), dim=-1), None, None


class TokenLogprob(torch.autograd.Function):
    """Fused unembedding + log-softmax + target gather for rows whose unembedding has no LoRA.

    ``lp[i] = z_i[t_i] - logsumexp(z_i)`` with ``z_i = W h_i``, computed ``chunk``
    rows at a time so each chunk's ``[chunk, vocab]`` logits stay in cache and
    no vocab-sized tensor outlives its chunk. ``lp[i]`` depends on ``h_i``
    alone, so its gradient is a row vector, ``(onehot(t_i) - softmax(z_i)) W``:
    when a gradient is wanted the forward computes it while the chunk's
    probabilities are at hand and keeps only that ``[N, hidden]`` tensor; the
    backward scales it by the incoming gradient. The weight is frozen.
    Also returns the (detached) entropy of each row's distribution, or an empty
    tensor without ``with_entropy``.
    """

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, packed: Any, targets: torch.Tensor, with_entropy: bool,
        chunk: int,
    ) -> Any:
        want_grad = ctx.needs_input_grad[0]
        n = h.shape[0]
        lp = h.new_empty(n, dtype=torch.float32)
        ent = h.new_empty(n if with_entropy else 0, dtype=torch.float32)
        dh = h.new_empty(h.shape) if want_grad else None
        h = h.contiguous()
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            hc, t = h[lo:hi], targets[lo:hi, None]
            if packed is not None:
                z = torch.ops.mkldnn._linear_pointwise(hc, packed, None, "none", [], "")
            else:  # a bfloat16 unembedding multiplies in bfloat16 (see ``CastLinear``)
                z = hc.to(weight.dtype).matmul(weight.t())
            z = z.float()
            z.sub_(z.amax(-1, keepdim=True))  # shifted logits: exp cannot overflow
            e = z.exp()
            total = e.sum(-1, keepdim=True)
            log_total = total.log()
            lp[lo:hi] = (z.gather(-1, t) - log_total).squeeze(-1)
            if with_entropy:  # H = log S - sum(e z) / S on the shifted logits
                ent[lo:hi] = (log_total - (e * z).sum(-1, keepdim=True) / total).squeeze(-1)
            if dh is not None:
                g = e.div_(total).neg_()  # -softmax
                g.scatter_add_(-1, t, torch.ones_like(t, dtype=g.dtype))  # onehot - softmax
                dh[lo:hi] = g.to(weight.dtype).matmul(weight)
            del z, e
        ctx.save_for_backward(dh if dh is not None else h.new_empty(0))
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx: Any, grad_lp: torch.Tensor, grad_ent: Any) -> Any:
        (dh,) = ctx.saved_tensors
        return dh * grad_lp[:, None].to(dh.dtype), None, None, None, None, None


__all__ = [
    "CastLinear",
    "PackedLinear",
    "RMSNormFn",
    "RopeFn",
    "SwiGLUFn",
    "TokenLogprob",
    "cast_linear",
    "rms_norm",
    "rope",
    "rotate_half",
]
