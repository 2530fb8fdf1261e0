"""Build the configured engine from settings.

``load_engine(settings)`` resolves the base model through the model cache
(pulling the default model on first use) and returns the backend named by
``TEACHLOOP_ENGINE``: ``torch`` (CPU or CUDA) or ``fake`` (unit tests).
"""

from __future__ import annotations

from teachloop.core.errors import ConfigurationError
from teachloop.core.settings import DEFAULT_MODEL, Settings
from teachloop.engine.base import Engine


def load_engine(settings: Settings, model: str | None = None, *, pull: bool = True) -> Engine:
    """The engine for ``model`` (default ``settings.model``) on ``settings.device``."""
    if settings.engine == "fake":
        from teachloop.engine.fake import FakeEngine

        return FakeEngine()
    if settings.engine != "torch":
        raise ConfigurationError(f"unknown engine {settings.engine!r}; use torch or fake", param="TEACHLOOP_ENGINE")
    from teachloop.engine.models import ensure_default_model, resolve_model
    from teachloop.engine.torch_engine import TorchEngine

    name = model or settings.model
    path = ensure_default_model(settings) if pull and name == DEFAULT_MODEL else resolve_model(settings, name)
    return TorchEngine(path, device=settings.device)


__all__ = ["load_engine"]
