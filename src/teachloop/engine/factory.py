"""The one runtime loader of engines: ``serve``, ``train``, ``loop``, the worker and the CLI build here.

``load_model(settings, model)`` resolves the base model through the model
cache (pulling the default model, or a known name, on first use when ``pull``)
and returns a ``LoadedModel``: the engine of the backend named by
``TEACHLOOP_ENGINE`` plus the model's chat ``Renderer``, folder and name.

- ``torch`` (default): ``TorchEngine`` on ``settings.device`` (or ``device=``), its frozen
  weights in ``settings.dtype`` (or ``dtype=``);
  extra keyword options (``pack="lm_head"``) go to its constructor.
- ``fake``: ``FakeEngine``, a millisecond bigram model for tests and dry runs,
  sized to the model's tokenizer (vocabulary, end-of-turn token, ``decode``) so
  rollouts, graders and stop strings see real text. It never downloads: the
  model folder must be cached already (a test's tiny model, say).

``load_engine`` is the engine alone (with ``fake`` and no model folder cached,
a bare ``FakeEngine``). Nothing else in teachloop constructs an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teachloop.core.errors import ConfigurationError, NotFound
from teachloop.core.settings import DEFAULT_MODEL, Settings
from teachloop.engine.base import Engine
from teachloop.render import Renderer


@dataclass(frozen=True)
class LoadedModel:
    """A base model ready to sample and train.

    Attributes:
        engine: the engine holding the base model (no adapters yet).
        renderer: the model's chat renderer (messages <-> token ids).
        path: the model folder it was loaded from.
        name: the model's name as configured (what deployments and runs record as ``base_model``).
    """

    engine: Engine
    renderer: Renderer
    path: Path
    name: str


def _check_backend(settings: Settings) -> None:
    if settings.engine not in ("torch", "fake"):
        raise ConfigurationError(f"unknown engine {settings.engine!r}; use torch or fake", param="TEACHLOOP_ENGINE")


def model_path(settings: Settings, model: str | None = None, *, pull: bool = True, progress: Any = None) -> Path:
    """The folder of ``model`` (default ``settings.model``); pulled first when ``pull`` and missing.

    Never downloads with ``TEACHLOOP_ENGINE=fake``.
    """
    from teachloop.engine.models import ensure_default_model, resolve_model

    name = model or settings.model
    download = pull and settings.engine != "fake"
    if download and name == DEFAULT_MODEL:
        return ensure_default_model(settings, progress=progress or False)
    return resolve_model(settings, name, download=download, progress=progress)


def _fake(renderer: Renderer | None) -> Engine:
    from teachloop.engine.fake import FakeEngine

    if renderer is None:
        return FakeEngine()
    tokenizer: Any = renderer.tokenizer
    stops = renderer.stop_token_ids()
    return FakeEngine(vocab_size=len(tokenizer), eos_token_id=stops[0] if stops else 0,
                      decode=lambda tokens: tokenizer.decode(list(tokens)))


def _torch(path: Path, settings: Settings, opts: dict[str, Any]) -> Engine:
    from teachloop.engine.torch_engine import TorchEngine

    options = {"device": settings.device, "dtype": settings.dtype, **opts}
    return TorchEngine(path, **options)


def load_model(settings: Settings, model: str | None = None, *, pull: bool = True, progress: Any = None,
               **opts: Any) -> LoadedModel:
    """The engine and renderer of ``model`` (default ``settings.model``) on the configured backend.

    ``opts`` go to the torch engine's constructor (``device=``, ``dtype=``, ``pack=``); the fake engine ignores them.
    """
    _check_backend(settings)
    name = model or settings.model
    path = model_path(settings, name, pull=pull, progress=progress)
    renderer = Renderer.from_pretrained(path)
    engine = _fake(renderer) if settings.engine == "fake" else _torch(path, settings, opts)
    return LoadedModel(engine=engine, renderer=renderer, path=path, name=name)


def load_engine(settings: Settings, model: str | None = None, *, pull: bool = True, **opts: Any) -> Engine:
    """The engine for ``model`` (default ``settings.model``) on the configured backend (see the module doc)."""
    _check_backend(settings)
    if settings.engine == "fake":
        try:
            path = model_path(settings, model, pull=False)
        except NotFound:
            return _fake(None)
        return _fake(Renderer.from_pretrained(path))
    return _torch(model_path(settings, model, pull=pull), settings, opts)


__all__ = ["LoadedModel", "load_engine", "load_model", "model_path"]
