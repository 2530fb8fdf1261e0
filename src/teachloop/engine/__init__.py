"""teachloop.engine (layer L2): a base model with named LoRA adapters -- sample, logprobs, train, save.

``Engine`` is the interface; ``TorchEngine`` the PyTorch backend (CPU and
CUDA); ``FakeEngine`` a millisecond bigram stand-in for unit tests;
``EngineCompleter`` exposes an engine as a chat completer for environments.
torch and transformers are imported only when an engine is built (the
submodules ``torch_engine``, ``fake``, ``llama``, ``sampler`` import torch).
"""

from typing import TYPE_CHECKING, Any

from teachloop.engine.base import LOGPROB_TOLERANCE, AdapterInfo, Engine, LogprobsFor

if TYPE_CHECKING:
    from teachloop.engine.completer import EngineCompleter
    from teachloop.engine.factory import load_engine
    from teachloop.engine.fake import FakeEngine
    from teachloop.engine.torch_engine import TorchEngine

_LAZY = {
    "TorchEngine": "teachloop.engine.torch_engine",
    "FakeEngine": "teachloop.engine.fake",
    "EngineCompleter": "teachloop.engine.completer",
    "load_engine": "teachloop.engine.factory",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'teachloop.engine' has no attribute {name!r}")


__all__ = [
    "LOGPROB_TOLERANCE",
    "AdapterInfo",
    "Engine",
    "EngineCompleter",
    "FakeEngine",
    "LogprobsFor",
    "TorchEngine",
    "load_engine",
]
