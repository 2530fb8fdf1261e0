"""The OpenAI Responses API as a service: ``input`` items <-> chat messages, a response per trace.

A response is a chat completion in another shape. ``open_response`` validates a
``ResponseCreate`` (every refusal is an ``InvalidInput``/``NotFound`` naming the
parameter, raised before anything is queued or stored), turns ``instructions``,
the conversation of ``previous_response_id`` and the ``input`` items into chat
``Message``s (``input_messages``), and opens a ``ChatRun`` on ``Serving``. The
reply becomes ``output`` items (``output_items``): a ``message`` item with one
``output_text`` part, then one ``function_call`` item per tool call.

Ids derive from the trace: the response is ``resp_<trace id>``, its message item
``msg_<trace id>``, its k-th call ``fc_<trace id>_<k>``. Feedback on a response is
feedback on that trace (``/api/traces/resp_tr_.../feedback``).

What the trace row keeps: ``messages`` is the whole prompt (the instructions as the
first, system, message; then the earlier turns; then the new input), ``choices`` the
reply, and ``params`` the response-only fields under ``api: "responses"``
(``instructions``, ``previous_response_id``, ``store``, ``text``, ``tool_choice``...),
from which ``get_response`` rebuilds the object. Traces are append-only, so
``delete_response`` records a ``response.delete`` event in the organisation's audit
log; a deleted response, one created with ``store: false``, another organisation's
and a chat completion's trace all read as not found (404), both for ``GET`` and as a
``previous_response_id``. The trace itself stays in the trace store.

Streaming (``ResponseRun.events``) yields the documented semantic events, each with a
``sequence_number``: ``response.created``, ``response.in_progress``, then per output
item ``response.output_item.added``, for a message ``response.content_part.added``,
``response.output_text.delta``... ``response.output_text.done``,
``response.content_part.done``, for a call ``response.function_call_arguments.delta``
and ``.done``, then ``response.output_item.done``; last ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut the reply), sent after the
trace is committed. Text streams token by token when no tools are offered; with tools
the reply is only known to be text or calls at its end, so it comes in one delta. A
failure after the first event is an ``error`` event. This module knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.core.errors import InvalidInput, NotFound, TeachloopError
from teachloop.core.ids import is_id
from teachloop.core.tenancy import Principal
from teachloop.serve.service import ChatInput, ChatRun, Reply, Serving
from teachloop.store.db import Database
from teachloop.store.repos.audit import AuditLog
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.audit import AuditEvent
from teachloop.store.schema.traces import Trace

DELETE_ACTION = "response.delete"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


_Status = Literal["in_progress", "completed", "incomplete"]


# ---------------------------------------------------------------------------------------------- input items


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class OutputText(_Strict):
    """Text the assistant wrote (an earlier response's output passed back as input)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


def _text_or_parts(value: Any) -> str:
    return "<text>" if isinstance(value, str) else "<parts>"


def _part_type(value: Any) -> str:
    return f"<{value.get('type') if isinstance(value, dict) else getattr(value, 'type', None)}>"


# tags are "<...>" so that error locations can drop them: input.0.content.1.text, not ...1.input_text.text
_ContentPart = Annotated[
    Annotated[InputText, Tag("<input_text>")]
    | Annotated[OutputText, Tag("<output_text>")]
    | Annotated[RefusalPart, Tag("<refusal>")],
    Discriminator(_part_type),
]
_Content = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[list[_ContentPart], Tag("<parts>")], Discriminator(_text_or_parts)
]
_ToolOutput = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[list[InputText], Tag("<parts>")], Discriminator(_text_or_parts)
]


