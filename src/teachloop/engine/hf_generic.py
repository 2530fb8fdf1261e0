"""The generic forward: any causal LM through transformers' own model class, behind ``LlamaForward``'s interface.

``LlamaForward`` (``engine/llama.py``) is the fast path for the Llama block
structure. Every other model transformers can load (GPT-2, Phi, Gemma, Qwen3-MoE,
a Llama with ``dynamic`` rope, ...) runs here instead, so the engine refuses no
causal LM: ``build_forward`` picks the path. Slower, but exact -- the logits are
the model's own ``forward``, PEFT's LoRA layers included:

* ``forward_packed`` runs every segment as one row of a padded batch (a child
  segment with its parent's tokens in front; only its own positions are kept),
  one ``forward`` per adapter in the plan, with the adapter made active on
  PEFT's LoRA layers for that call. Gradients flow into the LoRA weights, so
  ``forward_backward`` / ``optim_step`` train as on the fast path.
* What it returns as "hidden states" are already the logits (``hidden`` is the
  vocabulary size and ``logits`` is the identity), so final-logit soft-capping,
  logit scales and untied heads of any model are honoured.
* Sampling keeps the ``KVCache`` protocol of ``DecodeBatch`` but stores *token
  ids* in it (one layer, one head, ``head_dim`` 1, float32: exact below 2**24),
  so continuous batching, row moves, ``n`` samples sharing a prefill and the
  prefix cache all work unchanged. Each row also keeps the model's own cache
  object (``KVCache.extra``): ``decode_step`` / ``extend`` feed a row only its new
  tokens against it, or, when the row has none that fits (a fresh row, a prefix
  copied in, an adapter updated since), its whole token history once. Rows run
  one model call each (batch size 1: the model's caches of rows of different
  lengths do not stack generically), so a decode step costs ``n`` small calls
  where the fast path makes one batched one -- the price of being generic.

LoRA targets: ``lora_target_groups`` classifies the model's own linear layers
into attention, MLP and unembedding groups by their module path, so a
``LoraSpec``'s ``train_attn`` / ``train_mlp`` / ``train_unembed`` mean the same here.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from teachloop.core.errors import InvalidInput, ModelError
from teachloop.engine.llama import (
    ATTN_MODULES,
    MLP_MODULES,
    UNEMBED_MODULES,
    AdapterRows,
    KVCache,
    LlamaForward,
    Segments,
    model_problem,
)

#: module-path parts that mark a linear layer as attention / MLP (lower-case substring match)
_ATTN_MARKS = ("attn", "attention")
_MLP_MARKS = ("mlp", "ffn", "feed_forward", "feedforward", "experts")
#: leaf names of mixture-of-experts routers: linear, under ``mlp``, but never adapted
_ROUTER_LEAVES = ("gate", "router", "shared_expert_gate")


def build_forward(hf_model: Any, *, pack: bool | str | None = None) -> LlamaForward:
    """``LlamaForward`` when the model fits the fast path (``fast_path_problem``), else ``GenericForward``.

    Typed as ``LlamaForward`` for its callers (``DecodeBatch``, ``TorchEngine``): ``GenericForward`` has
    the same attributes and methods (a test drives both through the engine).
    """
    if model_problem(hf_model) is None:
        return LlamaForward(hf_model, pack=pack)
    return cast(LlamaForward, GenericForward(hf_model))


class GenericForward:
    """``LlamaForward``'s interface over a (PEFT-wrapped) transformers causal LM, through its own ``forward``."""

    #: which path this is (``LlamaForward`` has no such attribute: it is the fast one)
    path = "generic"

    def __init__(self, hf_model: Any) -> None:
        head = hf_model.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise ModelError(f"{type(hf_model).__name__} has no output embedding; it is not a causal LM")
        self.hf_model = hf_model
        self.config = hf_model.config
        self.vocab: int = int(head.weight.shape[0])
        #: "hidden states" here are logits (see the module doc)
        self.hidden: int = self.vocab
        # the token-id cache DecodeBatch allocates from these: one layer, one head, one float per position
        self.blocks: list[None] = [None]
        self.kv_heads = 1
        self.head_dim = 1
        self.embed = torch.zeros(0, dtype=torch.float32, device=head.weight.device)
        #: the dtype of the "hidden states" (logits) ``DecodeBatch`` allocates
        self.dtype = torch.float32
        #: accepted for interface parity (``train/`` sets it); the generic path keeps every activation
        self.checkpoint_layers = False
        self._layers: list[Any] = []
        self._generation = 0
        self._head_name = next((n for n, m in hf_model.named_modules() if m is head), "lm_head")
        #: the name of the model-cache argument and output (transformers 5.25 renamed ``past_key_values``)
        self._cache_arg = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
        self.refresh_adapters()

    # ----------------------------------------------------------------- adapters
    def refresh_adapters(self) -> None:
        """Re-read which PEFT LoRA layers the model has (after an adapter is added, loaded or removed)."""
        self._layers = [m for m in self.hf_model.modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)]
        self._generation += 1

    def adapter_names(self) -> set[str]:
        """Names of the adapters present on the model."""
        names: set[str] = set()
        for layer in self._layers:
            names |= set(layer.lora_A.keys())
        return names

    def adapter_version(self, adapter: str | None) -> tuple[object, ...]:
        """A key that changes whenever ``adapter``'s weights may have changed (prefix-cache scope)."""
        if adapter is None:
            return ("base",)
        versions: list[int] = []
        for layer in self._layers:
            if adapter in layer.lora_A:
                versions += (layer.lora_A[adapter].weight._version, layer.lora_B[adapter].weight._version)
        return (adapter, self._generation, hash(tuple(versions)))

    def lora_target_groups(self) -> dict[str, list[str]]:
        """PEFT ``target_modules`` names per LoRA group (``attn``, ``mlp``, ``unembed``) of this model.

        A leaf name is used when every module of that name is a linear layer of
        one group (``q_proj``, ``fc1``), the full module path otherwise (GPT-2's
        ``c_proj`` is in both attention and MLP). Linear layers under no attention
        or MLP module, and mixture-of-experts routers, are in no group.
        """
        groups: dict[str, list[str]] = {"attn": [], "mlp": [], "unembed": [self._head_name]}
        leaf_groups: dict[str, set[str]] = {}
        leaf_count: dict[str, int] = {}  # every module of that leaf name (PEFT matches a leaf name anywhere)
        classified: dict[str, int] = {}  # those of them in a group
        paths: list[tuple[str, str]] = []
        for name, module in self.hf_model.named_modules():
            if name == self._head_name or ".lora_" in name or name.endswith(".base_layer"):
                continue
            leaf = name.rsplit(".", 1)[-1]
            leaf_count[leaf] = leaf_count.get(leaf, 0) + 1
            if not _is_linear(getattr(module, "base_layer", module)):  # a PEFT LoRA layer counts as its base
                continue
            parts = name.lower().split(".")
            group = (
                "attn" if any(m in p for p in parts for m in _ATTN_MARKS)
                else "mlp" if any(m in p for p in parts for m in _MLP_MARKS)
                else None
            )
            if group is None or leaf in _ROUTER_LEAVES:
                continue
            leaf_groups.setdefault(leaf, set()).add(group)
            classified[leaf] = classified.get(leaf, 0) + 1
            paths.append((name, group))
        for name, group in paths:
            leaf = name.rsplit(".", 1)[-1]
            unique = len(leaf_groups[leaf]) == 1 and leaf_count[leaf] == classified[leaf]
            target = leaf if unique else name
            if target not in groups[group]:
                groups[group].append(target)
        return groups

    @contextlib.contextmanager
    def _using(self, adapter: str | None, training: bool) -> Iterator[None]:
        """Make ``adapter`` (None: none) the only active one on every LoRA layer; LoRA dropout on when training."""
        saved = [(layer, layer._active_adapter, layer._disable_adapters) for layer in self._layers]
        dropouts = []
        try:
            for layer in self._layers:
                if adapter is None:
                    layer._disable_adapters = True
                else:
                    layer._disable_adapters = False
                    layer._active_adapter = [adapter]
                    if adapter in layer.lora_dropout:  # a ModuleDict: no ``get``
                        drop = layer.lora_dropout[adapter]
                        dropouts.append(drop)
                        drop.train(training)
            yield
        finally:
            for layer, active, disabled in saved:
                layer._active_adapter = active
                layer._disable_adapters = disabled
            for drop in dropouts:
                drop.train(False)

    # ---------------------------------------------------------------- the model
    def _run(self, seqs: Sequence[torch.Tensor], adapter: str | None, training: bool) -> list[torch.Tensor]:
        """The model's logits ``[len(seq), vocab]`` (float32) for each token sequence, one padded batch."""
        lens = [int(s.shape[0]) for s in seqs]
        width = max(lens)
        device = seqs[0].device
        ids = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        for i, s in enumerate(seqs):
            ids[i, : lens[i]] = s
            mask[i, : lens[i]] = 1
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": False}
        if min(lens) != width:  # right padding: real tokens see only real tokens before them
            kwargs["attention_mask"] = mask
        with self._using(adapter, training):
            logits = self.hf_model(**kwargs).logits
        return [logits[i, : lens[i]].float() for i in range(len(seqs))]

    def _by_adapter(
        self, items: Sequence[tuple[str | None, torch.Tensor]], training: bool
    ) -> list[torch.Tensor]:
        """``_run`` over ``(adapter, tokens)`` items, one batch per adapter; results in item order."""
        out: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[str | None, list[int]] = {}
        for i, (adapter, _) in enumerate(items):
            groups.setdefault(adapter, []).append(i)
        for adapter, idx in groups.items():
            for i, logits in zip(idx, self._run([items[i][1] for i in idx], adapter, training), strict=True):
                out[i] = logits
        return [t for t in out if t is not None]

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
        """Logits ``[T, vocab]`` of packed segments (``LlamaForward.forward_packed``'s contract, logits for hidden).

        ``kv_sink(0, ids, ids)`` receives the tokens as ``[T, 1, 1]`` floats (the token-id cache).
        """
        segs = segments if isinstance(segments, Segments) else Segments(list(segments))
        if segs.starts is not None and any(segs.starts):
            raise ModelError("the generic forward cannot continue a segment from an outside context (starts)")
        parent = segs.parent or [-1] * len(segs.lens)
        owner = _token_adapters(rows, int(tokens.shape[0]))
        offsets = [0]
        for n in segs.lens:
            offsets.append(offsets[-1] + n)
        items: list[tuple[str | None, torch.Tensor]] = []
        for i, n in enumerate(segs.lens):
            own = tokens[offsets[i] : offsets[i] + n]
            p = parent[i]
            full = own if p < 0 else torch.cat((tokens[offsets[p] : offsets[p + 1]], own))
            items.append((owner[offsets[i]], full))
        logits = self._by_adapter(items, training)
        pieces = [lg[lg.shape[0] - n :] for lg, n in zip(logits, segs.lens, strict=True)]
        if kv_sink is not None:
            ids = tokens.to(torch.float32).view(-1, 1, 1)
            kv_sink(0, ids, ids)
        return torch.cat(pieces)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache, rows: AdapterRows) -> torch.Tensor:
        """Append one token per active cache row and return each row's next-token logits ``[n, vocab]``."""
        n = cache.n
        return self.extend(tokens, [1] * n, list(range(n)), cache, rows)

    def extend(
        self, tokens: torch.Tensor, lens: Sequence[int], cache_rows: Sequence[int], cache: KVCache, rows: AdapterRows
    ) -> torch.Tensor:
        """Append ``lens[i]`` packed tokens to cache row ``cache_rows[i]``; last-token logits ``[rows, vocab]``."""
        starts = [int(cache.lengths[r]) for r in cache_rows]
        needed = max(s + n for s, n in zip(starts, lens, strict=True))
        if needed > cache.capacity:
            cache.grow(capacity=max(needed, cache.capacity * 2))
        owner = _token_adapters(rows, int(tokens.shape[0]))
        ids = tokens.to(torch.float32)
        groups: dict[str | None, list[tuple[int, int, int, int]]] = {}
        offset = 0
        for i, (r, s, n) in enumerate(zip(cache_rows, starts, lens, strict=True)):
            cache.k[0][r, 0, s : s + n, 0] = ids[offset : offset + n]
            cache.v[0][r, 0, s : s + n, 0] = ids[offset : offset + n]
            cache.lengths[r] = s + n
            groups.setdefault(owner[offset], []).append((i, r, s, n))
            offset += n
        out: list[torch.Tensor] = [tokens.new_zeros(0, dtype=torch.float32)] * len(cache_rows)
        for adapter, members in groups.items():
            scope = self.adapter_version(adapter)
            with self._using(adapter, False):
                for i, r, s, n in members:
                    out[i] = self._row_step(cache, r, s, n, scope)
        return torch.stack(out)

    def _row_step(self, cache: KVCache, row: int, start: int, n: int, scope: tuple[object, ...]) -> torch.Tensor:
        """Next-token logits of cache row ``row`` after its ``n`` new tokens (written at ``start``).

        Reuses the row's model cache (``cache.extra[row]``) when it covers exactly the ``start`` tokens
        before under the same adapter version; otherwise runs the row's whole history. Keeps the new cache.
        """
        state = cache.extra[row]
        history = cache.k[0][row, 0, : start + n, 0].to(torch.long)
        if isinstance(state, _RowState) and state.length == start and state.scope == scope:
            result = self.hf_model(input_ids=history[start:][None], use_cache=True, **{self._cache_arg: state.past})
        else:
            result = self.hf_model(input_ids=history[None], use_cache=True)
        past = getattr(result, self._cache_arg, None)
        cache.extra[row] = None if past is None else _RowState(past, start + n, scope)
        return result.logits[0, -1].float()

    def logits(self, hidden: torch.Tensor, rows: AdapterRows, training: bool = False) -> torch.Tensor:
        """The identity: this path's "hidden states" are the logits already (float32)."""
        return hidden.float()

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
        """Logprob of each ``targets[i]`` under the logits ``hidden[i]``; entropy (detached) when asked."""
        logits = hidden.float()
        lse = torch.logsumexp(logits, dim=-1)
        lp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
        if not with_entropy:
            return lp, None
        with torch.no_grad():
            d = logits.detach()
            ent = lse.detach() - (torch.softmax(d, dim=-1) * d).sum(-1)
        return lp, ent


