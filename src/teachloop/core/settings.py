"""Settings: where teachloop keeps its state and which parts it runs on.

Read from environment variables once per call of ``Settings.from_env()``; never
cached globally, so tests can point ``TEACHLOOP_HOME`` at a temporary folder.
Every variable, its default and meaning is listed in ``SETTINGS`` (and in
``docs/configuration.md``, which a test keeps in sync).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from teachloop.core.errors import ConfigurationError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

#: name -> (default, meaning). Defaults that depend on TEACHLOOP_HOME are shown symbolically.
SETTINGS: dict[str, tuple[str, str]] = {
    "TEACHLOOP_HOME": ("~/.teachloop", "folder for the embedded database, blobs and the model cache"),
    "TEACHLOOP_MODEL_CACHE": ("$TEACHLOOP_HOME/models", "folder of converted models (safetensors + tokenizer)"),
    "TEACHLOOP_DATABASE_URL": (
        "sqlite:///$TEACHLOOP_HOME/teachloop.db",
        "SQLAlchemy URL; postgresql://... for production (needs the 'postgres' extra)",
    ),
    "TEACHLOOP_BLOB_URL": ("$TEACHLOOP_HOME/blobs", "local folder or any fsspec URL (s3://bucket/prefix, ...)"),
    "TEACHLOOP_MODEL": (DEFAULT_MODEL, "base model served and trained by default: a cached name, a folder or a hub id"),
    "TEACHLOOP_ENGINE": ("torch", "sampling/training backend: torch (CPU or CUDA) or fake (unit tests)"),
    "TEACHLOOP_DEVICE": ("auto", "auto, cpu or cuda[:N]"),
    "TEACHLOOP_DTYPE": (
        "float32",
        "what the torch engine stores the base model's frozen weights in: float32, bfloat16 (half the memory, "
        "bfloat16 GEMMs; adapters, their gradients and optimizer state stay float32) or auto (bfloat16 on a GPU "
        "or a CPU with AMX or AVX512-BF16)",
    ),
    "TEACHLOOP_HOST": ("127.0.0.1", "address the API binds to"),
    "TEACHLOOP_PORT": ("8000", "port the API binds to"),
    "TEACHLOOP_API_KEY": ("", "API key the CLI's HTTP commands and the SDK send (never stored in plain text)"),
    "TEACHLOOP_URL": ("", "server the CLI's --remote commands and teachloop.Client talk to (e.g. http://127.0.0.1:8000)"),
    "TEACHLOOP_SKIP_MODEL_PULL": ("", "set to 1 to start `teachloop up` without pulling the default model"),
    "TEACHLOOP_MAX_BODY_BYTES": (
        str(DEFAULT_MAX_BODY_BYTES),
        "largest HTTP request body the API accepts (bytes); a bigger one is refused with 413 before it is read",
    ),
    "TEACHLOOP_LOG_FORMAT": (
        "text",
        "server log lines: text, or json (one object per line, with the request's trace_id)",
    ),
    "TEACHLOOP_METRICS_ORG_LABELS": (
        "",
        "set to 1 to label /metrics series by org_id as well as deployment (off: nothing names an organisation)",
    ),
    "TEACHLOOP_PREFIX_CACHE_MB": (
        "256",
        "MiB of prompt-prefix keys/values the serving engine keeps for reuse (LRU); 0 turns prefix caching off",
    ),
    "TEACHLOOP_UPSTREAM_KEY": (
        "",
        "Fernet key (urlsafe base64 of 32 bytes) that encrypts upstream API keys at rest; upstream arms need it",
    ),
}


class Settings(BaseModel):
    """Resolved settings. Build with ``Settings.from_env()`` or directly in tests."""

    model_config = ConfigDict(frozen=True)

    home: Path = Field(description="Folder for the embedded database, blobs and model cache.")
    model_cache: Path = Field(description="Folder holding one sub-folder per converted model.")
    database_url: str = Field(description="SQLAlchemy database URL.")
    blob_url: str = Field(description="Root of the blob store: a local path or an fsspec URL.")
    model: str = Field(default=DEFAULT_MODEL, description="Default base model name, folder or hub id.")
    engine: Literal["torch", "fake"] = Field(default="torch", description="Engine backend.")
    device: str = Field(default="auto", description="auto, cpu or cuda[:N].")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        default="float32",
        description="What the torch engine stores its frozen weights in: float32, bfloat16 (half the memory, "
        "bfloat16 GEMMs; what is trained stays float32) or auto (bfloat16 where the CPU has AMX or AVX512-BF16 "
        "or on a GPU).",
    )
    host: str = Field(default="127.0.0.1", description="API bind address.")
    port: int = Field(default=8000, ge=1, le=65535, description="API port.")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1, description="Largest request body accepted.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Server log lines: text, or json with the request's trace_id on each line."
    )
    prefix_cache_mb: int = Field(
        default=256, ge=0,
        description="MiB of prompt-prefix keys/values the serving engine keeps for reuse; 0 turns prefix caching off.",
    )
    metrics_org_labels: bool = Field(
        default=False, description="Label /metrics series by org_id too (off: no label names an organisation)."
    )
    upstream_key: SecretStr = Field(
        default=SecretStr(""), description="Fernet key encrypting upstream API keys at rest (empty: no upstream arms)."
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); raises ``ConfigurationError`` on bad values."""
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("TEACHLOOP_HOME") or "~/.teachloop").expanduser()
        engine = env.get("TEACHLOOP_ENGINE", "torch")
        if engine not in ("torch", "fake"):
            raise ConfigurationError(
                f"TEACHLOOP_ENGINE must be torch or fake; got {engine!r}", param="TEACHLOOP_ENGINE"
            )
        port_raw = env.get("TEACHLOOP_PORT", "8000")
        try:
            port = int(port_raw)
        except ValueError:
            raise ConfigurationError(
                f"TEACHLOOP_PORT must be an integer, got {port_raw!r}", param="TEACHLOOP_PORT"
            ) from None
        if not 1 <= port <= 65535:
            raise ConfigurationError(f"TEACHLOOP_PORT must be 1..65535, got {port}", param="TEACHLOOP_PORT")
        body_raw = env.get("TEACHLOOP_MAX_BODY_BYTES") or str(DEFAULT_MAX_BODY_BYTES)
        try:
            max_body = int(body_raw)
        except ValueError:
            max_body = 0
        if max_body < 1:
            raise ConfigurationError(
                f"TEACHLOOP_MAX_BODY_BYTES must be a positive integer (bytes), got {body_raw!r}",
                param="TEACHLOOP_MAX_BODY_BYTES",
            )
        log_format = env.get("TEACHLOOP_LOG_FORMAT") or "text"
        if log_format not in ("text", "json"):
            raise ConfigurationError(
                f"TEACHLOOP_LOG_FORMAT must be text or json, got {log_format!r}", param="TEACHLOOP_LOG_FORMAT"
            )
        org_labels = (env.get("TEACHLOOP_METRICS_ORG_LABELS") or "").strip().lower()
        if org_labels not in ("", "0", "1", "false", "true", "no", "yes"):
            raise ConfigurationError(
                f"TEACHLOOP_METRICS_ORG_LABELS must be 1 or 0, got {org_labels!r}",
                param="TEACHLOOP_METRICS_ORG_LABELS",
            )
        dtype = (env.get("TEACHLOOP_DTYPE") or "float32").strip().lower()
        if dtype not in ("float32", "bfloat16", "auto"):
            raise ConfigurationError(
                f"TEACHLOOP_DTYPE must be float32, bfloat16 or auto, got {dtype!r}", param="TEACHLOOP_DTYPE"
            )
        prefix_raw = env.get("TEACHLOOP_PREFIX_CACHE_MB") or "256"
        if not prefix_raw.isdigit():
            raise ConfigurationError(
                f"TEACHLOOP_PREFIX_CACHE_MB must be a whole number of MiB (0 turns it off), got {prefix_raw!r}",
                param="TEACHLOOP_PREFIX_CACHE_MB",
            )
        upstream_key = (env.get("TEACHLOOP_UPSTREAM_KEY") or "").strip()
        if upstream_key and not _fernet_key(upstream_key):
            raise ConfigurationError(
                "TEACHLOOP_UPSTREAM_KEY must be a Fernet key: urlsafe base64 of 32 bytes (44 characters; "
                "make one with `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)",
                param="TEACHLOOP_UPSTREAM_KEY",
            )
        return cls(
            home=home,
            model_cache=Path(env.get("TEACHLOOP_MODEL_CACHE") or home / "models").expanduser(),
            database_url=env.get("TEACHLOOP_DATABASE_URL") or f"sqlite:///{home / 'teachloop.db'}",
            blob_url=env.get("TEACHLOOP_BLOB_URL") or str(home / "blobs"),
            model=env.get("TEACHLOOP_MODEL") or DEFAULT_MODEL,
            engine=engine,  # type: ignore[arg-type]
            device=env.get("TEACHLOOP_DEVICE", "auto"),
            dtype=dtype,  # type: ignore[arg-type]
            host=env.get("TEACHLOOP_HOST", "127.0.0.1"),
            port=port,
            max_body_bytes=max_body,
            log_format=log_format,  # type: ignore[arg-type]
            metrics_org_labels=org_labels in ("1", "true", "yes"),
            prefix_cache_mb=int(prefix_raw),
            upstream_key=SecretStr(upstream_key),
        )


def _fernet_key(value: str) -> bool:
    """Whether ``value`` decodes as urlsafe base64 to exactly 32 bytes (what Fernet takes)."""
    try:
        return len(base64.urlsafe_b64decode(value.encode("ascii"))) == 32 and len(value) == 44
    except (ValueError, UnicodeEncodeError):
        return False


__all__ = ["DEFAULT_MODEL", "SETTINGS", "Settings"]