class MessageItem(_Strict):
    """A message: ``content`` is a string or ``input_text`` (``output_text``/``refusal`` for the assistant) parts."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: _Content
    id: str | None = None
    status: _Status | None = None


class FunctionCallItem(_Strict):
    """A call the assistant made (an earlier response's ``function_call`` output item)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: _Status | None = None


class FunctionCallOutputItem(_Strict):
    """What the client's function returned for ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: _ToolOutput
    id: str | None = None
    status: _Status | None = None


_ITEM_TYPES = ("message", "function_call", "function_call_output")


def _item_type(value: Any) -> str:
    return "<message>" if isinstance(value, dict) and "type" not in value else _part_type(value)


InputItem = Annotated[
    Annotated[MessageItem, Tag("<message>")]
    | Annotated[FunctionCallItem, Tag("<function_call>")]
    | Annotated[FunctionCallOutputItem, Tag("<function_call_output>")],
    Discriminator(_item_type),
]
_ITEM = TypeAdapter(InputItem)


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with its ``$ref``s to ``defs`` replaced by the definitions (for a self-contained field schema)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k not in ("$defs", "discriminator")}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _input_schema() -> dict[str, Any]:
    items = _ITEM.json_schema()
    return {
        "anyOf": [{"type": "string"},
                  {"type": "array", "minItems": 1, "items": _inline(items, items.get("$defs", {}))}],
        "description": "A user message as a string, or input items: messages (string or input_text content), "
        "function_call items (an earlier response's calls) and function_call_output items.",
    }


# ---------------------------------------------------------------------------------------------- the request


class FunctionTool(_Strict):
    """A function the model may call (the Responses shape: name and schema at the top level)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(_Strict):
    """Force a call of this function."""

    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Strict):
    """``text`` (default), ``json_object``, or ``json_schema`` with ``name`` and ``schema``."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None


class ResponseCreate(_Strict):
    """The body of ``POST /v1/responses``."""

    model: str = Field(min_length=1, max_length=300)
    input: Annotated[str | list[dict[str, Any]], WithJsonSchema(_input_schema())]
    instructions: str | None = Field(default=None, description="A system message put first; not carried over "
                                     "to a response that continues this one.")
    previous_response_id: str | None = Field(default=None, description="Continue that response's conversation.")
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    store: bool | None = Field(default=None, description="false: not retrievable later (the trace is still kept).")
    stream: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    include: list[str] | None = Field(default=None, description="Only an empty list is supported.")
    truncation: Literal["disabled"] | None = None


# ---------------------------------------------------------------------------------------------- conversion


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem


def parse_items(raw: str | list[dict[str, Any]]) -> list[Item]:
    """The validated input items (a string is one user message); ``InvalidInput`` naming ``input.<i>.<field>``."""
    if isinstance(raw, str):
        return [MessageItem(role="user", content=raw)]
    if not raw:
        raise InvalidInput("input must not be empty", param="input")
    items = []
    for i, value in enumerate(raw):
        try:
            items.append(_ITEM.validate_python(value))
        except ValidationError as err:
            raise _item_error(i, err) from None
    return items


def _item_error(i: int, err: ValidationError) -> InvalidInput:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and p.startswith("<"))]
    param = ".".join(["input", str(i), *loc])
    if first["type"] == "union_tag_invalid":
        tag = str((first.get("ctx") or {}).get("tag", "?")).strip("<>")
        if not loc:
            return InvalidInput(f"{param}.type: item type {tag!r} is not supported; send "
                                f"{', '.join(_ITEM_TYPES)}", param=f"{param}.type")
        return InvalidInput(f"{param}.type: content part type {tag!r} is not supported", param=f"{param}.type")
    message = first["msg"]
    if first["loc"] and first["loc"][-1] == "<parts>" and first["type"] == "list_type":
        message = "Input should be a string or a list of parts"
    return InvalidInput(f"{param}: {message}", param=param)


def _text(content: str | Sequence[InputText | OutputText | RefusalPart]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.refusal if isinstance(p, RefusalPart) else p.text for p in content)


def input_messages(items: Sequence[Item], history: Sequence[Message] = ()) -> list[Message]:
    """The chat messages of ``items`` (appended to ``history``, which is not repeated in the result).

    ``developer`` is taken as ``system``; a ``function_call`` joins the assistant message
    just before it (or starts one); a ``function_call_output`` is a ``tool`` message and
    must answer a call made earlier in the conversation.
    """
    calls = {c.id for m in history for c in m.tool_calls}
    out: list[Message] = []
    for i, item in enumerate(items):
        if isinstance(item, MessageItem):
            parts = [] if isinstance(item.content, str) else item.content
            if item.role != "assistant" and any(not isinstance(p, InputText) for p in parts):
                k = next(k for k, p in enumerate(parts) if not isinstance(p, InputText))
                raise InvalidInput(f"input.{i}.content.{k}: a {item.role} message takes input_text parts",
                                   param=f"input.{i}.content.{k}.type")
            if item.role == "assistant" and any(isinstance(p, InputText) for p in parts):
                k = next(k for k, p in enumerate(parts) if isinstance(p, InputText))
                raise InvalidInput(f"input.{i}.content.{k}: an assistant message takes output_text parts",
                                   param=f"input.{i}.content.{k}.type")
            role = "system" if item.role == "developer" else item.role
            out.append(Message(role=role, content=_text(item.content)))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
            calls.add(item.call_id)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                out[-1] = last.model_copy(update={"tool_calls": (*last.tool_calls, call)})
            else:
                out.append(Message(role="assistant", content="", tool_calls=(call,)))
        else:
            if item.call_id not in calls:
                raise InvalidInput(f"input.{i}.call_id: no function_call with call_id {item.call_id!r} earlier in "
                                   "the conversation", param=f"input.{i}.call_id")
            out.append(Message(role="tool", content=_text(item.output), tool_call_id=item.call_id))
    return out


def message_of(stored: dict[str, Any]) -> Message:
    """A ``Message`` from its OpenAI chat shape (as a trace stores it)."""
    calls = tuple(
        ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"].get("arguments", "{}"))
        for c in stored.get("tool_calls") or ()
    )
    return Message(role=stored["role"], content=stored.get("content") or "", tool_calls=calls,
                   tool_call_id=stored.get("tool_call_id"), name=stored.get("name"))


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_items(trace_id: str, message: Message, finish_reason: str) -> list[dict[str, Any]]:
    """The ``output`` of a response: its text as a ``message`` item (when there is text or no call), then its calls."""
    status = "incomplete" if finish_reason == "length" else "completed"
    items: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        items.append({
            "id": f"msg_{trace_id}", "type": "message", "status": status, "role": "assistant",
            "content": [_part(message.content)],
        })
    for k, call in enumerate(message.tool_calls):
        items.append({"id": f"fc_{trace_id}_{k}", "type": "function_call", "status": "completed",
                      "call_id": call.id, "name": call.name, "arguments": call.arguments})
    return items


# ---------------------------------------------------------------------------------------------- request -> chat


def _tool_choice(
    req: ResponseCreate, specs: list[ToolSpec]
) -> tuple[list[ToolSpec] | None, str | dict[str, str] | None]:
    """(the tools the model is offered, ``ChatInput.tool_choice``)."""
    choice = req.tool_choice
    if choice is not None and choice != "none" and not specs:
        raise InvalidInput("tool_choice needs tools", param="tool_choice")
    if choice == "none" or not specs:
        return None, None
    if isinstance(choice, FunctionToolChoice):
        named = [s for s in specs if s.name == choice.name]
        if not named:
            raise InvalidInput(f"tool_choice names {choice.name!r}, which is not in tools", param="tool_choice.name")
        return named, {"name": choice.name}
    return specs, choice


def _response_format(text: TextConfig | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the ``text.format`` as the response echoes it, the ``ChatInput.response_format``)."""
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        set_ = [f for f in ("name", "schema_", "description", "strict") if fmt and getattr(fmt, f) is not None]
        if set_:
            extra = set_[0]
            raise InvalidInput(f"text.format.{extra.rstrip('_')} is only for json_schema",
                               param=f"text.format.{extra.rstrip('_')}")
        return {"type": "text"}, None
    if fmt.type == "json_object":
        return {"type": "json_object"}, {"type": "json_object"}
    for field in ("name", "schema_"):
        if getattr(fmt, field) is None:
            name = field.rstrip("_")
            raise InvalidInput(f"text.format.{name} is required for json_schema", param=f"text.format.{name}")
    echo = fmt.model_dump(by_alias=True, exclude_none=True)
    return echo, {"type": "json_schema", "json_schema": {k: v for k, v in echo.items() if k != "type"}}


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > 16:
        raise InvalidInput(f"metadata takes at most 16 keys, got {len(metadata)}", param="metadata")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64 or len(value) > 512:
            raise InvalidInput("metadata keys are 1-64 characters and values at most 512", param=f"metadata.{key}")


