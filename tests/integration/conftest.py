"""Shared fixtures of the integration suites: the real default model, pulled once per checkout.

``default_model_dir`` (session scope) is the folder of SmolLM2-135M-Instruct in the
shared model cache ``$TEACHLOOP_MODEL_CACHE`` or, by default, ``<repo>/.cache/models``.
The first run downloads 93 MB and converts (~30 s); later runs find it in well under
a second. Concurrent test processes wait on the cache's lock instead of converting twice.

``_close_tinker_clients`` (every test): each ``tinker.ServiceClient`` a test or a cookbook
recipe made is closed when the test ends, while its server still runs. A client left open
keeps its session's heartbeat thread calling a server the module has shut down, printing a
warning every few seconds until the process exits. So is a shadow client holder (what
``SamplingClient.from_sampler_handle`` makes: it heartbeats the same session, and the SDK
has no public close for it), so every ``InternalClientHolder`` the test made is closed too.
A close that does not answer in 30 s is a pytest warning naming the error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from teachloop.core.settings import DEFAULT_MODEL, Settings  # noqa: E402


def shared_model_cache() -> Path:
    """The model cache the test suites share: ``$TEACHLOOP_MODEL_CACHE`` or ``<repo>/.cache/models``."""
    return Path(os.environ.get("TEACHLOOP_MODEL_CACHE") or REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def model_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings with a throw-away home, the shared model cache and the default model."""
    home = tmp_path_factory.mktemp("teachloop-home")
    return Settings.from_env(
        {
            "TEACHLOOP_HOME": str(home),
            "TEACHLOOP_MODEL_CACHE": str(shared_model_cache()),
            "TEACHLOOP_MODEL": DEFAULT_MODEL,
        }
    )


@pytest.fixture(scope="session")
def default_model_dir(model_settings: Settings) -> Path:
    """The converted default model's folder (pulled on first use)."""
    from teachloop.engine.models import ensure_default_model

    return ensure_default_model(model_settings, progress=True)


@pytest.fixture(autouse=True)
def _close_tinker_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every ``tinker.ServiceClient`` made during the test, then every client holder, at its end (see the
    module docstring)."""
    try:
        import tinker
        from tinker.lib.internal_client_holder import InternalClientHolder
    except ImportError:
        yield
        return
    made: list[Any] = []
    holders: list[Any] = []
    init, holder_init = tinker.ServiceClient.__init__, InternalClientHolder.__init__

    def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    def tracked_holder(self: Any, *args: Any, **kwargs: Any) -> None:
        holder_init(self, *args, **kwargs)
        holders.append(self)

    monkeypatch.setattr(tinker.ServiceClient, "__init__", tracked)
    monkeypatch.setattr(InternalClientHolder, "__init__", tracked_holder)
    yield
    for client in made:  # a no-op for a client the test closed; a reaped session's finish changes nothing
        try:
            client.close("success").result(timeout=30)
        except Exception as err:  # the finish did not answer: its holders are closed below, and the test warned
            warnings.warn(f"a tinker ServiceClient's close failed ({type(err).__name__}: {err}); its session's "
                          "heartbeat was stopped locally", stacklevel=1)
    for holder in holders:  # e.g. the shadow holder of SamplingClient.from_sampler_handle, which heartbeats the
        with contextlib.suppress(Exception):  # session too and has no public close; a no-op for a closed one
            holder.close()
