"""Causal attention over packed segments: the ``Segments`` plan and the index tensors that apply it.

``LlamaForward.forward_packed`` (``engine/llama.py``) packs variable-length
sequences into one ``[T, hidden]`` tensor; a ``Segments`` plan says where each
sequence starts and which earlier segment (a shared prompt) it continues, and
an ``AttentionPlan`` turns it into token positions and padded
``scaled_dot_product_attention`` calls over ``[T, heads, head_dim]`` queries,
keys and values. Plain tensors in and out; nothing here knows about weights,
adapters or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Segments:
    """How packed tokens split into segments.

    Attributes:
        lens: tokens per segment, in packing order.
        parent: per segment, the index of the (root, earlier) segment it
            continues, or -1 for a root. A child sees all its parent's tokens
            as context and its positions continue after them.
        starts: per segment, the absolute position of a root's first token
            (default 0); ignored for children.
    """

    lens: list[int]
    parent: list[int] | None = None
    starts: list[int] | None = None

    def __post_init__(self) -> None:
        if not self.lens or min(self.lens) < 1:
            raise ValueError("every segment needs at least one token")
        if self.parent is None:
            self.parent = [-1] * len(self.lens)
        for i, p in enumerate(self.parent):
            if p >= i or (p >= 0 and self.parent[p] != -1):
                raise ValueError("a segment's parent must be an earlier root segment")


class AttentionPlan:
    """Index tensors for causal attention over packed (possibly prefix-sharing) segments.

    Every segment is one row of a padded attention call: its queries are its own
    tokens; its keys are its parent's tokens (if any) followed by its own; query
    ``t`` sees every parent key and its own keys ``<= t``. Without children and
    with equal lengths this is a plain batched causal attention (no gather).
    Roots and children run as two calls, each padded only to its own longest
    segment: a group's short completions are not padded to its long prompt (with
    a 1,000-token prompt and 64-token completions that padding held most of a
    training step's activations), and the roots need no explicit mask.
    """

    def __init__(self, segs: Segments, device: Any) -> None:
        lens = segs.lens
        parent = segs.parent or [-1] * len(lens)
        offsets = [0]
        for n in lens:
            offsets.append(offsets[-1] + n)
        starts = segs.starts or [0] * len(lens)
        pos: list[torch.Tensor] = []
        for i, n in enumerate(lens):
            p = parent[i]
            first = (starts[p] + lens[p]) if p >= 0 else starts[i]
            pos.append(torch.arange(first, first + n))
        self.positions = torch.cat(pos).to(device)
        self.n_seg = len(lens)
        self.has_children = any(p >= 0 for p in parent)
        self.uniform = not self.has_children and all(n == lens[0] for n in lens)
        self.lq = max(lens)
        if self.uniform:
            return
        #: one padded call per kind of segment: (q_idx, k_idx, indices of the valid (flat) query rows, mask or None)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        order: list[torch.Tensor] = []
        for kind in ("roots", "children"):
            segs_k = [i for i in range(len(lens)) if (parent[i] >= 0) == (kind == "children")]
            if not segs_k:
                continue
            prefix = [lens[parent[i]] if parent[i] >= 0 else 0 for i in segs_k]
            lq = max(lens[i] for i in segs_k)
            lk = max(pl + lens[i] for pl, i in zip(prefix, segs_k, strict=True))
            q_idx = torch.zeros(len(segs_k), lq, dtype=torch.long)
            k_idx = torch.zeros(len(segs_k), lk, dtype=torch.long)
            q_valid = torch.zeros(len(segs_k), lq, dtype=torch.bool)
            for row, i in enumerate(segs_k):
                n = lens[i]
                q_idx[row, :n] = torch.arange(offsets[i], offsets[i] + n)
                q_valid[row, :n] = True
                if parent[i] >= 0:
                    k_idx[row, : prefix[row]] = torch.arange(offsets[parent[i]], offsets[parent[i]] + prefix[row])
                k_idx[row, prefix[row] : prefix[row] + n] = torch.arange(offsets[i], offsets[i] + n)
                order.append(q_idx[row, :n])
            mask: torch.Tensor | None = None
            if kind == "children":
                t = torch.arange(lq)[None, :, None]
                j = torch.arange(lk)[None, None, :]
                pl = torch.tensor(prefix)[:, None, None]
                n_t = torch.tensor([lens[i] for i in segs_k])[:, None, None]
                visible = (j < pl) | ((j - pl <= t) & (j - pl < n_t))
                # padded query rows see key 0 so softmax stays finite; their output is dropped
                visible[:, :, 0] = True
                mask = visible[:, None].to(device)
            q_rows = q_valid.view(-1).nonzero().squeeze(1)
            self.calls.append((q_idx.to(device), k_idx.to(device), q_rows.to(device), mask))
        # the calls' outputs come in (roots, children) order; ``inverse`` puts them back in packed order
        self.inverse = torch.argsort(torch.cat(order)).to(device) if self.has_children else None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` ``[T, H, d]``, ``k``/``v`` ``[T, KV, d]`` -> attention output ``[T, H, d]``."""
        if self.uniform:
            qp = q.view(self.n_seg, self.lq, q.shape[1], q.shape[2]).transpose(1, 2)
            kp = k.view(self.n_seg, self.lq, k.shape[1], k.shape[2]).transpose(1, 2)
            vp = v.view(self.n_seg, self.lq, v.shape[1], v.shape[2]).transpose(1, 2)
            out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
            return out.transpose(1, 2).reshape(q.shape)
        outs: list[torch.Tensor] = []
        for q_idx, k_idx, q_rows, mask in self.calls:
            # index_select, not ``q[q_idx]``: its backward is an index_add, where advanced indexing's is an
            # accumulating index_put (8x slower on CPU for the keys a group's prompt shares with its children)
            qp = _gather(q, q_idx).transpose(1, 2)  # [S, H, Lq, d]
            kp = _gather(k, k_idx).transpose(1, 2)  # [S, KV, Lk, d]
            vp = _gather(v, k_idx).transpose(1, 2)
            if mask is None:  # roots only, right-padded: the causal mask alone is exact for real rows
                out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=True)
            outs.append(out.transpose(1, 2).reshape(-1, q.shape[1], q.shape[2]).index_select(0, q_rows))
        if self.inverse is None:
            return outs[0]
        return torch.cat(outs).index_select(0, self.inverse)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for an index tensor over ``x``'s first dimension, through ``index_select``."""
    return x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])


__all__ = ["AttentionPlan", "Segments"]