def to_chat_input(req: ResponseCreate, history: Sequence[Message] = ()) -> ChatInput:
    """The ``ChatInput`` of a request continuing ``history``; ``InvalidInput`` naming the parameter otherwise."""
    if req.include:
        raise InvalidInput(f"include {req.include[0]!r} is not supported by this server", param="include")
    metadata = dict(req.metadata or {})
    _check_metadata(metadata)
    new = input_messages(parse_items(req.input), history)
    messages = [*history, *new]
    if req.instructions is not None:
        messages.insert(0, Message(role="system", content=req.instructions))
    specs = [ToolSpec(name=t.name, description=t.description or "",
                      parameters=t.parameters or {"type": "object", "properties": {}}) for t in req.tools or []]
    if len({s.name for s in specs}) != len(specs):
        raise InvalidInput("tools: two tools have the same name", param="tools")
    offered, choice = _tool_choice(req, specs)
    offered_names = {s.name for s in offered or []}
    text_format, response_format = _response_format(req.text)
    params: dict[str, Any] = {
        "api": "responses", "instructions": req.instructions, "previous_response_id": req.previous_response_id,
        "store": req.store is not False, "max_output_tokens": req.max_output_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "parallel_tool_calls": req.parallel_tool_calls, "text": {"format": text_format},
        "tool_choice": req.tool_choice.model_dump() if isinstance(req.tool_choice, FunctionToolChoice)
        else req.tool_choice,
        "strict_tools": [t.name for t in req.tools or [] if t.strict] or None,
    }
    return ChatInput(
        model=req.model, messages=messages, tools=offered, n=1,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, max_tokens=req.max_output_tokens,
        max_tokens_param="max_output_tokens", user=req.user, metadata=metadata, stream=bool(req.stream),
        response_format=response_format, tool_choice=choice,
        strict_tools=tuple(t.name for t in req.tools or [] if t.strict and t.name in offered_names),
        parallel_tool_calls=req.parallel_tool_calls is not False,
        trace_messages=[m.to_openai() for m in messages], trace_tools=[s.to_openai() for s in specs] or None,
        trace_params={k: v for k, v in params.items() if v is not None},
    )


