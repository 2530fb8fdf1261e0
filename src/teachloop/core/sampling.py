"""Sampling parameters and sampled sequences, the engine's sampling contract.

Logprob convention (used by every engine and by ``Engine.logprobs``): the
logprob of a sampled token is ``log softmax(logits)[token]`` of the *unscaled*
model distribution -- temperature 1, no top-k / top-p truncation, no
penalties, logit bias or grammar mask -- at the position that produced it. This is the policy the trainer differentiates, so
the ratio ``exp(logprobs_train - logprobs_sampler)`` is 1 for an unchanged
adapter whatever temperature was used to sample.

Samples per prompt: ``n`` is 1 ..``MAX_SAMPLES_PER_PROMPT`` (1024, the largest GRPO
group ``train`` accepts); every engine checks it with ``check_n`` before any work, so
a typo such as ``n=10**6`` is a one-line ``InvalidInput`` rather than a KV cache of a
million rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from teachloop.core.errors import InvalidInput

#: ``"cancelled"``: the caller stopped the request before either happened (serving only)
StopReason = Literal["stop", "length", "cancelled"]

#: The most continuations one ``sample`` call may ask for per prompt (``n``).
MAX_SAMPLES_PER_PROMPT = 1024


def check_n(n: int) -> int:
    """``n`` if it is a valid number of samples per prompt (1 .. ``MAX_SAMPLES_PER_PROMPT``).

    Raises ``InvalidInput`` (param ``n``) otherwise; ``bool`` is not a number here.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidInput(f"n must be an integer, got {n!r}", param="n")
    if not 1 <= n <= MAX_SAMPLES_PER_PROMPT:
        raise InvalidInput(f"n must be between 1 and {MAX_SAMPLES_PER_PROMPT}, got {n}", param="n")
    return n


class SamplingParams(BaseModel):
    """How to sample one or more continuations.

    ``stop`` follows the Tinker convention: ``None`` stops at the model's EOS
    token(s); a non-empty list of strings or token ids replaces EOS as the stop
    condition; an empty list disables stopping except by ``max_tokens``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=128, ge=1, le=1_000_000, description="New tokens at most.")
    temperature: float = Field(default=1.0, ge=0.0, le=100.0, description="0 means greedy (argmax).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus mass kept.")
    top_k: int = Field(default=-1, ge=-1, description="Keep the k most likely tokens; -1 keeps all.")
    stop: tuple[str, ...] | tuple[int, ...] | None = Field(
        default=None, description="Stop strings or stop token ids; None means the model's EOS."
    )
    seed: int | None = Field(default=None, description="Seed for reproducible sampling; None is random.")
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0,
        description="Subtracted once from the logit of every token already sampled in this sequence (OpenAI's rule).",
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0,
        description="Subtracted from a token's logit once per time it was already sampled in this sequence.",
    )
    logit_bias: tuple[tuple[int, float], ...] = Field(
        default=(), description="(token id, bias in [-100, 100]) pairs added to the logits before sampling."
    )

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, v: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        for token, bias in v:
            if token < 0:
                raise ValueError(f"logit_bias token id {token} is negative")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias for token {token} is {bias}; biases are in [-100, 100]")
        return v

    @property
    def shapes_logits(self) -> bool:
        """Whether penalties or biases change the logits before sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    @field_validator("top_k")
    @classmethod
    def _top_k_not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("top_k must be -1 (disabled) or >= 1")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _normalise_stop(cls, v: object) -> object:
        if isinstance(v, str):
            v = (v,)
        if isinstance(v, (list, tuple)):
            if v and not (
                all(isinstance(x, str) for x in v)
                or all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            ):
                raise ValueError("stop must be all strings or all token ids")
            if any(isinstance(x, str) and not x for x in v):
                raise ValueError("stop strings must be non-empty")
            if any(isinstance(x, int) and x < 0 for x in v):
                raise ValueError("stop token ids must be >= 0")
            return tuple(v)
        return v


@dataclass(frozen=True, slots=True)
class SampledSequence:
    """One sampled continuation.

    Attributes:
        tokens: the new token ids, including the token that triggered a stop
            (EOS, a stop token id, or the last token of a stop string).
        logprobs: ``logprobs[i]`` is the unscaled-model logprob of ``tokens[i]``
            (see the module docstring), one per token.
        stop_reason: ``"stop"`` if a stop condition ended it, ``"length"`` if
            ``max_tokens`` did, ``"cancelled"`` if the caller dropped it first.
    """

    tokens: list[int]
    logprobs: list[float]
    stop_reason: StopReason
    extras: dict[str, object] = field(default_factory=dict)


__all__ = ["MAX_SAMPLES_PER_PROMPT", "SampledSequence", "SamplingParams", "StopReason", "check_n"]
