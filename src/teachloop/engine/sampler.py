"""Batched sampling with a KV cache, shared prefill and continuous batching.

A ``DecodeBatch`` holds the sequences being generated. With a ``PrefixCache``
(``engine/prefix.py``) a prompt whose first blocks were prefilled before, under
the same adapter version, reuses their keys/values and computes only the rest. ``add`` prefills new
prompts (all prompts of one call in one packed forward; the ``n`` samples of a
prompt share that prefill -- its keys/values are written once into each of
their cache rows) and samples their first token; ``step`` advances every
active sequence by one token in one forward pass, whatever adapter each uses.
New requests can be added between any two steps (continuous batching), and a
finished sequence leaves the batch at once, so rows are always dense.

Logprob convention: see ``core/sampling.py`` -- the returned logprob of a token
is under the unscaled model distribution (temperature 1, no truncation).

This module knows nothing about chat templates; stop *strings* are checked
with a ``decode`` callable the engine passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from teachloop.core.errors import InvalidInput, PayloadTooLarge
from teachloop.core.sampling import SampledSequence, SamplingParams, StopReason, check_n
from teachloop.engine.base import TokenConstraint
from teachloop.engine.llama import KVCache, LlamaForward, Segments, row_plan, token_rows
from teachloop.engine.prefix import PrefixCache


@dataclass
class SampleRequest:
    """One prompt to sample ``n`` continuations of.

    Attributes:
        prompt: prompt token ids.
        n: continuations wanted; they share the prompt's prefill.
        params: sampling parameters.
        adapter: adapter name, or None for the base model.
        generator: RNG for this request; None builds one from ``params.seed``.
        top_logprobs: also record the k most likely tokens at each step.
        on_token: called as ``on_token(sample_index, token, logprob)`` for
            every new token (streaming).
        key: anything the caller wants back on the results.
        constraint: builds the ``TokenConstraint`` of sample ``i`` as ``constraint(i)``
            (constrained decoding, e.g. a JSON-schema grammar); None samples freely.
    """

    prompt: Sequence[int]
    n: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None
    generator: torch.Generator | None = None
    top_logprobs: int = 0
    on_token: Callable[[int, int, float], None] | None = None
    key: Any = None
    constraint: Callable[[int], TokenConstraint] | None = None


@dataclass
class _Seq:
    request: SampleRequest
    index: int  # which of the request's n samples
    gen: torch.Generator
    max_tokens: int
    stop_ids: frozenset[int]
    stop_strs: tuple[str, ...]
    constraint: TokenConstraint | None = None
    #: why this sequence alone failed (its constraint raised); it leaves the batch, the others go on
    error: Exception | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def result(self) -> SampledSequence:
        extras: dict[str, object] = {"top_logprobs": self.top} if self.request.top_logprobs else {}
        return SampledSequence(list(self.tokens), list(self.logprobs), self.stop_reason or "length", extras)


class DecodeBatch:
    """The running batch of one engine: add requests, step, collect finished sequences."""

    def __init__(
        self,
        fw: LlamaForward,
        *,
        eos_token_ids: Sequence[int],
        decode: Callable[[list[int]], str],
        context_length: int,
        device: Any = "cpu",
        initial_capacity: int = 256,
        initial_rows: int = 8,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.fw = fw
        self.eos = frozenset(int(t) for t in eos_token_ids)
        self.decode = decode
        self.context_length = context_length
        self.device = torch.device(device)
        with torch.inference_mode():  # the cache only ever lives in inference mode (see ``add``)
            self.cache = KVCache(
                len(fw.blocks), fw.kv_heads, fw.head_dim, rows=initial_rows, capacity=initial_capacity,
                dtype=fw.dtype, device=self.device,
            )
        #: shared prompt-prefix keys/values (``engine.prefix``); None prefills every prompt whole
        self.prefix = prefix_cache
        self.rows: list[_Seq] = []  # row i of the cache belongs to rows[i]
        self._pending: list[int] = []  # the last sampled token of each row, not yet in the cache
        self._plan: Any = None

    # ------------------------------------------------------------------ public
    @property
    def active(self) -> int:
        """Sequences still generating."""
        return len(self.rows)

    def validate(self, req: SampleRequest) -> None:
        """Raise ``InvalidInput``/``PayloadTooLarge`` for a request this batch cannot run."""
        check_n(req.n)
        if not req.prompt:
            raise InvalidInput("the prompt is empty", param="prompt")
        vocab = self.fw.vocab
        bad = [t for t in req.prompt if not 0 <= int(t) < vocab]
        if bad:
            raise InvalidInput(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
        if len(req.prompt) >= self.context_length:
            raise PayloadTooLarge(
                f"the prompt has {len(req.prompt)} tokens; the model's context is {self.context_length} tokens",
                param="prompt",
            )
        if req.adapter is not None and req.adapter not in self.fw.adapter_names():
            raise InvalidInput(f"unknown adapter {req.adapter!r}", param="adapter")
        if req.top_logprobs < 0 or req.top_logprobs > 20:
            raise InvalidInput("top_logprobs must be between 0 and 20", param="top_logprobs")

    @torch.inference_mode()
    def add(self, requests: Sequence[SampleRequest]) -> list[_Seq]:
        """Prefill ``requests`` and sample their first tokens.

        Prompts with no cached prefix are prefilled together in one packed
        forward; with a ``prefix_cache``, the others copy their longest cached
        prefix into their rows and prefill only the rest (``LlamaForward.extend``),
        and every prompt's new full blocks are added to the cache. Returns every new sequence; those that already finished (a one-token
        stop) are not kept in the batch. Like ``step`` and ``drop``, the whole
        call -- forward, cache growth, sampling and retiring rows -- runs in one
        inference-mode context: tensors the cache allocates while growing are
        inference tensors, so every later in-place update of them must be too.
        """
        for req in requests:
            self.validate(req)
        if not requests:
            return []
        cache = self.cache
        lens = [len(r.prompt) for r in requests]
        first_row = len(self.rows)
        total_rows = first_row + sum(r.n for r in requests)
        need_cap = max(lens) + 1
        if total_rows > cache.rows or need_cap > cache.capacity:
            cache.grow(rows=max(total_rows, cache.rows * 2 if total_rows > cache.rows else 0), capacity=need_cap)
        # rows for each request, contiguous
        row_start: list[int] = []
        r0 = first_row
        for req in requests:
            row_start.append(r0)
            r0 += req.n
        versions = {a: self.fw.adapter_version(a) for a in {r.adapter for r in requests}} if self.prefix is not None else {}
        scopes = [versions[r.adapter] for r in requests] if self.prefix is not None else []
        cached = [0] * len(requests)
        if self.prefix is not None:
            for j, req in enumerate(requests):
                cached[j] = self._reuse_prefix(scopes[j], req, row_start[j])
        cold = [j for j in range(len(requests)) if cached[j] == 0]
        warm = [j for j in range(len(requests)) if cached[j] > 0]
        last = torch.empty((len(requests), self.fw.hidden), dtype=self.fw.dtype, device=self.device)
        if cold:
            last[torch.tensor(cold, device=self.device)] = self._prefill([requests[j] for j in cold],
                                                                          [row_start[j] for j in cold])
        if warm:
            last[torch.tensor(warm, device=self.device)] = self._prefill_after(
                [requests[j] for j in warm], [row_start[j] for j in warm], [cached[j] for j in warm]
            )
        if self.prefix is not None:
            for j, req in enumerate(requests):
                full = len(req.prompt) // self.prefix.block_size * self.prefix.block_size
                if full > cached[j]:  # new full blocks to keep
                    r = row_start[j]
                    kv = torch.stack([torch.stack([cache.k[i][r, :, :full], cache.v[i][r, :, :full]])
                                      for i in range(len(cache.k))])
                    self.prefix.insert(scopes[j], list(req.prompt), kv, start=cached[j])
        logits = self.fw.logits(last, row_plan([r.adapter for r in requests], self.device))
        new: list[_Seq] = []
        for j, req in enumerate(requests):
            gen = req.generator or _generator(req.params.seed, self.device)
            stops = req.params.stop
            stop_ids = self.eos if stops is None else frozenset(t for t in stops if isinstance(t, int))
            stop_strs = () if stops is None else tuple(t for t in stops if isinstance(t, str))
            room = self.context_length - lens[j]
            for i in range(req.n):
                constraint = req.constraint(i) if req.constraint is not None else None
                new.append(_Seq(req, i, gen, min(req.params.max_tokens, room), stop_ids, stop_strs, constraint))
        cache.n = total_rows
        self.rows.extend(new)
        self._pending.extend([0] * len(new))
        expanded = logits.repeat_interleave(torch.tensor([r.n for r in requests], device=self.device), dim=0)
        self._sample_into(list(range(first_row, total_rows)), expanded)
        self._plan = None
        self._retire()
        return new

    def _prefill(self, requests: Sequence[SampleRequest], row_start: Sequence[int]) -> torch.Tensor:
        """Prefill whole prompts in one packed forward, writing each into its ``n`` rows; last hidden states."""
        cache = self.cache
        lens = [len(r.prompt) for r in requests]
        offsets = [0]
        for n in lens:
            offsets.append(offsets[-1] + n)

        def sink(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
            kc, vc = cache.k[layer], cache.v[layer]
            for j, req in enumerate(requests):
                a, b = offsets[j], offsets[j + 1]
                rs = slice(row_start[j], row_start[j] + req.n)
                kc[rs, :, : lens[j]] = k[a:b].transpose(0, 1).unsqueeze(0)
                vc[rs, :, : lens[j]] = v[a:b].transpose(0, 1).unsqueeze(0)

        tokens = torch.tensor([int(t) for r in requests for t in r.prompt], dtype=torch.long, device=self.device)
        hidden = self.fw.forward_packed(
            tokens, Segments(lens), token_rows([r.adapter for r in requests], lens, self.device), kv_sink=sink
        )
        for j, req in enumerate(requests):
            cache.lengths[row_start[j] : row_start[j] + req.n] = lens[j]
        return hidden[torch.tensor(offsets[1:], device=self.device) - 1]

    def _reuse_prefix(self, scope: object, req: SampleRequest, row: int) -> int:
        """Copy the longest cached prefix of ``req``'s prompt into ``row``; returns its length (0: none)."""
        assert self.prefix is not None
        length, kv = self.prefix.lookup(scope, list(req.prompt), limit=len(req.prompt) - 1)
        if kv is None:
            return 0
        for i in range(len(self.cache.k)):
            self.cache.k[i][row, :, :length] = kv[i, 0]
            self.cache.v[i][row, :, :length] = kv[i, 1]
        self.cache.lengths[row] = length
        return length

    def _prefill_after(
        self, requests: Sequence[SampleRequest], row_start: Sequence[int], cached: Sequence[int]
    ) -> torch.Tensor:
        """Prefill the uncached tail of each prompt after its cached prefix; copy it to the request's other rows."""
        cache = self.cache
        tails = [len(r.prompt) - c for r, c in zip(requests, cached, strict=True)]
        tokens = torch.tensor(
            [int(t) for r, c in zip(requests, cached, strict=True) for t in r.prompt[c:]], dtype=torch.long,
            device=self.device,
        )
        hidden = self.fw.extend(tokens, tails, row_start, cache, token_rows([r.adapter for r in requests], tails,
                                                                               self.device))
        for j, req in enumerate(requests):
            for extra in range(1, req.n):
                cache.copy_row(row_start[j], row_start[j] + extra)
        return hidden

    @torch.inference_mode()
    def step(self) -> list[_Seq]:
        """Advance every active sequence by one token; returns the sequences that finished."""
        if not self.rows:
            return []
        if self._plan is None:
            self._plan = row_plan([s.request.adapter for s in self.rows], self.device)
        tokens = torch.tensor(self._pending, dtype=torch.long, device=self.device)
        hidden = self.fw.decode_step(tokens, self.cache, self._plan)
        logits = self.fw.logits(hidden, self._plan)
        self._sample_into(list(range(len(self.rows))), logits)
        return self._retire()

    @torch.inference_mode()
    def drop(self, seqs: Sequence[_Seq]) -> list[_Seq]:
        """Free the rows of ``seqs`` now (a cancelled request); returns those that were still running.

        Their ``stop_reason`` becomes ``"cancelled"``; the other rows are untouched.
        """
        live = {id(s) for s in self.rows}
        dropped = [s for s in seqs if id(s) in live and s.stop_reason is None]
        for seq in dropped:
            seq.stop_reason = "cancelled"
        return self._retire() if dropped else []

    def run(self) -> None:
        """Step until every sequence has finished."""
        while self.rows:
            self.step()

    # ---------------------------------------------------------------- internals
    def _sample_into(self, row_ids: list[int], logits: torch.Tensor) -> None:
        """Choose the next token of each row in ``row_ids`` from ``logits`` (aligned rows).

        The returned logprobs are of the raw ``logits``; the token is chosen from
        ``_shaped`` scores (penalties, logit bias, grammar mask) when a row asks for them.
        """
        lse = torch.logsumexp(logits, dim=-1)  # shared by the sampler and the returned logprobs
        scores = self._shaped(row_ids, logits)
        groups: dict[int, list[int]] = {}
        for pos, r in enumerate(row_ids):
            groups.setdefault(id(self.rows[r].gen), []).append(pos)
        chosen = torch.empty(len(row_ids), dtype=torch.long, device=logits.device)
        for unordered in groups.values():
            # a generator's draws go to its request's samples in sample order, whatever rows they occupy
            # (retiring rows reorders them), so a seeded request samples the same batched or alone
            positions = sorted(unordered, key=lambda p: self.rows[row_ids[p]].index)
            seq0 = self.rows[row_ids[positions[0]]]
            whole = positions == list(range(len(row_ids)))  # one generator for every row, in order: no gather
            idx = None if whole else torch.tensor(positions, device=logits.device)
            sub = scores if idx is None else scores.index_select(0, idx)
            params_same = all(self.rows[row_ids[p]].request.params == seq0.request.params for p in positions)
            if params_same:
                picked = _choose(sub, seq0.request.params, seq0.gen)
                if idx is None:
                    chosen = picked
                else:
                    chosen[idx] = picked
            else:
                for k, p in enumerate(positions):
                    one = _choose(sub[k : k + 1], self.rows[row_ids[p]].request.params, seq0.gen)
                    chosen[p] = one[0]
        token_lp = logits.gather(-1, chosen[:, None]).squeeze(-1) - lse
        chosen_l, lp_l = chosen.tolist(), token_lp.tolist()
        want_top = max((self.rows[r].request.top_logprobs for r in row_ids), default=0)
        top_v: list[list[float]] | None = None
        top_i: list[list[int]] | None = None
        if want_top:
            values, indices = logits.topk(want_top, dim=-1)
            top_v, top_i = (values - lse[:, None]).tolist(), indices.tolist()
        for pos, r in enumerate(row_ids):
            seq = self.rows[r]
            tok, lp = chosen_l[pos], lp_l[pos]
            seq.tokens.append(tok)
            seq.logprobs.append(lp)
            k = seq.request.top_logprobs
            if k and top_v is not None and top_i is not None:
                seq.top.append(list(zip(top_i[pos][:k], top_v[pos][:k], strict=True)))
            self._pending[r] = tok
            if seq.constraint is not None and seq.error is None:
                try:
                    seq.constraint.accept(tok)
                except Exception as err:  # one request's broken grammar must not fail its batch
                    seq.error = err
            if seq.request.on_token is not None:
                seq.request.on_token(seq.index, tok, lp)
            seq.stop_reason = "stop" if seq.error is not None else self._stop_reason(seq, tok)

    def _shaped(self, row_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """``logits``, or a copy with each row's penalties, logit bias and grammar mask applied.

        Penalties follow OpenAI: a token sampled ``c`` times so far in this
        sequence loses ``c * frequency_penalty + (c > 0) * presence_penalty``.
        A grammar that allows no token at all is a bug in the constraint: the
        row then keeps its unmasked scores rather than failing the batch.
        """
        shaped = [
            pos for pos, r in enumerate(row_ids)
            if self.rows[r].constraint is not None or self.rows[r].request.params.shapes_logits
        ]
        if not shaped:
            return logits
        scores = logits.clone()
        vocab = scores.shape[-1]
        for pos in shaped:
            seq = self.rows[row_ids[pos]]
            params = seq.request.params
            row = scores[pos]
            if (params.presence_penalty or params.frequency_penalty) and seq.tokens:
                counts = torch.bincount(torch.tensor(seq.tokens, device=row.device), minlength=vocab)[:vocab]
                row -= counts.to(row.dtype) * params.frequency_penalty + (counts > 0).to(row.dtype) * params.presence_penalty
            for token, bias in params.logit_bias:
                if token < vocab:
                    row[token] += bias
            if seq.constraint is not None:
                try:
                    allowed = seq.constraint.allowed(vocab)
                except Exception as err:  # recorded on the sequence; it ends after this token
                    seq.error = err
                    continue
                if allowed is not None:
                    allowed = allowed.to(row.device)
                    if bool(allowed.any()):
                        row.masked_fill_(~allowed, float("-inf"))
        return scores

    def _stop_reason(self, seq: _Seq, tok: int) -> StopReason | None:
        if tok in seq.stop_ids:
            return "stop"
        if seq.constraint is not None and seq.constraint.finished:
            return "stop"
        if seq.stop_strs:
            tail = self.decode(seq.tokens[-(max(len(s) for s in seq.stop_strs) + 8) :])
            if any(s in tail for s in seq.stop_strs):
                return "stop"
        if len(seq.tokens) >= seq.max_tokens:
            return "length"
        return None

    def _retire(self) -> list[_Seq]:
        """Drop finished rows from the batch (swap-with-last keeps rows dense)."""
        done = [i for i, s in enumerate(self.rows) if s.stop_reason is not None]
        finished = [self.rows[i] for i in done]
        for i in sorted(done, reverse=True):
            last = len(self.rows) - 1
            self.cache.remove(i)
            self.rows[i] = self.rows[last]
            self._pending[i] = self._pending[last]
            self.rows.pop()
            self._pending.pop()
        if done:
            self._plan = None
        return finished


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


#: entries per block of the two-level inverse CDF in ``_choose``
CDF_BLOCK = 256


def _choose(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> torch.Tensor:
    """Next tokens ``[rows]`` for ``logits`` ``[rows, vocab]`` under ``params``.

    Sampling is by inverse CDF, one uniform draw per row (``torch.multinomial``
    draws an exponential variate per vocabulary entry, which costs more than
    the decode step's unembedding). The CDF is two-level so that nothing runs a
    sequential scan over the vocabulary: the probabilities are summed per block
    of ``CDF_BLOCK`` entries, the draw picks a block on the cumulative block sums
    (float64), then an entry on the cumulative sum inside that one block -- the
    same distribution as a flat CDF, at ~1/10 of its cost.
    """
    if params.temperature == 0:
        return logits.argmax(-1)
    scores = logits / params.temperature if params.temperature != 1.0 else logits
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = scores.topk(params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        cum = probs.cumsum(-1)
        drop = (cum - probs) > params.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    rows, vocab = probs.shape
    n_blocks = -(-vocab // CDF_BLOCK)
    if n_blocks * CDF_BLOCK != vocab:
        probs = F.pad(probs, (0, n_blocks * CDF_BLOCK - vocab))
    blocks = probs.view(rows, n_blocks, CDF_BLOCK)
    block_cdf = blocks.sum(-1).double().cumsum_(-1)  # [rows, n_blocks]; a 256-entry float32 sum is exact to ~1e-7
    u = torch.rand((rows, 1), generator=gen, dtype=torch.float64, device=probs.device) * block_cdf[:, -1:]
    b = torch.searchsorted(block_cdf, u).clamp_(max=n_blocks - 1)  # [rows, 1]
    before = torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp_(min=0)), torch.zeros_like(u))
    inner = blocks[torch.arange(rows, device=probs.device), b.squeeze(-1)]  # [rows, CDF_BLOCK]
    inner_cdf = inner.cumsum(-1, dtype=torch.float64) + before
    j = torch.searchsorted(inner_cdf, u).clamp_(max=CDF_BLOCK - 1)
    picked = (b * CDF_BLOCK + j).squeeze(-1).clamp_(max=vocab - 1)
    # a float tie at the top of a block's CDF could land on a zero-probability entry: step back to a real one
    zero = torch.gather(scores, -1, picked[:, None]).squeeze(-1) == float("-inf")
    if bool(zero.any()):
        picked[zero] = scores[zero].argmax(-1)
    return picked


def sample_all(
    batch: DecodeBatch, requests: Sequence[SampleRequest]
) -> list[list[SampledSequence]]:
    """Run ``requests`` to completion on an empty ``batch``; results per request, in sample order."""
    seqs = batch.add(requests)
    batch.run()
    out: list[list[SampledSequence]] = [[] for _ in requests]
    index = {id(r): j for j, r in enumerate(requests)}
    for s in seqs:
        out[index[id(s.request)]].append(s.result())
    return out


__all__ = ["DecodeBatch", "SampleRequest", "sample_all"]
