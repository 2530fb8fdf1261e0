"""A lean functional forward for Llama-family decoders with per-row LoRA adapters.

This is the engine's hot path. It reads the weights of a Hugging Face
``LlamaForCausalLM`` (or Mistral / Qwen2 / Qwen3, same block structure; Qwen3 adds
RMSNorms on each head's queries and keys) in place -- no copy of the base -- and the LoRA weights of PEFT ``LoraLayer`` modules, so
adapters created, trained, saved and loaded through PEFT are exactly the ones
used here (a test checks logits against the PEFT model's own forward).

Two entry points:

* ``forward_packed`` runs a batch of variable-length sequences *packed* into
  one ``[T, hidden]`` tensor: every matmul sees only real tokens (no padding);
  attention is computed per sequence (padded only inside the attention call;
  ``engine/attention.py`` plans it).
  It is used for training (autograd flows into the LoRA weights), for logprob
  recomputation, and for prefill (it can hand each layer's K/V to a sink).
* ``decode_step`` advances a batch of rows by one token each against a
  ``KVCache`` whose active rows are contiguous (``0 .. n-1``).

Both take an ``AdapterRows`` plan saying which rows use which adapter, so one
forward pass serves requests for several adapters at once. ``None`` as an
adapter name means the base model (adapter disabled), the reference policy.

Which models take this path is decided by ``fast_path_problem`` (architecture,
activation and a rotary scheme whose frequencies do not depend on the sequence
length: default, ``linear``, ``llama3`` (Llama 3.x) or ``yarn``); any other causal
LM runs on ``engine/hf_generic.py``'s slower path through transformers' own classes.

This module knows nothing about tokenisation, sampling, losses or storage.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from teachloop.core.errors import ModelError
from teachloop.engine.attention import AttentionPlan, Segments
from teachloop.engine.ops import (
    PackedLinear,
    RMSNormFn,
    RopeFn,
    SwiGLUFn,
    TokenLogprob,
    cast_linear,
    rms_norm,
    rope,
)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

#: rotary schemes with fixed frequencies (``inv_freq`` and ``attention_scaling`` read once from the model);
#: ``dynamic`` and ``longrope`` recompute them from the sequence length, so they take the generic path
FAST_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def fast_path_problem(config: Mapping[str, Any], architecture: str | None = None) -> str | None:
    """Why a model with this ``config.json`` content cannot run on ``LlamaForward`` (``None``: it can).

    ``architecture`` overrides ``config["architectures"][0]`` (a model built in memory has none).
    Reads both the transformers 5 ``rope_parameters`` and the older ``rope_scaling`` key.
    """
    arch = architecture or next(iter(config.get("architectures") or [None]))
    if arch not in SUPPORTED_ARCHITECTURES:
        return f"the fast path supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {arch}"
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        return f"the fast path computes SwiGLU (silu); this model's activation is {act}"
    for key in ("rope_parameters", "rope_scaling"):
        rope_cfg = config.get(key)
        if isinstance(rope_cfg, Mapping):
            kind = rope_cfg.get("rope_type") or rope_cfg.get("type") or "default"
            if kind not in FAST_ROPE_TYPES:
                return f"the fast path supports rope types {', '.join(FAST_ROPE_TYPES)}; this model uses {kind}"
    return None


def model_problem(hf_model: Any) -> str | None:
    """``fast_path_problem`` of a loaded model: its config, its class name standing in for missing ``architectures``."""
    cfg = hf_model.config
    return fast_path_problem(cfg.to_dict(), (getattr(cfg, "architectures", None) or [type(hf_model).__name__])[0])


#: rows per chunk of the fused unembedding: ``[128, 49152]`` float32 logits are 25 MB, so the
#: softmax passes over a chunk run in the L3 cache instead of streaming from memory.
FUSED_CHUNK = 128

#: PEFT target-module names by LoRA target group.
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)


@dataclass
class LoraWeights:
    """One adapter's LoRA factors on one projection: ``y += scale * (x @ A.T) @ B.T``."""

    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float
    dropout: float = 0.0


