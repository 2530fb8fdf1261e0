"""The official ``openai`` client (sync, async, streaming) against a real uvicorn server in this process.

The server runs the torch engine on the tiny random Llama of ``tests/_tiny.py`` (fast) and,
in the ``model``-marked test, on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from teachloop.app import AppDeps, create_app
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.engine.base import LOGPROB_TOLERANCE
from teachloop.render import Renderer
from teachloop.serve import Serving, ServingConfig
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
from teachloop.store.repos.traces import Traces
from tests._tiny import tiny_llama

MAX_BODY = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    key: str
    other_key: str
    org_id: str
    serving: Serving
    database: Database


def _start(tmp: Path, model_dir: Path, base: str) -> Iterator[Server]:
    import uvicorn

    from teachloop.engine.torch_engine import TorchEngine

    database = Database(f"sqlite:///{tmp / 'serve.db'}")
    database.migrate()
    with database.session() as s:
        tenancy, keys = Tenancy(s), ApiKeys(s)
        org, other = tenancy.create_org("acme"), tenancy.create_org("globex")
        key = keys.create_key(org.id, None, Role.MEMBER, "product").secret
        other_key = keys.create_key(other.id, None, Role.MEMBER, "product").secret
    blobs = BlobStore(tmp / "blobs")
    engine = TorchEngine(model_dir, device="cpu")
    serving = Serving(database, blobs, engine=engine, renderer=Renderer.from_pretrained(model_dir), base_model=base,
                      config=ServingConfig(default_max_tokens=16))
    serving.start()
    settings = Settings(home=tmp, model_cache=tmp / "models", database_url="sqlite://", blob_url=str(tmp / "blobs"),
                        max_body_bytes=MAX_BODY)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(AppDeps(settings, database, blobs, serving=serving)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}/v1", key, other_key, org.id, serving, database)
    finally:
        server.should_exit = True
        thread.join(10)
        serving.close()
        database.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-openai")
    yield from _start(tmp, tiny_llama(tmp), "tiny")


def _client(server: Server, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key or server.key, max_retries=0)


def test_sync_client_completion_with_trace(tiny: Server) -> None:
    client = _client(tiny)
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there!"}], max_tokens=8, temperature=0,
        user="alice", metadata={"app": "test"},
    )
    completion = raw.parse()
    trace_id = raw.headers["x-teachloop-trace-id"]
    assert completion.id == f"chatcmpl-{trace_id}"
    choice = completion.choices[0]
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 8
    with tiny.database.session(write=False) as s:
        trace = Traces(s).get(tiny.org_id, completion.id)
        assert trace.user == "alice" and trace.request_metadata == {"app": "test"}
        assert trace.choices[0]["message"]["content"] == choice.message.content
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_logprobs_are_the_engines(tiny: Server) -> None:
    client = _client(tiny)
    messages = [{"role": "user", "content": "What is 12 + 35?"}]
    completion = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,  # type: ignore[arg-type]
    )
    content = completion.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(e.top_logprobs) == 3 for e in content)
    assert all(e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-5) for e in content)  # greedy
    serving = tiny.serving
    assert serving.renderer is not None and serving.engine is not None
    from teachloop.core.sampling import SamplingParams

    prompt = serving.renderer.build_prompt(messages)  # type: ignore[arg-type]
    direct = serving.engine.sample(  # type: ignore[attr-defined]
        [prompt], 1, SamplingParams(max_tokens=6, temperature=0, stop=tuple(serving.stop_ids))
    )[0][0]
    kept = [lp for t, lp in zip(direct.tokens, direct.logprobs, strict=True) if t not in serving.stop_ids]
    assert len(kept) == len(content)
    assert max(abs(a - e.logprob) for a, e in zip(kept, content, strict=True)) < LOGPROB_TOLERANCE
    assert "".join(e.token for e in content) == completion.choices[0].message.content


def test_streaming_matches_non_streaming(tiny: Server) -> None:
    client = _client(tiny)
    kwargs = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me about Paris"}], "max_tokens": 12,
              "temperature": 0, "seed": 3}
    whole = client.chat.completions.create(**kwargs).choices[0]  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [whole.finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1


def test_async_clients_share_forward_passes(tiny: Server) -> None:
    assert tiny.serving.scheduler is not None
    before = tiny.serving.scheduler.stats()

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=tiny.url, api_key=tiny.key, max_retries=0)
        calls = [
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"question {i}"}],
                                           max_tokens=16, temperature=1.0, seed=i)
            for i in range(8)
        ]
        done = await asyncio.gather(*calls)
        await client.close()
        return [c.id for c in done]

    ids = asyncio.run(main())
    after = tiny.serving.scheduler.stats()
    assert len(set(ids)) == 8
    tokens, steps = after.tokens_total - before.tokens_total, after.steps_total - before.steps_total
    assert tokens >= 8 and steps < tokens / 2, (tokens, steps)  # many rows per forward pass


def test_errors_reach_the_client_in_openai_shape(tiny: Server) -> None:
    client = _client(tiny)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=0)
    assert bad.value.param == "n"
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello " * 600}])
    assert big.value.status_code == 413 and big.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        _client(tiny, "tl_" + "a" * 12 + "_" + "b" * 52).models.list()
    assert [m.id for m in _client(tiny, tiny.other_key).models.list()] == ["tiny"]


def test_keys_are_checked_before_bodies_and_big_bodies_refused_over_real_http(tiny: Server) -> None:
    import httpx

    from teachloop.store.schema.traces import Trace

    url = tiny.url + "/chat/completions"
    as_json = {"content-type": "application/json"}
    with tiny.database.session(write=False) as s:
        traces = s.query(Trace).count()
    big = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * (2 * MAX_BODY) + b'"}]}'
    with httpx.Client(timeout=30) as http:
        for body in (b"{not json", b"model=tiny", big):
            r = http.post(url, content=body, headers=as_json)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
        keyed = {**as_json, "Authorization": f"Bearer {tiny.key}"}
        r = http.post(url, content=big, headers=keyed)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
        chunked = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
        r = http.post(url, content=chunked, headers=keyed)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
        r = http.post(url, content=b"{not json", headers=keyed)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("malformed JSON body")
        # the server keeps serving, on this connection and on others
        ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert http.post(url, json=ok, headers={"Authorization": f"Bearer {tiny.key}"}).status_code == 200
    assert _client(tiny).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2).choices
    with tiny.database.session(write=False) as s:
        assert s.query(Trace).count() == traces + 2


@pytest.mark.model
def test_default_model_over_http(default_model_dir: Path, tmp_path: Path) -> None:
    from teachloop.core.settings import DEFAULT_MODEL

    for server in _start(tmp_path, default_model_dir, DEFAULT_MODEL):
        client = _client(server)
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        whole = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
        text = whole.choices[0].message.content or ""
        assert "paris" in text.lower(), text
        streamed = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=16,  # type: ignore[arg-type]
                                                  temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text


def test_a_deployed_peft_adapter_serves_and_swaps_back_over_http(tiny: Server, tmp_path: Path) -> None:
    """A real PEFT folder: published, deployed over REST, served in the same batch as the base, swapped away."""
    import httpx
    import torch

    from teachloop.core.training import LoraSpec
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.serve import publish_adapter

    trainer = TorchEngine(tiny.serving.engine.model_name, device="cpu")  # type: ignore[union-attr]
    trainer.create_adapter("a", LoraSpec(rank=4, seed=2))
    with torch.no_grad():
        for p in trainer._adapters["a"].params:
            p.add_(0.2 * torch.randn_like(p))
    folder = trainer.save_adapter("a", tmp_path / "peft")
    with tiny.database.session() as s:
        version, _ = publish_adapter(s, tiny.serving.blobs, tiny.org_id, name="tuned", folder=folder, base_model="tiny")
    rest = tiny.url.removesuffix("/v1") + "/api"
    headers = {"Authorization": f"Bearer {tiny.key}"}
    r = httpx.post(f"{rest}/deployments", json={"name": "support", "adapter": "tuned@1"}, headers=headers)
    assert r.status_code == 201, r.text
    client = _client(tiny)
    ask = {"messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 10, "temperature": 0}

    async def both() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=tiny.url, api_key=tiny.key, max_retries=0)
        tuned, base = await asyncio.gather(
            aclient.chat.completions.create(model="support", **ask),  # type: ignore[call-overload]
            aclient.chat.completions.create(model="tiny", **ask),  # type: ignore[call-overload]
        )
        await aclient.close()
        assert tuned.system_fingerprint == "tl-" + version.digest[7:19] and base.system_fingerprint == "tl-base"
        return tuned.choices[0].message.content or "", base.choices[0].message.content or ""

    tuned_text, base_text = asyncio.run(both())
    assert tuned_text != base_text
    r = httpx.patch(f"{rest}/deployments/support", json={"adapter": None}, headers=headers)
    assert r.status_code == 200
    assert client.chat.completions.create(model="support", **ask).choices[0].message.content == base_text  # type: ignore[call-overload]
