"""The Tinker-compatible training API: protocol semantics over ``engine/``, ``catalog/`` and ``store/``.

The official ``tinker`` SDK (0.38) drives a teachloop server unchanged through
the routes of ``app/routes/tinker.py``, which call ``TinkerService``. Modules:
``proto`` (the protobuf wire format), ``futures`` (request futures and their
long-poll), ``ordering`` (per-model ``seq_id`` order and de-duplication),
``losses`` (Tinker's loss names, configs and inputs on the engine's),
``records`` (sessions, models as training runs, checkpoints in the store) and
``service`` (the operations).
"""

from teachloop.tinker.futures import Future, FutureStore
from teachloop.tinker.ordering import ModelQueue
from teachloop.tinker.records import Records
from teachloop.tinker.service import HostedModel, TinkerService

__all__ = ["Future", "FutureStore", "HostedModel", "ModelQueue", "Records", "TinkerService"]
