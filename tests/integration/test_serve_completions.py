"""``/v1/completions`` with the official ``openai`` client over real HTTP (uvicorn in this process).

The server runs the torch engine on the tiny random Llama of ``tests/_tiny.py``: text and token
prompts, echo with logprobs checked against the engine's own scoring, streaming (with ``n``),
stop strings that span tokens, seeded sampling under concurrency, and the penalties and logit
bias changing what greedy decoding picks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from teachloop.core.sampling import SamplingParams
from teachloop.engine.base import LOGPROB_TOLERANCE
from teachloop.store.repos.traces import Traces
from tests._tiny import tiny_llama
from tests.integration.test_serve_openai import Server, _client, _start


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-completions")
    yield from _start(tmp, tiny_llama(tmp), "tiny")


def _tokens(server: Server, text: str) -> list[int]:
    assert server.serving.renderer is not None
    return list(server.serving.renderer.tokenizer.encode(text, add_special_tokens=True))


def _greedy(server: Server, prompt: list[int], max_tokens: int) -> list[int]:
    """The engine's own greedy continuation (stopping at EOS, which is dropped)."""
    engine = server.serving.engine
    [[seq]] = engine.sample([prompt], 1, SamplingParams(max_tokens=max_tokens, temperature=0))  # type: ignore[union-attr]
    eos = set(engine.eos_token_ids)  # type: ignore[union-attr]
    return [t for t in seq.tokens if t not in eos]


def test_text_and_token_prompts_with_a_trace(tiny: Server) -> None:
    client = _client(tiny)
    prompt = "Hello there! How are"
    raw = client.completions.with_raw_response.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0,
                                                      user="alice")
    completion = raw.parse()
    trace_id = raw.headers["x-teachloop-trace-id"]
    assert completion.id == f"cmpl-{trace_id}" and completion.object == "text_completion"
    [choice] = completion.choices
    ids = _tokens(tiny, prompt)
    assert choice.text == tiny.serving.renderer.decode(_greedy(tiny, ids, 8))  # type: ignore[union-attr]
    assert completion.usage is not None and completion.usage.prompt_tokens == len(ids)
    by_tokens = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert by_tokens.choices[0].text == choice.text
    both = client.completions.create(model="tiny", prompt=[ids, ids[:2]], max_tokens=4, temperature=0)
    assert [c.index for c in both.choices] == [0, 1] and both.choices[0].text == choice.text[: len(both.choices[0].text)]
    with tiny.database.session(write=False) as s:
        trace = Traces(s).get(tiny.org_id, trace_id)
        assert trace.messages == [{"role": "user", "content": prompt}] and trace.params["kind"] == "completion"
        assert trace.choices[0]["message"]["content"] == choice.text and trace.user == "alice"


