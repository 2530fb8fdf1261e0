"""Chat completers that live in ``envs/``: any OpenAI-compatible endpoint, and a scripted fake.

``OpenAICompleter`` speaks ``POST {base_url}/chat/completions`` with httpx
(``base_url`` includes the version prefix, e.g. ``http://127.0.0.1:8000/v1``),
so it works with teachloop's own server, vLLM, OpenAI and most providers. It
returns no token records (``Completion.turn`` is ``None``): an HTTP endpoint
gives text, not the ids training needs; the engine's completer gives both.
When a server returns fewer than ``n`` choices, the rest are requested one by one.

``ScriptedCompleter`` is the test double: replies come from a function of the
conversation (or a list, cycled), optionally with fake token records.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.core.rl import Completion, ModelTurn
from teachloop.core.sampling import SamplingParams

Reply = str | Message | Completion


def _message(choice: dict[str, Any]) -> Message:
    msg = choice.get("message") or {}
    calls = []
    for i, call in enumerate(msg.get("tool_calls") or ()):
        fn = call.get("function") or {}
        args = fn.get("arguments", "{}")
        calls.append(
            ToolCall(
                id=str(call.get("id") or f"call_{i}"),
                name=str(fn.get("name") or "?"),
                arguments=args if isinstance(args, str) else json.dumps(args),
            )
        )
    return Message(role="assistant", content=msg.get("content") or "", tool_calls=tuple(calls))


class OpenAICompleter:
    """A ``ChatCompleter`` over an OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        extra_body: dict[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self._headers = headers

    def _body(self, messages: list[Message], params: SamplingParams, n: int, tools: list[ToolSpec] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_openai() for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": n,
        }
        if params.top_k != -1:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop and all(isinstance(s, str) for s in params.stop):
            body["stop"] = list(params.stop)
        if tools:
            body["tools"] = [t.to_openai() for t in tools]
        return {**body, **self.extra_body}

    async def _post(self, body: dict[str, Any]) -> list[Completion]:
        resp = await self._client.post(self.url, json=body, headers=self._headers)
        if resp.status_code >= 400:
            raise RuntimeError(f"{self.url} answered HTTP {resp.status_code}: {resp.text[:300]}")
        choices = resp.json().get("choices") or []
        return [Completion(message=_message(c)) for c in choices]

    async def complete(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        n: int = 1,
        tools: list[ToolSpec] | None = None,
    ) -> list[Completion]:
        """``n`` replies to ``messages``."""
        out = await self._post(self._body(messages, params, n, tools))
        while len(out) < n:
            more = await self._post(self._body(messages, params, 1, tools))
            if not more:
                raise RuntimeError(f"{self.url} returned no choices")
            out.extend(more)
        return out[:n]

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


class ScriptedCompleter:
    """A fake ``ChatCompleter``: replies from ``script(messages)`` or a cycled list.

    With ``with_turns=True`` each reply carries a fake ``ModelTurn`` (the
    UTF-8 bytes as token ids, logprob -1.0 each) so token plumbing can be tested.
    ``calls`` records ``(messages, n, tools)`` of every request.
    """

    def __init__(self, script: Callable[[list[Message]], Reply] | Sequence[Reply], *, with_turns: bool = False):
        if callable(script):
            self._fn: Callable[[list[Message]], Reply] = script
        else:
            replies = itertools.cycle(list(script))
            self._fn = lambda _messages: next(replies)
        self.with_turns = with_turns
        self.calls: list[tuple[list[Message], int, list[ToolSpec] | None]] = []

    def _completion(self, messages: list[Message], reply: Reply) -> Completion:
        if isinstance(reply, Completion):
            return reply
        message = reply if isinstance(reply, Message) else Message(role="assistant", content=reply)
        turn = None
        if self.with_turns:
            prompt = "".join(m.content for m in messages).encode()
            tokens = tuple(message.content.encode()) or (0,)
            turn = ModelTurn(prompt_tokens=tuple(prompt), tokens=tokens, logprobs=(-1.0,) * len(tokens), stop_reason="stop")
        return Completion(message=message, turn=turn)

    async def complete(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        n: int = 1,
        tools: list[ToolSpec] | None = None,
    ) -> list[Completion]:
        """``n`` scripted replies to ``messages``."""
        self.calls.append((list(messages), n, tools))
        return [self._completion(messages, self._fn(list(messages))) for _ in range(n)]


__all__ = ["OpenAICompleter", "ScriptedCompleter"]
