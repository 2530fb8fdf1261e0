"""The Tinker wire format, ordering, futures and loss mapping, without a model or a server.

The protobuf round trips use the official SDK's own converters (``tinker.proto``) on the
other side, so a drift between our descriptor and the SDK's shows up here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from teachloop.core.errors import InvalidInput
from teachloop.core.tinker import TinkerPath
from teachloop.tinker import proto
from teachloop.tinker.futures import FutureStore
from teachloop.tinker.losses import loss_config, to_engine
from teachloop.tinker.ordering import ModelQueue

tinker = pytest.importorskip("tinker")
from tinker import types  # noqa: E402
from tinker.proto.request_conv import forward_backward_request_to_proto  # noqa: E402
from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response  # noqa: E402


def _request(data: list[types.Datum], loss: str = "cross_entropy", config: dict | None = None) -> bytes:
    req = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn=loss, loss_fn_config=config),
        model_id="s:train:0", seq_id=7)
    return bytes(forward_backward_request_to_proto(req).SerializeToString())


def test_forward_backward_request_decodes_what_the_sdk_encodes() -> None:
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]),
                        loss_fn_inputs={"target_tokens": [2, 3, 4], "logprobs": [-1.0, -2.0, -0.5],
                                        "advantages": [0.0, 1.0, 1.0]})
    call = proto.decode_forward_backward(_request([datum], "ppo", {"clip_low_threshold": 0.7}))
    assert (call.model_id, call.seq_id, call.loss_fn, call.forward_only) == ("s:train:0", 7, "ppo", False)
    assert call.loss_fn_config == {"clip_low_threshold": pytest.approx(0.7)} and call.error is None
    assert call.data[0].tokens == [1, 2, 3] and call.data[0].inputs["target_tokens"] == [2, 3, 4]
    assert call.data[0].inputs["logprobs"] == [-1.0, -2.0, -0.5]


def test_bad_bodies_are_invalid_input_naming_the_problem() -> None:
    with pytest.raises(InvalidInput, match="not a protobuf"):
        proto.decode_forward_backward(b"\xff\xff\xff")
    short = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={"target_tokens": [2]})
    call = proto.decode_forward_backward(_request([short]))
    assert call.error is not None and "has 1 values; the model input has 3" in call.error.message
    with pytest.raises(InvalidInput, match="Content-Encoding"):
        proto.decompress(b"x", "br")
    zstd = pytest.importorskip("zstandard")
    assert proto.decompress(zstd.ZstdCompressor().compress(b"abc"), "zstd") == b"abc"
    with pytest.raises(InvalidInput, match="zstd"):
        proto.decompress(b"not zstd", "zstd")


def test_outputs_decode_with_the_sdk() -> None:
    out = deserialize_forward_backward_output(
        proto.encode_forward_backward({"logprobs": [[-0.5, -1.5], [-2.0]]}, {"loss:sum": 4.0}))
    assert [o["logprobs"].tolist() for o in out.loss_fn_outputs] == [[-0.5, -1.5], [-2.0]]
    assert out.metrics == {"loss:sum": 4.0}
    seqs = [proto.EncodedSequence([5, 6], [-0.25, -0.5], "length", [[(5, -0.25), (9, -3.0)], [(6, -0.5)]])]
    res = deserialize_sample_response(proto.encode_sample(
        seqs, prompt_logprobs=[None, -1.0, -2.0], topk_prompt=[[], [(1, -1.0)], [(2, -2.0), (3, -4.0)]], topk_k=2))
    seq = res.sequences[0]
    assert list(seq.tokens) == [5, 6] and seq.stop_reason == "length" and list(seq.logprobs) == [-0.25, -0.5]
    assert seq.topk_logprobs == [[(5, -0.25), (9, -3.0)], [(6, -0.5)]]
    assert res.prompt_logprobs == [None, -1.0, -2.0]
    assert res.topk_prompt_logprobs == [None, [(1, -1.0)], [(2, -2.0), (3, -4.0)]]


def test_losses_map_names_configs_and_inputs() -> None:
    loss, cfg = loss_config("cispo", {})
    assert loss == "cispo" and cfg.clip_bounds("cispo") == (0.0, 4.0)
    _, cfg = loss_config("ppo", {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5})
    assert cfg.clip_bounds("ppo") == (0.5, 1.5)
    for name, config, word in (("dro", {}, "not supported"), ("nope", {}, "not a Tinker loss"),
                               ("cross_entropy", {"beta": 1.0}, "beta"), ("ppo", {"clip_low_threshold": "x"}, "number"),
                               ("ppo", {"clip_low_threshold": 2.0, "clip_high_threshold": 1.0}, "exceed")):
        with pytest.raises(InvalidInput, match=word):
            loss_config(name, config)
    d = proto.TinkerDatum([1, 2, 3], {"target_tokens": [2, 3, 4], "logprobs": [0.0, -1.0, -1.0],
                                      "advantages": [0.0, 1.0, -1.0]})
    (datum,) = to_engine("importance_sampling", [d], vocab_size=10)
    assert datum.weights == [0.0, 1.0, 1.0] and datum.sampler_logprobs == [0.0, -1.0, -1.0]
    for bad, word in (({"target_tokens": [2, 3, 4]}, "lacks"), ({**d.inputs, "mask": [1, 1, 1]}, "mask"),
                      ({**d.inputs, "target_tokens": [2, 3, 40]}, "outside")):
        with pytest.raises(InvalidInput, match=word):
            to_engine("importance_sampling", [proto.TinkerDatum([1, 2, 3], bad)], vocab_size=10)


def test_tinker_paths() -> None:
    path = TinkerPath.parse("tinker://s:train:0/sampler_weights/step-1")
    assert (path.model_id, path.kind, path.name, path.checkpoint_id) == ("s:train:0", "sampler_weights", "step-1",
                                                                        "sampler_weights/step-1")
    assert str(path) == "tinker://s:train:0/sampler_weights/step-1"
    for bad in ("s3://x/weights/a", "tinker://x/weights", "tinker://x/adapters/a", "tinker://x/weights/../a"):
        with pytest.raises(InvalidInput):
            TinkerPath.parse(bad)


def test_model_queue_runs_in_seq_order_once_each() -> None:
    store = FutureStore()
    ran: list[int] = []
    with ThreadPoolExecutor(4) as pool:
        queue = ModelQueue("m", store, pool)

        def work(n: int):  # type: ignore[no-untyped-def]
            return lambda: ran.append(n) or {"n": n}

        futs = {n: queue.submit(n, store.create("o", "t"), work(n)) for n in (3, 2, 4)}
        assert ran == [] and not any(f.done for f in futs.values())  # all wait for seq_id 1
        first = queue.submit(1, store.create("o", "t"), work(1))
        assert queue.submit(1, store.create("o", "t"), work(99)) is first  # a retry is the same request
        deadline = time.monotonic() + 5
        while not all(f.done for f in futs.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [1, 2, 3, 4] and futs[4].result == {"n": 4}
        assert queue.submit(0, store.create("o", "t"), work(5)).request_id  # 0: after everything so far
        with pytest.raises(InvalidInput, match="skips ahead"):
            queue.submit(10**6, store.create("o", "t"), work(0))


def test_a_gap_fails_the_waiting_requests_and_the_queue_moves_on() -> None:
    store = FutureStore()
    with ThreadPoolExecutor(2) as pool:
        queue = ModelQueue("m", store, pool, gap_timeout=0.1)
        waiting = queue.submit(2, store.create("o", "t"), lambda: {"ran": True})
        time.sleep(0.4)
        assert waiting.done and waiting.category == "user" and "seq_id 1" in (waiting.error or "")
        assert queue.next_seq == 3


def test_futures_long_poll_wakes_on_resolve_and_are_scoped() -> None:
    store = FutureStore()
    fut = store.create("org_a", "x")

    async def poll() -> bool:
        threading.Timer(0.05, store.resolve, args=(fut, {"ok": 1})).start()
        return await store.wait(fut, 5.0)

    start = time.monotonic()
    assert asyncio.run(poll()) and time.monotonic() - start < 2
    assert asyncio.run(store.wait(store.create("org_a", "x"), 0.05)) is False
    with pytest.raises(Exception, match="unknown"):
        store.get("org_b", fut.request_id)
    pending = store.create("org_a", "x")
    assert store.cancel("org_a", pending.request_id) and pending.category == "user"


def test_the_docs_cover_every_public_method_of_the_sdk_clients() -> None:
    """docs/tinker.md's coverage table names every public method of SDK 0.38's four clients."""
    import inspect
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "tinker.md").read_text()
    table = doc.split("## Coverage of SDK 0.38.0", 1)[1]
    missing = []
    for cls in (tinker.ServiceClient, tinker.TrainingClient, tinker.SamplingClient, tinker.RestClient):
        for name, _ in inspect.getmembers(cls):
            if name.startswith("_") or name.endswith("_async"):
                continue
            if not re.search(rf"`({cls.__name__}\.)?{name}[`(]", table):
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"docs/tinker.md's coverage table misses {missing}"


def test_tinker_keys_are_teachloop_keys_behind_the_tml_prefix() -> None:
    from teachloop.app.auth import bearer_header

    assert bearer_header(None, "tml-tl_abc_secret") == "Bearer tl_abc_secret"
    assert bearer_header("Bearer tl_x_y", "tml-tl_abc_secret") == "Bearer tl_x_y"  # Authorization wins
    assert bearer_header(None, None) is None