# ---------------------------------------------------------------------------------------------- the store


def trace_id_of_response(response_id: str, param: str) -> str:
    """The trace id of ``resp_<trace id>``; ``NotFound`` naming ``param`` for anything else."""
    raw = response_id.removeprefix("resp_")
    if raw == response_id or not is_id(raw, "tr"):
        raise NotFound(f"{param}: response {response_id!r} not found", param=param)
    return raw


def _stored(session: Session, org_id: str, response_id: str, param: str) -> Trace:
    """The organisation's stored, undeleted response ``response_id``; ``NotFound`` naming ``param`` otherwise."""
    trace_id = trace_id_of_response(response_id, param)
    try:
        trace = Traces(session).get(org_id, trace_id)
    except NotFound:
        raise NotFound(f"{param}: response {response_id!r} not found", param=param) from None
    params = trace.params or {}
    deleted = session.scalar(select(AuditEvent.id).where(
        AuditEvent.org_id == org_id, AuditEvent.action == DELETE_ACTION, AuditEvent.target == trace.id).limit(1))
    if params.get("api") != "responses" or params.get("store") is False or deleted is not None:
        raise NotFound(f"{param}: response {response_id!r} not found", param=param)
    return trace


def conversation(trace: Trace) -> list[Message]:
    """The messages a response continuing ``trace`` builds on: its prompt (less its instructions) and its reply."""
    stored = list(trace.messages)
    if (trace.params or {}).get("instructions") is not None:
        stored = stored[1:]
    return [*map(message_of, stored), message_of(trace.choices[0]["message"])]