@dataclass
class _RowState:
    """One sampling row's own model cache (``KVCache.extra``): ``past`` covers its first ``length`` tokens."""

    past: Any
    length: int
    scope: tuple[object, ...]  # the adapter version it was computed under


def _is_linear(module: Any) -> bool:
    """A projection PEFT can put LoRA on: ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _token_adapters(rows: AdapterRows, count: int) -> list[str | None]:
    """The adapter of each of ``count`` packed tokens (or batch rows) under an ``AdapterRows`` plan."""
    owner: list[str | None] = [None] * count
    for adapter, idx in rows:
        if idx is None:
            owner = [adapter] * count
        else:
            for i in idx.tolist():
                owner[i] = adapter
    return owner


#: the LoRA target groups of the fast path, for symmetry with ``GenericForward.lora_target_groups``
FAST_TARGET_GROUPS: dict[str, list[str]] = {
    "attn": list(ATTN_MODULES),
    "mlp": list(MLP_MODULES),
    "unembed": list(UNEMBED_MODULES),
}


def lora_target_groups(fw: object) -> dict[str, list[str]]:
    """PEFT target names per LoRA group for the forward ``fw`` (the fast path's fixed names, or the model's own)."""
    if isinstance(fw, GenericForward):
        return fw.lora_target_groups()
    return {k: list(v) for k, v in FAST_TARGET_GROUPS.items()}


def lora_targets(fw: object, *, attn: bool, mlp: bool, unembed: bool) -> list[str]:
    """PEFT ``target_modules`` for a ``LoraSpec``'s groups on ``fw``'s model.

    A requested group the model has no adaptable linear layers in is skipped (a mixture-of-experts
    model whose experts are fused tensors has no MLP ones: its adapter covers attention only); if
    nothing is left, ``InvalidInput`` names the groups asked for.
    """
    groups = lora_target_groups(fw)
    wanted = [key for key, on in (("attn", attn), ("mlp", mlp), ("unembed", unembed)) if on]
    out = [name for key in wanted for name in groups[key]]
    if not out:
        asked = ", ".join(f"train_{key}" for key in wanted)
        raise InvalidInput(f"this model has no linear layers LoRA can adapt in {asked}", param="lora")
    return out


__all__ = ["FAST_TARGET_GROUPS", "GenericForward", "build_forward", "lora_target_groups", "lora_targets"]
