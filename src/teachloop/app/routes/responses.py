"""The OpenAI Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

The body is ``serve.responses.ResponseCreate`` (strict: an unknown field, or one of
the wrong type, is a 400 naming it); the service validates the rest and refuses
before anything is queued or stored. The response models below document what comes
back. ``stream: true`` answers server-sent events, each ``event: <type>`` then
``data: <json>``, with no ``[DONE]`` (as OpenAI does). Every created response carries
``x-teachloop-trace-id``; its id is ``resp_<trace id>``. This module knows HTTP
only; ``serve.responses`` does the work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from teachloop.app.auth import Member, ServingDep, Viewer
from teachloop.serve import responses
from teachloop.serve.responses import ResponseCreate
from teachloop.serve.wire import TRACE_HEADER

router = APIRouter(prefix="/v1", tags=["openai"])


class OutputTextPart(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputMessage(BaseModel):
    """The assistant's text."""

    id: str = Field(description="msg_<trace id>.")
    type: Literal["message"]
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputTextPart]


class OutputFunctionCall(BaseModel):
    """A call of one of the offered functions; answer it with a function_call_output item."""

    id: str = Field(description="fc_<trace id>_<k>.")
    type: Literal["function_call"]
    status: Literal["in_progress", "completed"]
    call_id: str
    name: str
    arguments: str = Field(description="JSON-encoded arguments, as the model wrote them.")


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(BaseModel):
    """A response (``object: "response"``)."""

    id: str = Field(description="resp_<trace id>; feedback goes to /api/traces/{id}/feedback.")
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"] = Field(
        description="incomplete when max_output_tokens cut the reply (see incomplete_details)."
    )
    error: dict[str, Any] | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage | OutputFunctionCall]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float
    truncation: str
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"]
    deleted: bool


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        data = json.dumps(event, ensure_ascii=False)
        yield f"event: {event['type']}\ndata: {data}\n\n".encode()


@router.post(
    "/responses",
    response_model=None,
    responses={200: {"model": ResponseObject, "description": "The response, or with stream: true its events "
                     "(text/event-stream).", "content": {"text/event-stream": {}}}},
)
async def create_response(body: ResponseCreate, principal: Member, serving: ServingDep) -> Any:
    """Create a model response (OpenAI-compatible; ``stream: true`` for server-sent events)."""
    run = await responses.open_response(serving, principal, body)
    headers = {TRACE_HEADER: run.trace_id}
    if run.stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(_sse(run.events()), media_type="text/event-stream", headers=headers)
    return JSONResponse(await run.result(), headers=headers)


@router.get("/responses/{response_id}", response_model=None, responses={200: {"model": ResponseObject}})
async def get_response(response_id: str, principal: Viewer, serving: ServingDep) -> JSONResponse:
    """A stored response of the caller's organisation; 404 when missing, deleted or created with store: false."""
    body = await asyncio.to_thread(responses.get_response, serving.database, principal.org_id, response_id)
    return JSONResponse(body)


@router.delete("/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: str, principal: Member, serving: ServingDep) -> dict[str, Any]:
    """Delete a stored response: it can no longer be read or continued (its trace stays in /api/traces)."""
    return await asyncio.to_thread(responses.delete_response, serving.database, principal, response_id)


__all__ = ["DeletedResponse", "ResponseObject", "router"]