def test_echo_logprobs_agree_with_the_engine(tiny: Server) -> None:
    client = _client(tiny)
    prompt = "What is 12 + 35? The answer is"
    ids = _tokens(tiny, prompt)
    completion = client.completions.create(model="tiny", prompt=prompt, echo=True, logprobs=3, max_tokens=5,
                                           temperature=0)
    [choice] = completion.choices
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    generated = _greedy(tiny, ids, 5)
    assert choice.text == prompt + tiny.serving.renderer.decode(generated)  # type: ignore[union-attr]
    assert len(lp.tokens) == len(ids) + len(generated) and lp.token_logprobs[0] is None
    engine_lps = tiny.serving.engine.logprobs([ids + generated])[0]  # type: ignore[union-attr]
    served = lp.token_logprobs[1:]
    assert len(served) == len(engine_lps)
    assert max(abs(a - b) for a, b in zip(served, engine_lps, strict=True)) < LOGPROB_TOLERANCE  # type: ignore[operator]
    for k in range(len(ids), len(lp.tokens)):  # greedy: each sampled token is its step's top alternative
        top = lp.top_logprobs[k]
        assert top is not None and len(top) <= 3 and max(top.values()) == pytest.approx(lp.token_logprobs[k], abs=1e-5)
    scored = client.completions.create(model="tiny", prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    assert scored.choices[0].text == prompt and scored.usage is not None and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(served[: len(ids) - 1], abs=1e-5)  # type: ignore[union-attr,index]


def test_streaming_matches_and_n_streams_each_choice(tiny: Server) -> None:
    client = _client(tiny)
    kwargs = {"model": "tiny", "prompt": "Tell me about Paris", "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0]  # type: ignore[call-overload]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [whole.finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1 and len({c.id for c in chunks}) == 1
    stream = client.completions.create(model="tiny", prompt="Tell me about Paris", max_tokens=10, n=2, stream=True,
                                       temperature=1.0, seed=11)
    texts: dict[int, str] = {0: "", 1: ""}
    finished: list[int] = []
    for c in stream:
        for choice in c.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished.append(choice.index)
    assert sorted(finished) == [0, 1] and all(texts.values())
    again = client.completions.create(model="tiny", prompt="Tell me about Paris", max_tokens=10, n=2,
                                      temperature=1.0, seed=11)
    assert {c.index: c.text for c in again.choices} == texts  # the same seed, streamed or not


def test_stop_strings_span_token_boundaries(tiny: Server) -> None:
    client = _client(tiny)
    kwargs = {"model": "tiny", "prompt": "Hello there! How are you today?", "max_tokens": 16, "temperature": 0}
    free = client.completions.create(logprobs=0, **kwargs).choices[0]  # type: ignore[call-overload]
    assert free.logprobs is not None and free.logprobs.tokens is not None and free.logprobs.text_offset is not None
    text, tokens, offsets = free.text, free.logprobs.tokens, free.logprobs.text_offset
    stop = None
    for k in range(len(tokens) - 1):
        a, b = tokens[k], tokens[k + 1]
        if a and b and "\ufffd" not in a + b and text.find(a[-1] + b[0]) == offsets[k] + len(a) - 1:
            stop = a[-1] + b[0]
            break
    assert stop is not None, tokens
    cut = text[: text.find(stop)]
    stopped = client.completions.create(stop=[stop, "never-seen-1", "never-seen-2", "never-seen-3"], **kwargs)  # type: ignore[call-overload]
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (cut, "stop")
    streamed = client.completions.create(stop=stop, stream=True, **kwargs)  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut


def test_seeded_concurrent_requests_agree(tiny: Server) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=tiny.url, api_key=tiny.key, max_retries=0)
        calls = [client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=1.0,
                                           seed=1234) for _ in range(2)]
        calls.append(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=1.0,
                                               seed=99))
        done = await asyncio.gather(*calls)
        await client.close()
        return [c.choices[0].text for c in done]

    first, second, _ = asyncio.run(main())
    assert first == second and first


def test_frequency_penalty_changes_greedy_output(tiny: Server) -> None:
    client = _client(tiny)
    kwargs = {"model": "tiny", "prompt": "the the the the the the the the", "max_tokens": 16, "temperature": 0}
    plain = client.completions.create(**kwargs).choices[0].text  # type: ignore[call-overload]
    penalised = client.completions.create(frequency_penalty=2.0, **kwargs).choices[0].text  # type: ignore[call-overload]
    assert plain != penalised
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the the the the"}],
                                          max_tokens=16, temperature=0)
    chat_penalised = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the the the the"}],
                                                    max_tokens=16, temperature=0, presence_penalty=2.0)
    assert chat.choices[0].message.content != chat_penalised.choices[0].message.content


def test_logit_bias_bans_and_forces_tokens(tiny: Server) -> None:
    client = _client(tiny)
    prompt = "Hello there!"
    ids = _tokens(tiny, prompt)
    engine = tiny.serving.engine
    [[seq]] = engine.sample([ids], 1, SamplingParams(max_tokens=1, temperature=0, stop=()))  # type: ignore[union-attr]
    first = seq.tokens[0]
    banned = client.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=0,
                                       logit_bias={str(first): -100})
    token_text = tiny.serving.token_text
    assert token_text is not None
    assert banned.choices[0].logprobs.tokens != [token_text(first)[0]]  # type: ignore[union-attr]
    forced_id = next(t for t in _tokens(tiny, " Paris") if t != first)
    forced = client.completions.create(model="tiny", prompt=ids, max_tokens=3, temperature=0, logprobs=0,
                                       logit_bias={str(forced_id): 100})
    assert forced.choices[0].logprobs.tokens == [token_text(forced_id)[0]] * 3  # type: ignore[union-attr]


def test_bad_input_is_refused_in_openai_shape(tiny: Server) -> None:
    client = _client(tiny)
    vocab = tiny.serving.vocab_size
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "logit_bias": {str(vocab): 1}}, "logit_bias"),
        ({"prompt": [1, vocab]}, "prompt"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "n": 2, "best_of": 3}, "best_of"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model="tiny", max_tokens=2, **extra)  # type: ignore[call-overload]
        assert bad.value.param == param, extra
    with pytest.raises(openai.BadRequestError) as chat_bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       logit_bias={str(vocab): 1})
    assert chat_bad.value.param == "logit_bias"
