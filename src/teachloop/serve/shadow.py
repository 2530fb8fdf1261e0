"""Shadow traffic (issue 17): a share of a deployment's requests also goes to a second arm, never seen by the caller.

``Serving.resolve`` picks the shadow (``Target.shadow``) for ``shadow_percent`` % of requests;
``Shadows.send`` then runs the same request there in a background task once the
caller's own request is under way. The shadow's answer is only traced (``arm:
"shadow"``, ``shadow_of`` naming the trace it shadowed) and graded later; it is
never streamed (``stream`` and ``stream_options`` are dropped) and its failure never
reaches the caller: it is logged, and an upstream shadow's failure is traced like
any upstream call's. The tasks are held until they finish so none is collected
mid-way. No HTTP here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from teachloop.core.errors import TeachloopError
from teachloop.core.tenancy import Principal

if TYPE_CHECKING:
    from teachloop.serve.service import ChatInput, Serving, Target

log = logging.getLogger(__name__)


class Shadows:
    """The shadow requests of one ``Serving`` (see the module docstring)."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self._background: set[asyncio.Task[None]] = set()

    def send(self, principal: Principal, chat: ChatInput, body: dict[str, Any], target: Target,
             trace_id: str) -> None:
        """Send the request to ``target.shadow`` in the background (if set); its trace names ``trace_id``."""
        if target.shadow is None:
            return
        task = asyncio.get_running_loop().create_task(self._run(principal, chat, body, target.shadow, trace_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, principal: Principal, chat: ChatInput, body: dict[str, Any], shadow: Target,
                   trace_id: str) -> None:
        serving = self.serving
        quiet = replace(chat, stream=False, include_usage=False)
        try:
            if shadow.upstream_id is not None:
                sent = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
                loop = asyncio.get_running_loop()
                request = await loop.run_in_executor(None, serving.upstream_request, principal, quiet, sent, shadow,
                                                     trace_id)
                await (await request.complete()).await_commit()
                return
            run = await serving.open_chat(principal, quiet, target=shadow)
            run.shadow_of = trace_id
            try:
                await run.record(await run.replies())
            finally:
                run.close()
        except TeachloopError as err:  # a shadow never fails the caller: its failure is logged (and traced upstream)
            log.warning("shadow of %s failed: %s", trace_id, err)
        except Exception:
            log.exception("shadow of %s failed", trace_id)


__all__ = ["Shadows"]