def _load_history(database: Database, org_id: str, previous: str) -> list[Message]:
    with database.session(write=False) as session:
        return conversation(_stored(session, org_id, previous, "previous_response_id"))


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def _tools_json(tools: list[dict[str, Any]] | None, strict: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for t in tools or []:
        fn = t["function"]
        out.append({"type": "function", "name": fn["name"], "description": fn.get("description") or None,
                    "parameters": fn.get("parameters"), "strict": fn["name"] in strict})
    return out


def response_json(
    *, trace_id: str, created: datetime, model: str, params: dict[str, Any], tools: list[dict[str, Any]] | None,
    output: list[dict[str, Any]], status: str, usage: dict[str, Any] | None, metadata: dict[str, Any],
    user: str | None,
) -> dict[str, Any]:
    """The ``response`` object."""
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return {
        "id": f"resp_{trace_id}", "object": "response", "created_at": int(created.timestamp()), "status": status,
        "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": params.get("instructions"), "max_output_tokens": params.get("max_output_tokens"),
        "max_tool_calls": None, "model": model, "output": output,
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "previous_response_id": params.get("previous_response_id"), "reasoning": {"effort": None, "summary": None},
        "service_tier": "default", "store": params.get("store", True),
        "temperature": params.get("temperature", 1.0), "text": params.get("text", {"format": {"type": "text"}}),
        "tool_choice": params.get("tool_choice", "auto"),
        "tools": _tools_json(tools, params.get("strict_tools") or ()),
        "top_p": params.get("top_p", 1.0), "truncation": "disabled", "usage": usage, "user": user,
        "metadata": dict(metadata),
    }


def _status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def get_response(database: Database, org_id: str, response_id: str) -> dict[str, Any]:
    """The stored response ``response_id`` of the organisation (``NotFound`` otherwise)."""
    with database.session(write=False) as session:
        t = _stored(session, org_id, response_id, "response_id")
        choice = t.choices[0]
        return response_json(
            trace_id=t.id, created=t.created_at, model=t.model, params=t.params, tools=t.tools,
            output=output_items(t.id, message_of(choice["message"]), choice["finish_reason"]),
            status=_status(choice["finish_reason"]), usage=_usage(t.prompt_tokens, t.completion_tokens),
            metadata=t.request_metadata or {}, user=t.user,
        )


def delete_response(database: Database, principal: Principal, response_id: str) -> dict[str, Any]:
    """Hide a stored response from ``GET`` and ``previous_response_id`` (audited; the trace stays)."""
    with database.session() as session:
        trace = _stored(session, principal.org_id, response_id, "response_id")
        AuditLog(session).record(principal.org_id, principal.user_id or principal.key_id, DELETE_ACTION,
                                 target=trace.id, detail={"response_id": response_id})
    return {"id": response_id, "object": "response", "deleted": True}


# ---------------------------------------------------------------------------------------------- running


async def open_response(serving: Serving, principal: Principal, req: ResponseCreate) -> ResponseRun:
    """Validate, load the earlier turns, queue the generation; the caller consumes ``result`` or ``events``."""
    history: list[Message] = []
    if req.previous_response_id is not None:
        previous = req.previous_response_id
        history = await asyncio.to_thread(_load_history, serving.database, principal.org_id, previous)
    chat = to_chat_input(req, history)
    try:
        run = await serving.open_chat(principal, chat)
    except InvalidInput as err:  # the structured-output checks name chat's field; here it is text.format
        if not (err.param or "").startswith("response_format"):
            raise
        raise type(err)(_renamed(err.message), param=_renamed(err.param or "")) from None
    return ResponseRun(serving, run)


def _renamed(text: str) -> str:
    for old, new in (("response_format.json_schema.schema", "text.format.schema"),
                     ("response_format.json_schema", "text.format"), ("response_format", "text.format")):
        text = text.replace(old, new)
    return text


class ResponseRun:
    """One response in flight: ``result()`` (the object) or ``events()`` (the stream); either closes the run."""

    def __init__(self, serving: Serving, run: ChatRun) -> None:
        self.serving = serving
        self.run = run
        self._seq = 0

    @property
    def trace_id(self) -> str:
        return self.run.trace_id

    @property
    def id(self) -> str:
        """``resp_<trace id>``."""
        return f"resp_{self.run.trace_id}"

    @property
    def stream(self) -> bool:
        return self.run.chat.stream

    def _json(self, output: list[dict[str, Any]], status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        chat = self.run.chat
        return response_json(
            trace_id=self.run.trace_id, created=self.run.created, model=chat.model, params=chat.trace_params,
            tools=chat.trace_tools, output=output, status=status, usage=usage, metadata=chat.metadata,
            user=chat.user,
        )

    def _final(self, reply: Reply) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        status = _status(reply.finish_reason)
        output = output_items(self.run.trace_id, reply.message, reply.finish_reason)
        return output, self._json(output, status, _usage(self.run.prompt_tokens, reply.completion_tokens))

    async def result(self) -> dict[str, Any]:
        """Wait for the reply, commit the trace, return the ``response`` object."""
        try:
            replies = await self.run.replies()
            await self.run.record(replies)
        finally:
            self.run.close()
        return self._final(replies[0])[1]

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The semantic stream events (see the module docstring)."""
        run, chat = self.run, self.run.chat
        live = not chat.tools
        msg_id = f"msg_{run.trace_id}"
        text_stream = self.serving.text_stream(chat)
        try:
            started = self._json([], "in_progress", None)
            yield self._event("response.created", response=started)
            yield self._event("response.in_progress", response=started)
            if live:
                yield self._added_message(msg_id)
                yield self._part_added(msg_id, 0)
            result: list[Any] = []
            async for kind, payload in run.events():
                if kind == "done":
                    result = payload
                    break
                delta = text_stream.push([e[1] for e in payload]) if live else ""
                if delta:
                    yield self._delta(msg_id, delta)
            reply = self.serving.reply(chat, 0, result[0])
            await run.record([reply])
            output, final = self._final(reply)
            if live:
                rest = text_stream.finish()
                if rest:
                    yield self._delta(msg_id, rest)
            for index, item in enumerate(output):
                for event in self._item_events(index, item, announced=live):
                    yield event
            done = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
            yield self._event(done, response=final)
        except TeachloopError as err:
            yield self._event("error", code=err.code, message=err.message, param=err.param)
        except (asyncio.CancelledError, GeneratorExit):  # the client left: free its rows now, trace what it got
            run.close()
            run.record_cancelled()  # never awaits; a no-op once the trace was written
            raise
        finally:
            run.close()

    def _added_message(self, msg_id: str) -> dict[str, Any]:
        item = {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        return self._event("response.output_item.added", output_index=0, item=item)

    def _part_added(self, msg_id: str, index: int) -> dict[str, Any]:
        return self._event("response.content_part.added", item_id=msg_id, output_index=index, content_index=0,
                           part=_part(""))

    def _delta(self, msg_id: str, delta: str) -> dict[str, Any]:
        return self._event("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0,
                           delta=delta, logprobs=[])

    def _item_events(self, index: int, item: dict[str, Any], *, announced: bool) -> list[dict[str, Any]]:
        """The events of one finished output item (``announced``: the message's opening events went out already)."""
        item_id, out = item["id"], []
        if item["type"] == "message":
            text = item["content"][0]["text"]
            if not announced:
                out.append(self._added_message(item_id) | {"output_index": index})
                out.append(self._part_added(item_id, index))
                if text:
                    out.append(self._delta(item_id, text) | {"output_index": index})
            out.append(self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                                   text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", item_id=item_id, output_index=index,
                                   content_index=0, part=_part(text)))
        else:
            opened = item | {"status": "in_progress", "arguments": ""}
            out.append(self._event("response.output_item.added", output_index=index, item=opened))
            out.append(self._event("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                                   delta=item["arguments"]))
            out.append(self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                   name=item["name"], arguments=item["arguments"]))
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out


__all__ = [
    "DELETE_ACTION",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "FunctionToolChoice",
    "InputItem",
    "InputText",
    "Item",
    "MessageItem",
    "OutputText",
    "RefusalPart",
    "ResponseCreate",
    "ResponseRun",
    "TextConfig",
    "TextFormat",
    "conversation",
    "delete_response",
    "get_response",
    "input_messages",
    "message_of",
    "open_response",
    "output_items",
    "parse_items",
    "response_json",
    "to_chat_input",
    "trace_id_of_response",
]
