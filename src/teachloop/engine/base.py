"""The engine interface: one base model, named LoRA adapters, sampling and training.

Every backend (``TorchEngine`` on CPU/CUDA, ``FakeEngine`` for unit tests, a
vLLM sampler on GPUs) implements ``Engine``. Callers hold token ids, never
text: tokenisation is ``render/``'s job. Adapter names are free strings chosen
by the caller (``None`` always means the base model with adapters disabled --
the reference policy).

Contracts shared by all backends:

* ``sample`` returns per prompt ``n`` ``SampledSequence``s whose ``logprobs``
  are under the unscaled model distribution (see ``core/sampling.py``) and
  agree with ``logprobs()`` recomputation within ``LOGPROB_TOLERANCE``.
* ``forward_backward`` accumulates gradients into the adapter until
  ``optim_step``; losses are sums over tokens (``core/training.py``).
* A checkpoint holds the adapter, the optimizer state and the step counter;
  ``load_checkpoint`` then ``optim_step`` gives the same result as an
  uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from teachloop.core.sampling import SampledSequence, SamplingParams
from teachloop.core.training import (
    AdamParams,
    Datum,
    ForwardBackwardResult,
    LoraSpec,
    LossConfig,
    LossFn,
    OptimStepResult,
)

if TYPE_CHECKING:
    import torch

#: max |sample logprob - recomputed logprob| in float32 on CPU (measured ~1e-4; prepacked
#: oneDNN weights and a KV cache change the summation order, nothing else).
LOGPROB_TOLERANCE = 2e-3

LogprobsFor = Literal["all", "weighted"]


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter loaded on the engine.

    Attributes:
        name: the adapter's name on this engine.
        spec: its LoRA shape.
        step: optimizer steps taken since creation (or restored from a checkpoint).
        trainable_params: number of trainable parameters.
    """

    name: str
    spec: LoraSpec
    step: int
    trainable_params: int


class TokenConstraint(Protocol):
    """The state of one sequence's constrained decoding (a grammar matcher, say).

    The sampler asks ``allowed`` before choosing each token, samples only among
    the allowed ones, then calls ``accept`` with the token it chose. Once
    ``finished`` is true the sequence ends with stop reason ``"stop"``. One
    object serves one sequence; ``SampleRequest.constraint`` builds one per sample.
    Implementations live above the engine (``serve/grammar.py``); the engine only
    calls these three members, on its compute thread.
    """

    def allowed(self, vocab_size: int) -> torch.Tensor | None:
        """A bool tensor ``[vocab_size]`` (on the CPU) of the tokens allowed next; None allows all."""
        ...

    def accept(self, token: int) -> None:
        """Advance past ``token`` (one the last ``allowed`` permitted)."""
        ...

    @property
    def finished(self) -> bool:
        """Whether the constrained text is complete (the sequence stops here)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """What every engine backend provides."""

    @property
    def model_name(self) -> str:
        """Name or path of the base model."""
        ...

    @property
    def vocab_size(self) -> int:
        """Size of the token vocabulary."""
        ...

    @property
    def context_length(self) -> int:
        """Longest sequence (prompt + completion) the model takes."""
        ...

    @property
    def eos_token_ids(self) -> list[int]:
        """Tokens that end a reply when ``SamplingParams.stop`` is None."""
        ...

    # adapters
    def create_adapter(self, name: str, spec: LoraSpec) -> AdapterInfo:
        """Create a fresh adapter (B = 0, so it starts equal to the base)."""
        ...

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter and its optimizer state."""
        ...

    def list_adapters(self) -> list[AdapterInfo]:
        """Adapters currently loaded."""
        ...

    def copy_adapter(self, src: str, dst: str) -> AdapterInfo:
        """Copy ``src``'s weights into ``dst`` (created with the same spec if missing)."""
        ...

    def has_adapter(self, name: str) -> bool:
        """Whether an adapter named ``name`` is loaded."""
        ...

    def save_adapter(self, name: str, path: Path) -> Path:
        """Write the adapter in PEFT format (adapter_config.json + adapter_model.safetensors)."""
        ...

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Load a PEFT-format adapter folder under ``name`` (replacing one of that name)."""
        ...

    def save_checkpoint(self, name: str, path: Path) -> Path:
        """Adapter + optimizer state + step counter into folder ``path``."""
        ...

    def load_checkpoint(self, name: str, path: Path) -> AdapterInfo:
        """Restore what ``save_checkpoint`` wrote, under ``name``."""
        ...

    def merge_adapter(self, name: str, path: Path) -> Path:
        """Export base + adapter merged into a plain Hugging Face model folder."""
        ...

    # sampling
    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: str | None = None,
        *,
        prefix_cache: bool = False,
    ) -> list[list[SampledSequence]]:
        """``n`` continuations of each prompt. ``prefix_cache``: reuse the keys/values of prompt prefixes an
        earlier call prefilled (the same tokens and logprobs as a whole prefill); an engine without a prefix
        cache ignores it."""
        ...

    def logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]:
        """Per sequence, ``out[i]`` = log p(seq[i + 1] | seq[: i + 1]) (length ``len(seq) - 1``)."""
        ...

    # training
    def forward_backward(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig | None = None,
        *,
        adapter: str,
        logprobs_for: LogprobsFor = "all",
    ) -> ForwardBackwardResult:
        """Compute ``loss`` on ``batch`` and accumulate its gradient into ``adapter``."""
        ...

    def forward(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig | None = None,
        *,
        adapter: str | None,
        logprobs_for: LogprobsFor = "all",
    ) -> ForwardBackwardResult:
        """Same outputs as ``forward_backward`` without touching gradients."""
        ...

    def optim_step(self, adapter: str, params: AdamParams) -> OptimStepResult:
        """One AdamW step on the accumulated gradients, then zero them."""
        ...


__all__ = ["LOGPROB_TOLERANCE", "AdapterInfo", "Engine", "LogprobsFor", "TokenConstraint"]