@dataclass
class Proj:
    """A linear projection: the frozen base weight and the LoRA factors of each adapter that targets it."""

    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None
    lora: dict[str, LoraWeights] = field(default_factory=dict)
    #: what oneDNN multiplies by on CPU: a prepacked copy of ``weight``, or ``weight`` itself (``PACK_MODES``)
    packed: torch.Tensor | None = None


@dataclass
class Block:
    """One decoder block's weights (q/k/v fused, gate/up fused)."""

    ln_in: torch.Tensor
    ln_post: torch.Tensor
    qkv: Proj  # fused [q; k; v]
    o: Proj
    gate_up: Proj  # fused [gate; up]
    down: Proj
    # LoRA on the unfused q/k/v and gate/up projections lives here, split by output slice.
    qkv_split: tuple[int, int, int] = (0, 0, 0)
    gate_up_split: tuple[int, int] = (0, 0)
    # Qwen3: RMSNorm weights ``[head_dim]`` applied to every head's queries / keys before the rotation
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    lora_parts: dict[str, dict[str, LoraWeights]] = field(default_factory=dict)  # adapter -> module -> weights


#: Which rows use which adapter: a list of (adapter name or None, row index tensor or None = all rows).
AdapterRows = list[tuple[str | None, torch.Tensor | None]]


def single(adapter: str | None) -> AdapterRows:
    """The plan for a batch whose rows all use ``adapter``."""
    return [(adapter, None)]


