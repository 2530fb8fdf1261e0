"""``/v1/completions`` in process (echo engine), and the sampling parameters chat now takes along.

The echo engine replies to a raw prompt with the prompt's own text, then EOS; the engine of
this module also scores prompts (``logprobs``) with a fixed rule and records the sampling
parameters of every request, so tests can see what reached the scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from teachloop.core.sampling import SamplingParams
from teachloop.engine.sampler import SampleRequest
from teachloop.serve import Serving, publish_adapter
from teachloop.store import BlobStore, Database
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants, auth
from tests.unit.serve.fakes import LOGPROB, EchoEngine, adapter_folder

URL = "/v1/completions"
CHAT = "/v1/chat/completions"


def _score(token: int) -> float:
    return -0.5 - (token % 7) / 10


class ScoringEchoEngine(EchoEngine):
    """The echo engine plus prompt scoring and a record of each request's ``SamplingParams``."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.params: list[SamplingParams] = []
        self.scored: list[tuple[list[list[int]], str | None]] = []

    def script(self, req: SampleRequest) -> list[int]:
        self.params.append(req.params)
        return super().script(req)

    def logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]:
        with self._lock:
            self.scored.append(([list(s) for s in sequences], adapter))
            return [[_score(t) for t in seq[1:]] for seq in sequences]


@pytest.fixture
def engine(tokenizer: Any) -> ScoringEchoEngine:
    return ScoringEchoEngine(tokenizer)


def _count(database: Database) -> int:
    with database.session(write=False) as s:
        return s.query(Trace).count()


def _sse(response: Any) -> list[Any]:
    events = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _post(client: TestClient, tenants: Tenants, **body: Any) -> Any:
    return client.post(URL, json={"model": BASE, **body}, headers=auth(tenants.acme.member))


def test_a_text_prompt_completes_without_a_template_and_is_traced(
    client: TestClient, tenants: Tenants, database: Database, engine: ScoringEchoEngine, tokenizer: Any
) -> None:
    r = _post(client, tenants, prompt="Hello there!", user="u-1", temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    trace_id = r.headers["x-teachloop-trace-id"]
    assert body["id"] == f"cmpl-{trace_id}" and body["object"] == "text_completion"
    assert body["model"] == BASE and body["system_fingerprint"] == "tl-base"
    [choice] = body["choices"]
    assert choice == {"text": "Hello there!", "index": 0, "logprobs": None, "finish_reason": "stop"}
    prompt_tokens = len(tokenizer.encode("Hello there!", add_special_tokens=True))
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == prompt_tokens + 1  # the echoed text and EOS
    # no chat template: the engine saw exactly the prompt's tokens; it stops only at EOS
    assert engine.prefills and engine.params[-1].stop == tuple(engine.eos_token_ids)
    with database.session(write=False) as s:
        trace = Traces(s).get(tenants.acme.org_id, trace_id)
        assert trace.messages == [{"role": "user", "content": "Hello there!"}]
        assert trace.choices[0]["message"]["content"] == "Hello there!" and trace.user == "u-1"
        assert trace.params["kind"] == "completion" and trace.params["temperature"] == 0


def test_several_prompts_n_each_and_token_prompts(client: TestClient, tenants: Tenants, database: Database,
                                                  tokenizer: Any) -> None:
    before = _count(database)
    r = _post(client, tenants, prompt=["one two", "three"], n=2)
    body = r.json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "one two"), (1, "one two"), (2, "three"), (3, "three")
    ]
    ids = r.headers["x-teachloop-trace-id"].split(", ")
    assert len(ids) == 2 and body["id"] == f"cmpl-{ids[0]}" and _count(database) == before + 2
    with database.session(write=False) as s:
        second = Traces(s).get(tenants.acme.org_id, ids[1])
        assert second.messages == [{"role": "user", "content": "three"}] and second.params["prompt_index"] == 1
    tokens = tokenizer.encode("Paris is nice", add_special_tokens=False)
    one = _post(client, tenants, prompt=tokens).json()
    assert [c["text"] for c in one["choices"]] == ["Paris is nice"]
    assert one["usage"]["prompt_tokens"] == len(tokens)
    many = _post(client, tenants, prompt=[tokens, tokens[:1]]).json()
    assert [c["text"] for c in many["choices"]] == ["Paris is nice", tokenizer.decode(tokens[:1])]


def test_echo_with_logprobs_scores_the_prompt_on_the_engine(client: TestClient, tenants: Tenants,
                                                            engine: ScoringEchoEngine, tokenizer: Any) -> None:
    prompt = "What is 12 + 35?"
    ptoks = tokenizer.encode(prompt, add_special_tokens=True)
    r = _post(client, tenants, prompt=prompt, echo=True, logprobs=2, max_tokens=3)
    assert r.status_code == 200, r.text
    [choice] = r.json()["choices"]
    lp = choice["logprobs"]
    generated = tokenizer.decode(ptoks[:3])
    assert choice["text"] == prompt + generated and choice["finish_reason"] == "length"
    assert len(lp["tokens"]) == len(ptoks) + 3
    assert lp["token_logprobs"][0] is None
    assert lp["token_logprobs"][1 : len(ptoks)] == [pytest.approx(_score(t)) for t in ptoks[1:]]
    assert lp["token_logprobs"][len(ptoks) :] == [LOGPROB] * 3
    assert lp["top_logprobs"][: len(ptoks)] == [None] * len(ptoks)  # prompt tokens carry no alternatives
    assert all(len(top) == 2 for top in lp["top_logprobs"][len(ptoks) :])
    assert engine.scored[-1] == ([ptoks], None)
    text = choice["text"]
    for token, at in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert text[at : at + len(token)] == token
    # max_tokens 0 with echo: score only, nothing generated
    only = _post(client, tenants, prompt=prompt, echo=True, logprobs=0, max_tokens=0).json()
    [c] = only["choices"]
    assert c["text"] == prompt and c["finish_reason"] == "length" and only["usage"]["completion_tokens"] == 0
    assert c["logprobs"]["top_logprobs"] is None and len(c["logprobs"]["token_logprobs"]) == len(ptoks)


