"""Domain types of the Tinker-compatible training API (``tinker/``, ``app/routes/tinker.py``).

Identifiers follow the official SDK's own scheme, because the SDK derives some
of them client-side:

* a training model (a *training run* in Tinker's REST vocabulary) is
  ``"{session_id}:train:{model_seq_id}"`` (``model_id``);
* a sampling session (a *sampler*) is ``"{session_id}:sample:{n}"`` (``sampler_id``);
* a checkpoint is addressed by a ``TinkerPath``,
  ``tinker://{model_id}/{weights|sampler_weights|external_weights}/{name}``.

Failures of a request are reported to the SDK with one of three categories
(``ErrorCategory``): ``user`` (the request is wrong: unknown id, bad tensor,
unknown loss), ``server`` (the server failed) or ``unknown``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.errors import InvalidInput

#: How a failed request is classified on the wire (``RequestFailedError.category`` in the SDK).
ErrorCategory = Literal["user", "server", "unknown"]

#: The three kinds of checkpoint a tinker path can name.
CheckpointKind = Literal["weights", "sampler_weights", "external_weights"]

#: Tinker's ``checkpoint_type`` for each kind.
CHECKPOINT_TYPES: dict[str, str] = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def model_id(session_id: str, model_seq_id: int) -> str:
    """The id of the ``model_seq_id``-th training model of a session (the SDK's own scheme)."""
    return f"{session_id}:train:{model_seq_id}"


def sampler_id(session_id: str, sampling_seq_id: int) -> str:
    """The id of the ``sampling_seq_id``-th sampling session of a session."""
    return f"{session_id}:sample:{sampling_seq_id}"


def check_name(name: str, what: str = "checkpoint name") -> str:
    """``name`` if it is 1-128 letters, digits, ``.``, ``_`` or ``-`` (starting alphanumeric); else ``InvalidInput``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{what} {name!r} must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
            param="path",
        )
    return name


@dataclass(frozen=True, slots=True)
class TinkerPath:
    """A parsed ``tinker://{model_id}/{kind}/{name}`` checkpoint address.

    Attributes:
        model_id: the training model (training run) the checkpoint belongs to.
        kind: ``weights`` (adapter + optimizer), ``sampler_weights`` (adapter only) or
            ``external_weights`` (a merged Hugging Face export).
        name: the checkpoint's name within its run and kind.
    """

    model_id: str
    kind: CheckpointKind
    name: str

    @classmethod
    def parse(cls, text: str) -> TinkerPath:
        """Parse ``text``; ``InvalidInput`` (param ``path``) naming what is wrong."""
        if not isinstance(text, str) or not text.startswith("tinker://"):
            raise InvalidInput(f"{text!r} is not a tinker:// path", param="path")
        parts = text[len("tinker://"):].split("/")
        if len(parts) != 3 or not parts[0]:
            raise InvalidInput(f"{text!r} must read tinker://<training run>/<kind>/<name>", param="path")
        run, kind, name = parts
        if kind not in CHECKPOINT_TYPES:
            raise InvalidInput(
                f"{text!r}: the kind must be weights, sampler_weights or external_weights, not {kind!r}", param="path"
            )
        check_name(name)
        return cls(run, kind, name)  # type: ignore[arg-type]

    @property
    def checkpoint_id(self) -> str:
        """``{kind}/{name}``, the id the REST API uses under a training run."""
        return f"{self.kind}/{self.name}"

    def __str__(self) -> str:
        return f"tinker://{self.model_id}/{self.kind}/{self.name}"


class LoraShape(BaseModel):
    """The LoRA configuration a Tinker client asks for (``LoraConfig`` in the SDK)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    rank: int = Field(default=32, ge=1, le=1024, description="LoRA rank.")
    seed: int | None = Field(default=None, description="Initialisation seed; None is random.")
    train_unembed: bool = Field(default=True, description="Adapt the unembedding.")
    train_mlp: bool = Field(default=True, description="Adapt the MLP projections.")
    train_attn: bool = Field(default=True, description="Adapt the attention projections.")


class CheckpointRecord(BaseModel):
    """A checkpoint saved through the Tinker API, as the REST API lists it.

    Attributes:
        path: its ``tinker://`` address.
        kind: ``weights``, ``sampler_weights`` or ``external_weights``.
        created_at: when it was saved.
        size_bytes: the bytes it occupies in the blob store.
        public: whether it was published.
        expires_at: when it is deleted (None: never).
        user_metadata: free string pairs the client attached.
        adapter_version_id: the adapter version it was published as, if any.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    kind: CheckpointKind
    created_at: datetime
    size_bytes: int | None = None
    public: bool = False
    expires_at: datetime | None = None
    user_metadata: dict[str, str] | None = None
    adapter_version_id: str | None = None


__all__ = [
    "CHECKPOINT_TYPES",
    "CheckpointKind",
    "CheckpointRecord",
    "ErrorCategory",
    "LoraShape",
    "TinkerPath",
    "check_name",
    "model_id",
    "sampler_id",
]