class KVCache:
    """Per-layer key/value tensors ``[rows, kv_heads, capacity, head_dim]`` with a length per row.

    Active rows are kept contiguous at ``0 .. n-1``; ``remove`` moves the last
    active row into the hole, so attention always reads a view, never a gather.
    ``extra`` holds one opaque object per row for a forward that keeps more state
    per row (``engine/hf_generic.py``: the model's own cache); rows carry it when
    they move or grow, ``copy_row`` deep-copies it and a freed row drops it.
    """

    def __init__(
        self, n_layers: int, kv_heads: int, head_dim: int, rows: int, capacity: int, dtype: torch.dtype, device: Any
    ) -> None:
        shape = (rows, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.n = 0
        self.capacity = capacity
        self.extra: list[Any] = [None] * rows

    @property
    def rows(self) -> int:
        """Allocated rows."""
        return self.k[0].shape[0]

    def grow(self, rows: int | None = None, capacity: int | None = None) -> None:
        """Reallocate to at least ``rows`` rows and ``capacity`` positions, keeping the contents."""
        new_rows = max(self.rows, rows or 0)
        new_cap = max(self.capacity, capacity or 0)
        if new_rows == self.rows and new_cap == self.capacity:
            return
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = old.new_zeros((new_rows, old.shape[1], new_cap, old.shape[3]))
                new[: old.shape[0], :, : old.shape[2]] = old
                store[i] = new
        lengths = self.lengths.new_zeros(new_rows)
        lengths[: self.lengths.shape[0]] = self.lengths
        self.lengths = lengths
        self.capacity = new_cap
        self.extra += [None] * (new_rows - len(self.extra))

    def copy_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` (its whole prefix) onto row ``dst``."""
        length = int(self.lengths[src])
        for store in (self.k, self.v):
            for t in store:
                t[dst, :, :length] = t[src, :, :length]
        self.lengths[dst] = length
        self.extra[dst] = None if self.extra[src] is None else copy.deepcopy(self.extra[src])

    def remove(self, row: int) -> int | None:
        """Free active row ``row`` by moving the last active row into it; returns the moved row's old index."""
        last = self.n - 1
        moved = None
        carried, self.extra[last] = self.extra[last], None  # moved with the row, not copied
        if row != last:
            self.copy_row(last, row)
            moved = last
        self.extra[row] = carried if row != last else None
        self.lengths[last] = 0
        self.n -= 1
        return moved


def _base_linear(x: torch.Tensor, proj: Proj) -> torch.Tensor:
    if proj.weight.dtype != x.dtype:  # bfloat16 weights under float32 activations (``engine/precision.py``)
        return cast_linear(x, proj.weight, proj.bias)
    if proj.packed is not None and x.dim() == 2 and x.dtype == torch.float32:
        return PackedLinear.apply(x, proj.weight, proj.packed, proj.bias)  # type: ignore[no-any-return]
    return F.linear(x, proj.weight, proj.bias)


#: ``pack`` modes of ``LlamaForward`` (every base projection runs through oneDNN on CPU except with ``False``):
#: ``"dense"`` (the default): oneDNN multiplies by the dense weights themselves -- one copy of the weights
#: (quiet A/B: 0.98x the sampling speed of ``"all"`` at 950 MB instead of 1711 MB loaded);
#: ``"all"`` (or ``True``): a prepacked copy of every projection beside the dense weight (twice the
#: weights' memory; the dense copy is what the backward multiplies by and what PEFT wraps);
#: ``"lm_head"``: a oneDNN-prepacked copy of the unembedding only (+ vocab x hidden floats);
#: ``False``: plain ``F.linear`` (MKL on CPU; the only mode off CPU or below float32).
#: ``bench/README.md`` ("Engine sampling") has the measured speed and memory of each.
PACK_MODES: tuple[bool | str, ...] = ("all", "dense", "lm_head", True, False)

#: the mode ``pack=None`` picks on CPU in float32: one copy of the weights (see ``PACK_MODES``)
DEFAULT_PACK = "dense"


def can_pack(device: Any) -> bool:
    """Whether oneDNN weight prepacking is available for ``device``."""
    dev = torch.device(device)
    return dev.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class LlamaForward:
    """Functional forward over a (PEFT-wrapped) Hugging Face Llama-family model.

    Build once per loaded base; call ``refresh_adapters`` after adapters are
    added, loaded or removed so the plan sees their (live) PEFT parameters.
    """

    def __init__(self, hf_model: Any, *, pack: bool | str | None = None) -> None:
        problem = model_problem(hf_model)
        if problem is not None:
            raise ModelError(problem)
        cfg = hf_model.config
        self.config = cfg
        self.n_heads: int = cfg.num_attention_heads
        self.kv_heads: int = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.hidden: int = cfg.hidden_size
        self.head_dim: int = getattr(cfg, "head_dim", None) or self.hidden // self.n_heads
        self.eps: float = cfg.rms_norm_eps
        self.vocab: int = cfg.vocab_size
        self.hf_model = hf_model
        inner = hf_model.model
        self.embed: torch.Tensor = inner.embed_tokens.weight
        self.norm: torch.Tensor = inner.norm.weight
        rotary = inner.rotary_emb
        self.inv_freq: torch.Tensor = rotary.inv_freq.float()
        self.rope_scale: float = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
        self.blocks: list[Block] = []
        self._hf_layers = list(inner.layers)
        for layer in self._hf_layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = _fuse([_base(attn.q_proj), _base(attn.k_proj), _base(attn.v_proj)])
            gate_up = _fuse([_base(mlp.gate_proj), _base(mlp.up_proj)])
            self.blocks.append(
                Block(
                    ln_in=layer.input_layernorm.weight,
                    ln_post=layer.post_attention_layernorm.weight,
                    qkv=qkv,
                    o=Proj(_base(attn.o_proj).weight, _base(attn.o_proj).bias),
                    gate_up=gate_up,
                    down=Proj(_base(mlp.down_proj).weight, _base(mlp.down_proj).bias),
                    qkv_split=(
                        self.n_heads * self.head_dim,
                        self.kv_heads * self.head_dim,
                        self.kv_heads * self.head_dim,
                    ),
                    gate_up_split=(cfg.intermediate_size, cfg.intermediate_size),
                    q_norm=_weight_of(getattr(attn, "q_norm", None)),
                    k_norm=_weight_of(getattr(attn, "k_norm", None)),
                )
            )
        self.lm_head = Proj(_base(hf_model.lm_head).weight, _base(hf_model.lm_head).bias)
        device = self.embed.device
        #: the activations' dtype: the norms' (float32 unless the whole model was loaded in a lower
        #: precision); projections whose weights are lower (``precision.lower_weights``) go through ``CastLinear``
        self.dtype: torch.dtype = self.norm.dtype
        float32_weights = self.lm_head.weight.dtype == torch.float32
        if pack is None:
            pack = DEFAULT_PACK if can_pack(device) and float32_weights else False
        if pack not in PACK_MODES:
            raise ValueError(f"pack must be one of {', '.join(map(repr, PACK_MODES))}; got {pack!r}")
        if pack and not float32_weights:
            raise ValueError(f"pack needs float32 weights; these are {self.lm_head.weight.dtype} (use pack=False)")
        #: the prepacking mode in effect (``PACK_MODES``): ``"dense"`` (or ``"lm_head"``) keeps one copy
        #: of each decoder projection, ``"all"`` a second, prepacked one; ``False``: plain ``F.linear``
        self.pack: bool | str = "all" if pack is True else pack
        self.packed = bool(pack)
        #: recompute each decoder layer in the backward pass instead of keeping its activations
        #: (training memory ~ one layer's activations; costs about one more forward pass)
        self.checkpoint_layers = False
        #: stacked LoRA factors per (block, adapter, modules), valid while the parameters' versions match
        self._stack_cache: dict[tuple[int, str, tuple[str, ...]], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        for i, proj in enumerate(self._projections() if self.packed else []):
            if self.pack == "all" or (self.pack == "lm_head" and i == 0):
                proj.packed = torch.ops.mkldnn._reorder_linear_weight(proj.weight.detach(), 32)
            else:  # oneDNN reads the dense weight itself: the same tensor, no second copy
                proj.packed = proj.weight.detach()
        self.refresh_adapters()

    def _projections(self) -> list[Proj]:
        out = [self.lm_head]
        for b in self.blocks:
            out += [b.qkv, b.o, b.gate_up, b.down]
        return out

    # ----------------------------------------------------------------- adapters
    def refresh_adapters(self) -> None:
        """Re-read the LoRA factors of every adapter from the PEFT modules."""
        for block, layer in zip(self.blocks, self._hf_layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            parts: dict[str, dict[str, LoraWeights]] = {}
            for mod_name, module in (
                ("q_proj", attn.q_proj),
                ("k_proj", attn.k_proj),
                ("v_proj", attn.v_proj),
                ("gate_proj", mlp.gate_proj),
                ("up_proj", mlp.up_proj),
            ):
                for adapter, w in _lora_of(module).items():
                    parts.setdefault(adapter, {})[mod_name] = w
            block.lora_parts = parts
            block.o.lora = _lora_of(attn.o_proj)
            block.down.lora = _lora_of(mlp.down_proj)
        self.lm_head.lora = _lora_of(self.hf_model.lm_head)
        self._stack_cache = {}
        self._generation = getattr(self, "_generation", 0) + 1

    def adapter_names(self) -> set[str]:
        """Names of the adapters present on the model."""
        names: set[str] = set(self.lm_head.lora)
        for b in self.blocks:
            names |= set(b.lora_parts) | set(b.o.lora) | set(b.down.lora)
        return names

    # ------------------------------------------------------------------ helpers
    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)

    def _fused_lora(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        block: Block,
        modules: Sequence[str],
        split: Sequence[int],
        rows: AdapterRows,
        training: bool,
    ) -> torch.Tensor:
        """Add the LoRA deltas of unfused projections ``modules`` into the fused output ``y``.

        The projections share their input, so their A factors are stacked into one
        matrix and their B factors (times the LoRA scale) laid out block-diagonally:
        two GEMMs per adapter whatever the number of modules, ``y + (x A^T) B^T``.
        """
        for adapter, idx in rows:
            if adapter is None:
                continue
            parts = block.lora_parts.get(adapter)
            if not parts:
                continue
            ws = [parts.get(name) for name in modules]
            xs = x if idx is None else x.index_select(0, idx)
            if training and any(w is not None and w.dropout > 0 for w in ws):
                delta = self._split_lora(xs, ws, split, training)  # PEFT's separate dropout mask per module
                y = y + delta if idx is None else y.index_add(0, idx, delta)
                continue
            a, b = self._stacked(block, adapter, modules, ws, split)
            if idx is None:
                y = torch.addmm(y, F.linear(xs, a), b.t())
            else:
                y = y.index_add(0, idx, F.linear(F.linear(xs, a), b))
        return y

    def _stacked(
        self, block: Block, adapter: str, modules: Sequence[str], ws: Sequence[LoraWeights | None],
        split: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A stacked [sum r, in], block-diagonal scale * B [sum out, sum r])``; cached while no grad is taken."""
        grad = torch.is_grad_enabled()
        key = tuple((id(w.A), w.A._version, id(w.B), w.B._version, w.scale) if w is not None else None for w in ws)
        cache_key = (id(block), adapter, tuple(modules))
        if not grad:
            hit = self._stack_cache.get(cache_key)
            if hit is not None and hit[0] == key:
                return hit[1], hit[2]
        present = [w for w in ws if w is not None]
        a = torch.cat([w.A for w in present]) if len(present) > 1 else present[0].A
        b = torch.block_diag(*[
            (w.B * w.scale) if w is not None else present[0].B.new_zeros((width, 0))
            for w, width in zip(ws, split, strict=True)
        ])
        if not grad:
            self._stack_cache[cache_key] = (key, a, b)
        return a, b

    @staticmethod
    def _split_lora(
        x: torch.Tensor, ws: Sequence[LoraWeights | None], split: Sequence[int], training: bool
    ) -> torch.Tensor:
        deltas = [
            x.new_zeros((x.shape[0], width)) if w is None else _lora_delta(x, w, training)
            for w, width in zip(ws, split, strict=True)
        ]
        return torch.cat(deltas, dim=-1)

    def _linear(self, x: torch.Tensor, proj: Proj, rows: AdapterRows, training: bool) -> torch.Tensor:
        y = _base_linear(x, proj)
        for adapter, idx in rows:
            if adapter is None:
                continue
            w = proj.lora.get(adapter)
            if w is None:
                continue
            if idx is None:
                if training and w.dropout > 0:
                    y = y + _lora_delta(x, w, training)
                else:
                    y = torch.addmm(y, F.linear(x, w.A), (w.B * w.scale).t())
            else:
                y = y.index_add(0, idx, _lora_delta(x.index_select(0, idx), w, training))
        return y

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, training: bool) -> torch.Tensor:
        if training and torch.is_grad_enabled():
            return RMSNormFn.apply(x, weight, self.eps)
        return rms_norm(x, weight, self.eps)

    def _block_pre(
        self, x: torch.Tensor, block: Block, rows: AdapterRows, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self._norm(x, block.ln_in, training)
        qkv = _base_linear(h, block.qkv)
        qkv = self._fused_lora(h, qkv, block, ("q_proj", "k_proj", "v_proj"), block.qkv_split, rows, training)
        q, k, v = qkv.split(block.qkv_split, dim=-1)
        return q, k, v

    def _heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: Block, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[T, H*d]`` projections -> ``[T, heads, d]``, with Qwen3's per-head q/k norms applied."""
        q = q.view(-1, self.n_heads, self.head_dim)
        k = k.view(-1, self.kv_heads, self.head_dim)
        v = v.view(-1, self.kv_heads, self.head_dim)
        if block.q_norm is not None:
            q = self._norm(q, block.q_norm, training)
        if block.k_norm is not None:
            k = self._norm(k, block.k_norm, training)
        return q, k, v

    def _block_post(
        self, x: torch.Tensor, attn: torch.Tensor, block: Block, rows: AdapterRows, training: bool
    ) -> torch.Tensor:
        x = x + self._linear(attn, block.o, rows, training)
        h = self._norm(x, block.ln_post, training)
        gu = _base_linear(h, block.gate_up)
        gu = self._fused_lora(h, gu, block, ("gate_proj", "up_proj"), block.gate_up_split, rows, training)
        if training and torch.is_grad_enabled():
            act = SwiGLUFn.apply(gu, block.gate_up_split[0])
        else:
            gate, up = gu.split(block.gate_up_split, dim=-1)
            act = F.silu(gate) * up
        return x + self._linear(act, block.down, rows, training)

    # ------------------------------------------------------------- entry points
    def forward_packed(
        self,
        tokens: torch.Tensor,
        segments: Segments | Sequence[int],
        rows: AdapterRows,
        *,
        kv_sink: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        training: bool = False,
    ) -> torch.Tensor:
        """Final hidden states ``[T, hidden]`` of packed segments (after the final norm).

        ``tokens`` is ``[T]``, the segments' tokens concatenated in order.
        ``segments`` is a ``Segments`` plan or just the lengths of independent
        sequences. A child segment continues its parent's tokens: it attends to
        all of the parent's keys, so a prompt shared by a group is computed once
        (gradients from every child flow back into it). ``rows`` indexes
        *tokens* (see ``token_rows``). ``kv_sink(layer, k, v)`` receives each
        layer's rotated keys and values as ``[T, kv_heads, head_dim]``.
        """
        segs = segments if isinstance(segments, Segments) else Segments(list(segments))
        plan = AttentionPlan(segs, tokens.device)
        x = self.embed[tokens].to(self.dtype)
        cos, sin = self._rope(plan.positions, x.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]
        grad = training and torch.is_grad_enabled()

        def layer(i: int, block: Block, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self._heads(*self._block_pre(x, block, rows, training), block, training)
            if grad:
                q, k = RopeFn.apply(q, cos, sin), RopeFn.apply(k, cos, sin)
            else:
                q, k = rope(q, cos, sin), rope(k, cos, sin)
            if kv_sink is not None:
                kv_sink(i, k, v)
            attn = plan.attend(q, k, v).reshape(-1, self.n_heads * self.head_dim)
            return self._block_post(x, attn, block, rows, training)

        for i, block in enumerate(self.blocks):
            if grad and self.checkpoint_layers:
                x = torch.utils.checkpoint.checkpoint(layer, i, block, x, use_reentrant=False)
            else:
                x = layer(i, block, x)
        return self._norm(x, self.norm, training)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache, rows: AdapterRows) -> torch.Tensor:
        """Feed one token per active cache row (``tokens`` is ``[n]``); returns hidden ``[n, hidden]``.

        Each row's token is written at position ``cache.lengths[row]``, which
        is then incremented.
        """
        n = cache.n
        positions = cache.lengths[:n].clone()
        needed = int(positions.max()) + 1
        if needed > cache.capacity:
            cache.grow(capacity=max(needed, cache.capacity * 2))
        x = self.embed[tokens].to(self.dtype)
        cos, sin = self._rope(positions, x.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]
        ar = torch.arange(n, device=tokens.device)
        key_pos = torch.arange(needed, device=tokens.device)
        # mask [n, 1, 1, needed]: key j is visible to row r iff j <= position of r
        mask = (key_pos[None, :] <= positions[:, None])[:, None, None, :]
        groups = self.n_heads // self.kv_heads
        scale = self.head_dim**-0.5
        for i, block in enumerate(self.blocks):
            q, k, v = self._heads(*self._block_pre(x, block, rows, False), block, False)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            kc, vc = cache.k[i], cache.v[i]
            kc[ar, :, positions] = k
            vc[ar, :, positions] = v
            keys = kc[:n, :, :needed]  # [n, kv, S, d] view
            vals = vc[:n, :, :needed]
            qg = q.view(n, self.kv_heads, groups, self.head_dim)
            scores = torch.matmul(qg, keys.transpose(-1, -2)) * scale  # [n, kv, g, S]
            scores = scores.masked_fill(~mask, float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            attn = torch.matmul(probs, vals).reshape(n, self.n_heads * self.head_dim)
            x = self._block_post(x, attn, block, rows, False)
        cache.lengths[:n] += 1
        return rms_norm(x, self.norm, self.eps)

    def extend(
        self, tokens: torch.Tensor, lens: Sequence[int], cache_rows: Sequence[int], cache: KVCache, rows: AdapterRows
    ) -> torch.Tensor:
        """Prefill after a cached prefix: feed ``lens[i]`` new tokens to cache row ``cache_rows[i]``.

        ``tokens`` ``[T]`` is the rows' new tokens packed in order; each row's
        tokens take positions ``cache.lengths[row] ..`` and attend to the row's
        cached keys and, causally, to each other; their keys/values are written
        into the cache and the row's length grows by ``lens[i]``. ``rows``
        indexes the packed *tokens* (``token_rows``). Returns the final hidden
        state of each row's last token, ``[len(cache_rows), hidden]``.
        """
        dev = tokens.device
        n_rows = len(cache_rows)
        row_idx = torch.tensor(list(cache_rows), dtype=torch.long, device=dev)
        starts = cache.lengths[row_idx].tolist()
        needed = max(s + n for s, n in zip(starts, lens, strict=True))
        if needed > cache.capacity:
            cache.grow(capacity=max(needed, cache.capacity * 2))
        positions = torch.cat([torch.arange(s, s + n, device=dev) for s, n in zip(starts, lens, strict=True)])
        tok_row = torch.cat([torch.full((n,), r, dtype=torch.long, device=dev) for r, n in zip(cache_rows, lens, strict=True)])
        lq = max(lens)
        q_idx = torch.zeros(n_rows, lq, dtype=torch.long)
        q_valid = torch.zeros(n_rows, lq, dtype=torch.bool)
        offset = 0
        for i, n in enumerate(lens):
            q_idx[i, :n] = torch.arange(offset, offset + n)
            q_valid[i, :n] = True
            offset += n
        q_idx, q_valid_flat = q_idx.to(dev), q_valid.view(-1).to(dev)
        # key j is visible to query t of row i iff j <= start_i + t (padded queries see key 0: finite softmax)
        q_pos = torch.tensor(starts, device=dev)[:, None] + torch.arange(lq, device=dev)[None, :]
        mask = (torch.arange(needed, device=dev)[None, None, :] <= q_pos[:, :, None])[:, None]
        x = self.embed[tokens].to(self.dtype)
        cos, sin = self._rope(positions, x.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]
        for i, block in enumerate(self.blocks):
            q, k, v = self._heads(*self._block_pre(x, block, rows, False), block, False)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            kc, vc = cache.k[i], cache.v[i]
            kc[tok_row, :, positions] = k
            vc[tok_row, :, positions] = v
            keys = kc.index_select(0, row_idx)[:, :, :needed]
            vals = vc.index_select(0, row_idx)[:, :, :needed]
            qp = q[q_idx].transpose(1, 2)  # [rows, H, lq, d]
            out = F.scaled_dot_product_attention(qp, keys, vals, attn_mask=mask, enable_gqa=True)
            attn = out.transpose(1, 2).reshape(-1, self.n_heads * self.head_dim)[q_valid_flat]
            x = self._block_post(x, attn, block, rows, False)
        cache.lengths[row_idx] += torch.tensor(list(lens), dtype=torch.long, device=dev)
        last = torch.tensor(list(lens), device=dev).cumsum(0) - 1
        return rms_norm(x[last], self.norm, self.eps)

    def adapter_version(self, adapter: str | None) -> tuple[object, ...]:
        """A key that changes whenever ``adapter``'s weights may have changed (prefix-cache scope).

        It combines the name, a counter bumped by every ``refresh_adapters`` (an
        adapter created, loaded or deleted) and the version counters of the
        adapter's LoRA tensors (an optimizer step updates them in place).
        """
        if adapter is None:
            return ("base",)
        versions: list[int] = []
        weights = [self.lm_head.lora.get(adapter)]
        for b in self.blocks:
            weights += [*b.lora_parts.get(adapter, {}).values(), b.o.lora.get(adapter), b.down.lora.get(adapter)]
        for w in weights:
            if w is not None:
                versions += (w.A._version, w.B._version)
        return (adapter, self._generation, hash(tuple(versions)))

    def logits(self, hidden: torch.Tensor, rows: AdapterRows, training: bool = False) -> torch.Tensor:
        """Unembedding of ``hidden`` ``[N, hidden]`` -> logits ``[N, vocab]`` (float32)."""
        return self._linear(hidden, self.lm_head, rows, training).float()

    def token_logprobs(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        adapter: str | None,
        *,
        training: bool = False,
        chunk: int = 512,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logprob of each ``targets[i]`` under the logits of ``hidden[i]``, chunked over rows.

        Never materialises ``[N, vocab]`` float32 logits for more than a chunk
        of rows at a time. Without LoRA on the unembedding a fused autograd
        function (``TokenLogprob``, ``FUSED_CHUNK`` rows at a time) keeps only
        an ``[N, hidden]`` gradient for the backward; with it, each ``chunk`` of
        rows is checkpointed and its logits recomputed in the backward. Returns ``(logprobs [N], entropy [N]
        or None)``; entropy is detached.
        """
        rows = single(adapter)
        out: list[torch.Tensor] = []
        ents: list[torch.Tensor] = []
        grad = training and torch.is_grad_enabled() and hidden.requires_grad

        def piece(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.logits(h, rows, training)
            lse = torch.logsumexp(logits, dim=-1)
            lp = logits.gather(-1, t[:, None]).squeeze(-1) - lse
            if not with_entropy:
                return lp, lse.new_zeros(0)
            with torch.no_grad():
                d = logits.detach()
                ent = lse.detach() - (torch.softmax(d, dim=-1) * d).sum(-1)
            return lp, ent

        fused = adapter is None or adapter not in self.lm_head.lora
        if fused:
            lp, ent = TokenLogprob.apply(
                hidden if grad else hidden.detach(), self.lm_head.weight, self.lm_head.packed, targets,
                with_entropy, FUSED_CHUNK,
            )
            return lp, (ent if with_entropy else None)
        for lo in range(0, hidden.shape[0], chunk):
            h, t = hidden[lo : lo + chunk], targets[lo : lo + chunk]
            if grad:
                lp, ent = torch.utils.checkpoint.checkpoint(piece, h, t, use_reentrant=False)
            else:
                lp, ent = piece(h, t)
            out.append(lp)
            ents.append(ent)
        empty = hidden.new_zeros(0)
        lps = torch.cat(out) if out else empty
        if not with_entropy:
            return lps, None
        return lps, (torch.cat(ents) if ents else empty)



def token_rows(adapters: Sequence[str | None], seq_lens: Sequence[int], device: Any = None) -> AdapterRows:
    """An ``AdapterRows`` plan over packed tokens from one adapter name per sequence."""
    if len(set(adapters)) <= 1:
        return single(adapters[0] if adapters else None)
    owner: dict[str | None, list[int]] = {}
    start = 0
    for name, n in zip(adapters, seq_lens, strict=True):
        owner.setdefault(name, []).extend(range(start, start + n))
        start += n
    return [(name, torch.tensor(idx, dtype=torch.long, device=device)) for name, idx in owner.items()]


def row_plan(adapters: Sequence[str | None], device: Any = None) -> AdapterRows:
    """An ``AdapterRows`` plan over batch rows from one adapter name per row."""
    return token_rows(adapters, [1] * len(adapters), device)


def _weight_of(module: Any) -> torch.Tensor | None:
    """The weight of an optional norm module (``None`` when the model has none)."""
    return None if module is None else module.weight


def _base(module: Any) -> Any:
    """The plain ``nn.Linear`` under a PEFT wrapper (or the module itself)."""
    return getattr(module, "base_layer", module)


def _fuse(linears: Sequence[Any]) -> Proj:
    """Concatenate linears' weights into one tensor and make the originals views into it (no copy kept)."""
    weight = torch.cat([lin.weight.data for lin in linears], dim=0)
    has_bias = [lin.bias is not None for lin in linears]
    bias = None
    if any(has_bias):
        bias = torch.cat(
            [lin.bias.data if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0]) for lin in linears]
        )
    offset = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = weight[offset : offset + rows]
        if lin.bias is not None and bias is not None:
            lin.bias.data = bias[offset : offset + rows]
        offset += rows
    return Proj(weight, bias)


def _lora_of(module: Any) -> dict[str, LoraWeights]:
    """The LoRA factors per adapter of a PEFT ``LoraLayer`` (empty for a plain linear)."""
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None:
        return {}
    out: dict[str, LoraWeights] = {}
    for name in lora_a:
        drop = module.lora_dropout[name]
        p = float(getattr(drop, "p", 0.0))
        out[name] = LoraWeights(lora_a[name].weight, module.lora_B[name].weight, float(module.scaling[name]), p)
    return out


def _lora_delta(x: torch.Tensor, w: LoraWeights, training: bool) -> torch.Tensor:
    if training and w.dropout > 0:
        x = F.dropout(x, w.dropout, training=True)
    return F.linear(F.linear(x, w.A), w.B) * w.scale


__all__ = [
    "ATTN_MODULES",
    "DEFAULT_PACK",
    "FAST_ROPE_TYPES",
    "MLP_MODULES",
    "PACK_MODES",
    "SUPPORTED_ARCHITECTURES",
    "UNEMBED_MODULES",
    "AdapterRows",
    "KVCache",
    "LlamaForward",
    "LoraWeights",
    "Segments",
    "can_pack",
    "fast_path_problem",
    "model_problem",
    "row_plan",
    "single",
    "token_rows",
]
