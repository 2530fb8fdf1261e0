"""Prefix caching: keys and values of prompt prefixes, shared across requests, LRU under a byte cap.

Prompts of one product share long prefixes (the chat template's default system
prompt, a product's own system prompt, few-shot examples). ``PrefixCache``
keeps the keys/values every layer computed for each *full block* of
``block_size`` prompt tokens, keyed by a digest chained over all the tokens up
to the end of that block and by a *scope*: the adapter (name and weight
version) the keys were computed under -- LoRA on any projection changes the
keys of later layers, so blocks are never shared across adapters, and a
trained or reloaded adapter gets a new scope (``LlamaForward.adapter_version``).

``lookup`` returns the longest run of cached blocks that starts at position 0
(at most ``limit`` tokens: a prefill must keep at least one token to compute);
``insert`` stores the blocks of a prompt the batch has just prefilled.
Eviction is least-recently-used by block; a lookup touches a chain's blocks
from its last to its first, so a prefix's first blocks are evicted after its
later ones and a chain never loses its head while keeping its tail.

Entries are plain tensors ``[layers, 2 (k, v), kv_heads, block_size, head_dim]``
cloned out of a batch's ``KVCache``. The cache is used from the engine's compute
thread only; ``stats`` may be read from any thread.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

#: tokens per cached block
DEFAULT_BLOCK_SIZE = 16
#: bytes of keys/values kept at most (SmolLM2-135M: ~46 KB per token, so ~5,800 tokens)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counters of a ``PrefixCache``.

    Attributes:
        queries: prompt tokens looked up (every prefill of a prompt counts its length).
        hits: prompt tokens whose keys/values came from the cache instead of a forward pass.
        blocks: blocks held now.
        bytes: bytes of keys/values held now.
        max_bytes: the byte cap.
        evictions: blocks evicted so far.
    """

    queries: int
    hits: int
    blocks: int
    bytes: int
    max_bytes: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens served from the cache (0 when nothing was looked up)."""
        return self.hits / self.queries if self.queries else 0.0


class PrefixCache:
    """Block-wise LRU cache of prompt-prefix keys/values (see the module docstring)."""

    def __init__(self, *, block_size: int = DEFAULT_BLOCK_SIZE, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._queries = 0
        self._hits = 0
        self._evictions = 0

    def _keys(self, scope: Hashable, tokens: Sequence[int], n_blocks: int) -> list[bytes]:
        h = hashlib.blake2b(repr(scope).encode(), digest_size=16).digest()
        out = []
        b = self.block_size
        for i in range(n_blocks):
            h = hashlib.blake2b(h + array("q", tokens[i * b : (i + 1) * b]).tobytes(), digest_size=16).digest()
            out.append(h)
        return out

    def lookup(self, scope: Hashable, tokens: Sequence[int], limit: int) -> tuple[int, torch.Tensor | None]:
        """``(cached length, keys/values [layers, 2, kv, length, d])`` of the longest cached prefix <= ``limit``."""
        self._queries += len(tokens)
        n_blocks = max(0, min(limit, len(tokens))) // self.block_size
        found: list[torch.Tensor] = []
        keys = self._keys(scope, tokens, n_blocks)
        for key in keys:
            entry = self._blocks.get(key)
            if entry is None:
                break
            found.append(entry)
        for key in reversed(keys[: len(found)]):
            self._blocks.move_to_end(key)
        if not found:
            return 0, None
        length = len(found) * self.block_size
        self._hits += length
        return length, (torch.cat(found, dim=3) if len(found) > 1 else found[0])

    def insert(self, scope: Hashable, tokens: Sequence[int], kv: torch.Tensor, start: int = 0) -> None:
        """Store the full blocks of ``tokens`` from block ``start // block_size`` on.

        ``kv`` is ``[layers, 2, kv_heads, >= len(tokens) rounded down to blocks, head_dim]``: the
        keys/values of ``tokens`` from position 0.
        """
        b = self.block_size
        n_blocks = len(tokens) // b
        keys = self._keys(scope, tokens, n_blocks)
        for i in range(start // b, n_blocks):
            key = keys[i]
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            block = kv[:, :, :, i * b : (i + 1) * b].clone()
            size = block.numel() * block.element_size()
            if size > self.max_bytes:
                return
            self._blocks[key] = block
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._blocks:
            _, old = self._blocks.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
            self._evictions += 1

    def clear(self) -> None:
        """Drop every block (counters are kept)."""
        self._blocks.clear()
        self._bytes = 0

    def stats(self) -> PrefixCacheStats:
        """The counters now."""
        return PrefixCacheStats(
            queries=self._queries, hits=self._hits, blocks=len(self._blocks), bytes=self._bytes,
            max_bytes=self.max_bytes, evictions=self._evictions,
        )


__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_MAX_BYTES", "PrefixCache", "PrefixCacheStats"]
