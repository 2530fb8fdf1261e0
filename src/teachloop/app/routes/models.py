"""``/api/models``: the base models in the server's model cache (what runs, evals and deployments can name).

Reads need a viewer key. The cache is the server's, not an organisation's:
every organisation sees the same list.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from teachloop.app.auth import Deps, Viewer
from teachloop.core.api import ModelEntry, ModelList

router = APIRouter(prefix="/api", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(principal: Viewer, deps: Deps, request: Request) -> ModelList:
    """The cached base models, and which one this server serves."""
    from teachloop.engine.models import list_models as cached

    serving = getattr(request.app.state, "serving", None)
    served = getattr(serving, "base_model", None) if getattr(serving, "can_generate", False) else None
    data = [ModelEntry(name=m.name, size_bytes=m.size, status=str(m.status), source=m.source,
                       serving=m.name == served) for m in cached(deps.settings)]
    return ModelList(data=data, default=deps.settings.model)


__all__ = ["router"]