def test_stop_strings_cut_across_token_boundaries_streamed_or_not(client: TestClient, tenants: Tenants) -> None:
    prompt = "Hello there! How are you today?"
    whole = _post(client, tenants, prompt=prompt, stop=["re! H", "you"]).json()["choices"][0]
    assert whole["text"] == "Hello the" and whole["finish_reason"] == "stop"
    events = _sse(_post(client, tenants, prompt=prompt, stop=["re! H", "you"], stream=True))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello the"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]


def test_streaming_n_with_usage_and_logprobs(client: TestClient, tenants: Tenants, database: Database) -> None:
    before = _count(database)
    r = _post(client, tenants, prompt=["The answer is 47.", "Hi"], n=2, stream=True, logprobs=1,
              stream_options={"include_usage": True}, echo=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r)
    assert events[-1] == "[DONE]" and _count(database) == before + 2
    *chunks, usage = events[:-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None and c["object"] == "text_completion" for c in chunks)
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["logprobs"]:
                tokens.setdefault(choice["index"], []).extend(choice["logprobs"]["tokens"])
    assert texts == {0: "The answer is 47." * 2, 1: "The answer is 47." * 2, 2: "HiHi", 3: "HiHi"}
    assert all("".join(tokens[i]) == texts[i] for i in range(4))
    finishes = [(ch["index"], ch["finish_reason"]) for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(finishes) == [(0, "stop"), (1, "stop"), (2, "stop"), (3, "stop")]


def test_penalties_and_logit_bias_reach_the_sampler_for_both_endpoints(
    client: TestClient, tenants: Tenants, engine: ScoringEchoEngine
) -> None:
    r = _post(client, tenants, prompt="hi", presence_penalty=0.5, frequency_penalty=-1.5,
              logit_bias={"5": -100, "7": 2.5}, seed=3)
    assert r.status_code == 200, r.text
    p = engine.params[-1]
    assert (p.presence_penalty, p.frequency_penalty, p.logit_bias, p.seed) == (0.5, -1.5, ((5, -100.0), (7, 2.5)), 3)
    r = client.post(CHAT, json={"model": BASE, "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1.0,
                                "frequency_penalty": 0.25, "logit_bias": {"9": 100}}, headers=auth(tenants.acme.member))
    assert r.status_code == 200, r.text
    p = engine.params[-1]
    assert (p.presence_penalty, p.frequency_penalty, p.logit_bias) == (1.0, 0.25, ((9, 100.0),))


BAD: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "n": 2, "best_of": 3}, "best_of"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 100.5}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": -101}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"384": 1}}, "logit_bias"),
    ({"prompt": [1, 2, 384]}, "prompt"),
    ({"prompt": [[1, 2], [-1]]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "n": 9}, "n"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_is_a_400_naming_the_parameter_and_stores_nothing(
    client: TestClient, tenants: Tenants, database: Database, engine: ScoringEchoEngine, body: dict[str, Any],
    param: str,
) -> None:
    before, passes = _count(database), len(engine.prefills)
    r = _post(client, tenants, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert _count(database) == before and len(engine.prefills) == passes


def test_chat_refuses_out_of_range_logit_bias_and_stores_nothing(client: TestClient, tenants: Tenants,
                                                                 database: Database) -> None:
    before = _count(database)
    for bias in ({"384": 1}, {"1": 101}, {"x1": 1}):
        r = client.post(CHAT, json={"model": BASE, "messages": [{"role": "user", "content": "hi"}], "logit_bias": bias},
                        headers=auth(tenants.acme.member))
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text
    r = client.post(CHAT, json={"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stop": list("abcde")},
                    headers=auth(tenants.acme.member))
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    assert _count(database) == before


def test_a_deployment_serves_completions_with_its_adapter(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path, serving: Serving,
    engine: ScoringEchoEngine,
) -> None:
    acme = tenants.acme
    with database.session() as s:
        publish_adapter(s, blobs, acme.org_id, name="bot", folder=adapter_folder(tmp_path, "v1: "), base_model=BASE)
    r = client.post("/api/deployments", json={"name": "support", "adapter": "bot@1"}, headers=auth(acme.member))
    assert r.status_code == 201, r.text
    body = client.post(URL, json={"model": "support", "prompt": "hi", "echo": True, "logprobs": 0},
                       headers=auth(acme.member)).json()
    assert body["choices"][0]["text"] == "hiv1: hi"
    assert body["system_fingerprint"] != "tl-base" and engine.scored[-1][1] is not None  # scored with the adapter
    assert engine.prefills[-1][0][1] == engine.scored[-1][1]
    # globex cannot call acme's deployment
    r = client.post(URL, json={"model": "support", "prompt": "hi"}, headers=auth(tenants.globex.member))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
