"""A small local OpenAI-compatible server playing the upstream "teacher" in the upstream tests (no internet).

``FakeUpstream()`` serves on 127.0.0.1 (a random port) in a thread, with the key ``KEY``:

- ``GET /v1/models/{model}``: 200, or 404 for ``missing``, or 401 for another key;
- ``POST /v1/chat/completions`` by ``model``: ``teacher`` answers ``teacher: <last user text>`` (``n``
  choices; a tool call when tools are offered; ``{"ok": true}`` under a ``response_format``; logprobs
  when asked; a stream of word chunks, a usage chunk when asked, ``[DONE]``); ``rate`` is a 429 with
  ``Retry-After: 7`` whose message quotes the key (as some providers do); ``boom`` a 500; ``cut`` a
  stream that stops after two chunks without ``[DONE]``; ``slow`` waits ``slow_s`` before its first
  byte; ``flaky`` fails with a 503 once, then answers like ``teacher``.

``requests`` keeps every chat body received (so a test can check what passed through).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY = "sk-test-0123456789abcdefSECRET"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("authorization") != f"Bearer {KEY}":
            self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        model = self.path.rsplit("/", 1)[-1]
        if model == "missing":
            self._json(404, {"error": {"message": f"The model {model} does not exist", "type": "invalid_request_error",
                                       "param": "model", "code": "model_not_found"}})
            return
        self._json(200, {"id": model, "object": "model", "created": 0, "owned_by": "fake"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self._authorised():
            return
        self.server.requests.append(body)
        model = body.get("model")
        if model == "rate":
            self._json(429, {"error": {"message": f"Rate limit reached for key {KEY}", "type": "requests",
                                       "param": None, "code": "rate_limit_exceeded"}}, {"retry-after": "7"})
            return
        if model == "boom":
            self._json(500, {"error": {"message": "The server had an error", "type": "server_error", "param": None,
                                       "code": None}})
            return
        if model == "flaky" and not self.server.flaked:
            self.server.flaked = True
            self._json(503, {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}})
            return
        if model == "slow":
            time.sleep(self.server.slow_s)
        text = "teacher: " + next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if body.get("response_format"):
            text = '{"ok": true}'
        if body.get("stream"):
            self._stream(body, text, cut=model == "cut")
            return
        self._json(200, _completion(body, text))

    def _stream(self, body: dict[str, Any], text: str, cut: bool) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        words = text.split(" ")
        base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
            if cut and i == 1:
                self.close_connection = True
                return
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": len(words),
                                                      "total_tokens": 11 + len(words)}}
            self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    choices = []
    for i in range(int(body.get("n") or 1)):
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        finish = "stop"
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}]}
            finish = "tool_calls"
        logprobs = None
        if body.get("logprobs"):
            logprobs = {"content": [{"token": "teacher", "logprob": -0.25, "bytes": list(b"teacher"),
                                     "top_logprobs": []}], "refusal": None}
        choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
    completion = 3 * len(choices)
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": body["model"],
            "system_fingerprint": "fp_fake", "choices": choices,
            "usage": {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": 11 + completion}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.flaked = False
        self.slow_s = 1.0


class FakeUpstream:
    """The fake upstream, started on enter and stopped on exit."""

    def __init__(self) -> None:
        self.server = _Server()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


__all__ = ["KEY", "FakeUpstream"]
