"""Shared fixtures of the integration suites: the real default model, pulled once per checkout.

``default_model_dir`` (session scope) is the folder of SmolLM2-135M-Instruct in the
shared model cache ``$TEACHLOOP_MODEL_CACHE`` or, by default, ``<repo>/.cache/models``.
The first run downloads 93 MB and converts (~30 s); later runs find it in well under
a second. Concurrent test processes wait on the cache's lock instead of converting twice.

``_close_tinker_clients`` (every test): each ``tinker.ServiceClient`` a test or a cookbook
recipe made is closed when the test ends, while its server still runs. A client left open
keeps its session's heartbeat thread calling a server the module has shut down, printing a
warning every few seconds until the process exits. A close that does not answer in 30 s is
a pytest warning naming the error, and the client's heartbeat is stopped locally.
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
    """Close every ``tinker.ServiceClient`` made during the test, at its end (see the module docstring)."""
    try:
        import tinker
    except ImportError:
        yield
        return
    made: list[Any] = []
    init = tinker.ServiceClient.__init__

    def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(tinker.ServiceClient, "__init__", tracked)
    yield
    for client in made:  # a no-op for a client the test closed; a reaped session's finish changes nothing
        try:
            client.close("success").result(timeout=30)
        except Exception as err:  # the finish did not answer: stop the heartbeat here, and say so
            for holder in (getattr(client, "_session_holder", None), getattr(client, "_rest_holder", None)):
                if holder is not None:
                    with contextlib.suppress(Exception):
                        holder.close()
            warnings.warn(f"a tinker ServiceClient's close failed ({type(err).__name__}: {err}); its session's "
                          "heartbeat was stopped locally", stacklevel=1)
