"""Where the app layer joins L3 packages that never import each other (used by REST routes and console pages).

- ``project_from_request``: a data request of the marketplace (``market.requests``) becomes a
  labeling project (``work.projects.create_project`` with a ``request`` source): the request's
  spec is the template's instructions and the project records that it fulfils the request.
  ``POST /api/requests/{id}/project`` and the console's project setup both call it.
- ``fill_suggestions``: the serving runtime (``serve``) answers each item of a project that has
  no model suggestion yet, and ``work.suggestions`` stores the replies.
  ``POST /api/work/projects/{project}/suggestions`` and the console's project page call it.

Each function opens its own sessions (or takes the caller's) and raises the ``core.errors`` tree;
nothing here knows HTTP.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.core.tenancy import Principal
from teachloop.core.work import (
    ProjectCreate,
    ProjectSettings,
    ProjectSource,
    SuggestionsFill,
    SuggestionsFilled,
    TaskType,
    TemplateSpec,
)
from teachloop.market.requests import DataRequests
from teachloop.serve.chat import ChatCompletionRequest, to_chat_input
from teachloop.serve.service import Serving
from teachloop.serve.upstream import Relayed
from teachloop.store.db import Database
from teachloop.store.schema.work import WorkProject
from teachloop.work import projects, suggestions

#: The data request fields that become the project's template text.
REQUEST_FIELDS = {"title", "description", "format", "size", "quality_bar", "licences", "deadline"}


def project_from_request(session: Session, org_id: str, request_id: str, *, name: str, task_type: TaskType,
                         template: TemplateSpec | None = None, settings: ProjectSettings | None = None,
                         title: str = "", actor: str = "system") -> WorkProject:
    """A project of ``org_id`` made from a data request it can see (``NotFound`` for any other).

    The project's title is ``title``, or the request's.
    """
    request = DataRequests(session).get(org_id, request_id)
    spec = request.model_dump(mode="json", include=REQUEST_FIELDS)
    source = ProjectSource(kind="request", spec=spec, fulfils=request.id)
    body = ProjectCreate(name=name, title=(title or request.title)[:200], task_type=task_type,
                         template=template or TemplateSpec(), settings=settings or ProjectSettings(), source=source)
    return projects.create_project(session, org_id, body, actor=actor)


async def _reply(serving: Serving, principal: Principal, body: SuggestionsFill, project_id: str,
                 messages: list[dict[str, str]]) -> str:
    raw = {"model": body.deployment, "messages": messages, "max_tokens": body.max_tokens,
           "temperature": body.temperature, "metadata": {"work_project": project_id}}
    chat = to_chat_input(ChatCompletionRequest.model_validate(raw))
    target = await serving.route(principal, chat)
    if target.upstream_id is not None:
        relayed = await serving.upstream_chat(principal, chat, raw, target)
        if not isinstance(relayed, Relayed):  # never: the request does not stream
            raise InvalidInput("the deployment answered with a stream", param="deployment")
        choices = relayed.body.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")
    run = await serving.open_chat(principal, chat, target=target)
    try:
        replies = await run.replies()
        await run.record(replies)
    finally:
        run.close()
    return replies[0].message.content if replies else ""


async def fill_suggestions(database: Database, serving: Serving, principal: Principal, project_ref: str,
                           body: SuggestionsFill) -> SuggestionsFilled:
    """Ask ``body.deployment`` for the suggestion of up to ``body.limit`` items that have none; store them.

    Every call is a traced, billed completion of the caller's organisation (like ``/v1/chat/completions``).
    An unknown deployment is refused before anything is written; replies are stored together at the end.
    """
    org_id = principal.org_id
    with database.session(write=False) as s:
        project_id = projects.get_project(s, org_id, project_ref).id
        waiting = suggestions.pending(s, org_id, project_id, limit=body.limit)
    replies: dict[str, str] = {}
    for item in waiting:
        if not item.messages:
            continue
        replies[item.item_id] = await _reply(serving, principal, body, project_id, item.messages)
    with database.session() as s:
        filled, refused = suggestions.store(s, org_id, project_id, replies, model=body.deployment,
                                            actor=principal.key_id)
        left = suggestions.remaining(s, org_id, project_id)
    return SuggestionsFilled(project_id=project_id, filled=filled, refused=refused, remaining=left,
                             model=body.deployment)


__all__ = ["REQUEST_FIELDS", "fill_suggestions", "project_from_request"]
