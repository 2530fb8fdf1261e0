"""The official ``tinker`` SDK (0.38.0) against a real teachloop server over HTTP, on the tiny random Llama.

One uvicorn server per module runs the torch engine on ``tests/_tiny.py``'s model and the
Tinker routes (``app/routes/tinker.py``). The SDK talks to it exactly as it talks to
Thinking Machines' service: ``TINKER_BASE_URL`` and a ``tml-`` key, which here is a
teachloop API key of organisation ``acme`` behind the prefix.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

tinker = pytest.importorskip("tinker")

from tinker import types  # noqa: E402

from teachloop.app import AppDeps, create_app  # noqa: E402
from teachloop.core.settings import Settings  # noqa: E402
from teachloop.core.tenancy import Role  # noqa: E402
from teachloop.engine.base import LOGPROB_TOLERANCE  # noqa: E402
from teachloop.render import Renderer  # noqa: E402
from teachloop.serve import Serving, ServingConfig  # noqa: E402
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy  # noqa: E402
from teachloop.tinker import TinkerService  # noqa: E402
from tests._tiny import tiny_llama  # noqa: E402

BASE = "tiny"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    key: str
    other_key: str
    viewer_key: str
    org_id: str
    other_org_id: str
    database: Database
    blobs: BlobStore
    app: object
    model_dir: Path

    @property
    def service(self) -> TinkerService:
        svc = self.app.state.tinker  # type: ignore[attr-defined]
        assert isinstance(svc, TinkerService)
        return svc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory)


def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A teachloop server on the tiny model with organisations acme (member and viewer keys) and globex."""
    import uvicorn

    from teachloop.engine.torch_engine import TorchEngine

    tmp = tmp_path_factory.mktemp("tinker-sdk")
    model_dir = tiny_llama(tmp)
    database = Database(f"sqlite:///{tmp / 'tinker.db'}")
    database.migrate()
    with database.session() as s:
        tenancy, keys = Tenancy(s), ApiKeys(s)
        org, other = tenancy.create_org("acme"), tenancy.create_org("globex")
        key = keys.create_key(org.id, None, Role.MEMBER, "tinker").secret
        viewer = keys.create_key(org.id, None, Role.VIEWER, "viewer").secret
        other_key = keys.create_key(other.id, None, Role.MEMBER, "tinker").secret
    blobs = BlobStore(tmp / "blobs")
    engine = TorchEngine(model_dir, device="cpu")
    serving = Serving(database, blobs, engine=engine, renderer=Renderer.from_pretrained(model_dir), base_model=BASE,
                      config=ServingConfig(default_max_tokens=16))
    serving.start()
    settings = Settings(home=tmp, model_cache=tmp / "models", database_url="sqlite://", blob_url=str(tmp / "blobs"))
    app = create_app(AppDeps(settings, database, blobs, serving=serving))
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    os.environ["TINKER_TELEMETRY"] = "0"
    try:
        yield Server(f"http://127.0.0.1:{port}", f"tml-{key}", f"tml-{other_key}", f"tml-{viewer}", org.id, other.id,
                     database, blobs, app, model_dir)
    finally:
        uv.should_exit = True
        thread.join(10)
        svc = getattr(app.state, "tinker", None)
        if svc is not None:
            svc.close()
        serving.close()
        engine.close()
        database.close()


def _client(server: Server, key: str | None = None) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=server.url, api_key=key or server.key)


def _sl_datum(tokens: list[int]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )


TOKENS = [[5, 17, 42, 99, 7, 3, 12], [8, 9, 10, 11, 12, 13]]


def test_supervised_loop_loss_falls_and_sampler_matches_forward(server: Server) -> None:
    svc = _client(server)
    tc = svc.create_lora_training_client(BASE, rank=4, seed=0).result()
    info = tc.get_info()
    assert info.model_data.model_name == BASE and info.model_data.tokenizer_id == str(server.model_dir)
    assert tc.get_tokenizer().vocab_size > 0
    data = [_sl_datum(t) for t in TOKENS]
    losses = []
    for _ in range(4):
        fb = tc.forward_backward(data, "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=1e-2))
        out = fb.result()
        opt.result()
        assert all(k.count(":") == 1 for k in out.metrics), out.metrics
        lps = [o["logprobs"].tolist() for o in out.loss_fn_outputs]
        assert [len(lp) for lp in lps] == [len(t) - 1 for t in TOKENS]
        assert math.isclose(out.metrics["loss:sum"], -sum(sum(lp) for lp in lps), rel_tol=1e-4)
        losses.append(out.metrics["loss:sum"])
    assert losses[-1] < losses[0] * 0.9, losses
    # forward does not change the weights; the sampler's logprobs agree with it
    f1 = tc.forward(data, "cross_entropy").result()
    f2 = tc.forward(data, "cross_entropy").result()
    assert [o["logprobs"].tolist() for o in f1.loss_fn_outputs] == [o["logprobs"].tolist() for o in f2.loss_fn_outputs]
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(TOKENS[0])
    got = sampler.compute_logprobs(prompt).result()
    assert got[0] is None
    want = f1.loss_fn_outputs[0]["logprobs"].tolist()
    assert np.allclose(got[1:], want, atol=LOGPROB_TOLERANCE), (got, want)
    res = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=4, temperature=1.0, stop=[])).result()
    assert len(res.sequences) == 3
    for seq in res.sequences:
        assert len(seq.tokens) == 4 and len(seq.logprobs or []) == 4 and seq.stop_reason == "length"
        assert isinstance(seq.sequence_id, str)
        # the sampler's logprobs are the trainer's: forward on prompt + sample gives the same numbers
        full = TOKENS[0] + list(seq.tokens)
        scored = _logprobs(tc, [_sl_datum(full)])[0][-4:]
        assert np.allclose(scored, list(seq.logprobs or []), atol=LOGPROB_TOLERANCE), (scored, seq.logprobs)
    svc.close("success").result()


def _logprobs(tc: tinker.TrainingClient, data: list[types.Datum]) -> list[list[float]]:
    out = tc.forward(data, "cross_entropy").result()
    return [o["logprobs"].tolist() for o in out.loss_fn_outputs]


def _flat(rows: list[list[float]]) -> list[float]:
    return [v for row in rows for v in row]


def test_chunks_sent_out_of_order_accumulate_like_one_call(server: Server) -> None:
    """With ``fwdbwd_max_chunk_len=1`` each datum is its own request, sent concurrently with the first last;
    the server runs them in seq_id order and accumulates, so the step equals one unchunked call's."""
    data = [_sl_datum(t) for t in TOKENS + [[3, 4, 5, 6]]]
    whole = _client(server).create_lora_training_client(BASE, rank=4, seed=1).result()
    fb = whole.forward_backward(data, "cross_entropy")
    whole.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    want_loss = fb.result().metrics["loss:sum"]
    server.service.max_chunk_len = 1
    try:
        chunked = _client(server).create_lora_training_client(BASE, rank=4, seed=1).result()
        fb = chunked.forward_backward(data, "cross_entropy")
        chunked.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        got = fb.result()
    finally:
        server.service.max_chunk_len = 1024
    assert len(got.loss_fn_outputs) == 3 and math.isclose(got.metrics["loss:sum"], want_loss, rel_tol=1e-5)
    assert np.allclose(_flat(_logprobs(chunked, data)), _flat(_logprobs(whole, data)), atol=1e-5)


def test_rl_loop_reward_rises_with_importance_sampling(server: Server) -> None:
    """Toy task: the reward of a sampled token is 1 when its id is even. Sample a group, centre the rewards,
    train with importance_sampling on the sampler's logprobs; the mean reward of fresh samples rises."""
    tc = _client(server).create_lora_training_client(BASE, rank=8, seed=3).result()
    group = 8
    prompt = [5, 17, 42]
    params = types.SamplingParams(max_tokens=4, temperature=1.0, stop=[], seed=0)

    def reward(tokens: list[int]) -> float:
        return sum(1.0 for t in tokens if t % 2 == 0) / len(tokens)

    rewards = []
    for step in range(5):
        sampler = tc.save_weights_and_get_sampling_client().result()
        res = sampler.sample(types.ModelInput.from_ints(prompt), group,
                             types.SamplingParams(max_tokens=4, temperature=1.0, stop=[], seed=step)).result()
        rs = [reward(list(s.tokens)) for s in res.sequences]
        rewards.append(float(np.mean(rs)))
        mean = float(np.mean(rs))
        data = []
        for seq, r in zip(res.sequences, rs, strict=True):
            toks = prompt + list(seq.tokens)
            n_prompt = len(prompt) - 1
            data.append(types.Datum(
                model_input=types.ModelInput.from_ints(toks[:-1]),
                loss_fn_inputs={
                    "target_tokens": toks[1:],
                    "logprobs": [0.0] * n_prompt + list(seq.logprobs or []),
                    "advantages": [0.0] * n_prompt + [r - mean] * len(seq.tokens),
                }))
        fb = tc.forward_backward(data, "importance_sampling")
        tc.optim_step(types.AdamParams(learning_rate=1e-1)).result()
        out = fb.result()
        if step == 0:  # sampled with the same weights: the ratio is 1 up to the logprob tolerance
            assert abs(out.metrics["ratio:mean"] - 1.0) < 1e-2, out.metrics
    final = tc.save_weights_and_get_sampling_client().result().sample(
        types.ModelInput.from_ints(prompt), 32, params).result()
    after = float(np.mean([reward(list(s.tokens)) for s in final.sequences]))
    assert after > rewards[0] + 0.2, (rewards, after)


def test_ppo_and_cispo_take_their_config_and_bad_input_is_a_user_error(server: Server) -> None:
    tc = _client(server).create_lora_training_client(BASE, rank=4, seed=4).result()
    toks = TOKENS[0]
    current = _logprobs(tc, [_sl_datum(toks)])[0]
    datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                        loss_fn_inputs={"target_tokens": toks[1:], "logprobs": [v - 0.5 for v in current],
                                        "advantages": [1.0] * len(current)})
    # ratio = e^0.5 ~ 1.65: every token clipped above 1.2 (ppo) but not above 4 (cispo default)
    ppo = tc.forward_backward([datum], "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).result()
    assert ppo.metrics["clip_frac:mean"] == pytest.approx(1.0)
    cispo = tc.forward_backward([datum], "cispo").result()
    assert cispo.metrics["clip_frac:mean"] == pytest.approx(0.0)
    wide = tc.forward_backward([datum], "ppo", {"clip_high_threshold": 2.0}).result()
    assert wide.metrics["clip_frac:mean"] == pytest.approx(0.0)
    tc.optim_step(types.AdamParams(learning_rate=0.0)).result()  # drop the accumulated gradients
    before = _logprobs(tc, [_sl_datum(toks)])
    bad = [
        (lambda: tc.forward_backward([datum], "dro"), "dro"),
        (lambda: tc.forward_backward([datum], "ppo", {"clip_eps": 0.2}), "clip_eps"),
        (lambda: tc.forward_backward([_sl_datum(toks)], "importance_sampling"), "advantages"),
        (lambda: tc.forward_backward([types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                                                  loss_fn_inputs={"target_tokens": toks[1:3]})], "cross_entropy"),
         "target_tokens"),
        (lambda: tc.forward_backward([_sl_datum([1, 10**6])], "cross_entropy"), "token id"),
    ]
    for call, word in bad:
        with pytest.raises(tinker.RequestFailedError) as err:
            call().result()
        assert err.value.category == types.RequestErrorCategory.User and word in str(err.value), str(err.value)
    # nothing was applied: an optim_step now has no gradient to apply, and the weights are unchanged
    with pytest.raises(tinker.RequestFailedError, match="no accumulated gradient"):
        tc.optim_step(types.AdamParams(learning_rate=1.0)).result()
    assert _logprobs(tc, [_sl_datum(toks)]) == before


def test_save_and_create_from_state_with_optimizer_resumes_exactly(server: Server) -> None:
    data = [_sl_datum(t) for t in TOKENS]
    adam = types.AdamParams(learning_rate=1e-2)
    tc = _client(server).create_lora_training_client(BASE, rank=4, seed=5).result()
    for _ in range(2):
        tc.forward_backward(data, "cross_entropy")
        tc.optim_step(adam).result()
    saved = tc.save_state("c1").result().path
    assert saved == f"tinker://{tc.model_id}/weights/c1"
    at_save = _logprobs(tc, data)
    tc.forward_backward(data, "cross_entropy")
    tc.optim_step(adam).result()
    uninterrupted = _logprobs(tc, data)

    svc = _client(server)
    warm = svc.create_training_client_from_state_with_optimizer(saved).result()
    assert warm.model_id.endswith(":train:0") and warm.get_info().model_data.model_name == BASE
    assert np.allclose(_flat(_logprobs(warm, data)), _flat(at_save), atol=1e-6)
    warm.forward_backward(data, "cross_entropy")
    warm.optim_step(adam).result()
    assert np.allclose(_flat(_logprobs(warm, data)), _flat(uninterrupted), atol=1e-5)

    cold = svc.create_training_client_from_state(saved).result()  # weights only: a fresh Adam state
    cold.forward_backward(data, "cross_entropy")
    cold.optim_step(adam).result()
    assert not np.allclose(_flat(_logprobs(cold, data)), _flat(uninterrupted), atol=1e-4)


def test_sampler_snapshots_keep_their_weights_while_training_goes_on(server: Server) -> None:
    data = [_sl_datum(t) for t in TOKENS]
    tc = _client(server).create_lora_training_client(BASE, rank=4, seed=6).result()
    prompt = types.ModelInput.from_ints(TOKENS[0])
    before = tc.save_weights_and_get_sampling_client().result()
    first = before.compute_logprobs(prompt).result()
    named = tc.save_weights_for_sampler("s0").result().path
    tc.forward_backward(data, "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
    after = tc.save_weights_and_get_sampling_client().result()
    assert before.compute_logprobs(prompt).result() == first
    assert after.compute_logprobs(prompt).result()[1:] != first[1:]
    by_path = _client(server).create_sampling_client(model_path=named).result()
    assert by_path.compute_logprobs(prompt).result() == first
    base = _client(server).create_sampling_client(base_model=BASE).result()
    assert np.allclose(base.compute_logprobs(prompt).result()[1:], first[1:], atol=LOGPROB_TOLERANCE)


def test_rest_client_runs_checkpoints_sessions_and_publish_to_an_adapter(server: Server) -> None:
    from teachloop.store.repos.deployments import AdapterVersions

    svc = _client(server)
    tc = svc.create_lora_training_client(BASE, rank=4, seed=7, user_metadata={"renderer_name": "role_colon"}).result()
    tc.forward_backward([_sl_datum(TOKENS[0])], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    state = tc.save_state("r1", ttl_seconds=3600).result().path
    sampler_path = tc.save_weights_for_sampler("r1s").result().path
    external = tc.save_weights_external("r1x").result().path
    rest = tinker.RestClient(base_url=server.url, api_key=server.key)
    caps = rest.get_server_capabilities().result()
    assert [m.model_name for m in caps.supported_models] == [BASE]
    run = rest.get_training_run(tc.model_id).result()
    assert run.base_model == BASE and run.lora_rank == 4 and run.user_metadata == {"renderer_name": "role_colon"}
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == state
    assert rest.get_training_run_by_tinker_path(state).result().training_run_id == tc.model_id
    assert tc.model_id in [r.training_run_id for r in rest.list_training_runs(limit=100).result().training_runs]
    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert {c.tinker_path for c in listed} == {state, sampler_path, external}
    assert {c.checkpoint_type for c in listed} == {"training", "sampler", "external"}
    assert state in {c.tinker_path for c in rest.list_user_checkpoints().result().checkpoints}
    info = rest.get_weights_info_by_tinker_path(state).result()
    assert info.base_model == BASE and info.lora_rank == 4 and info.is_lora
    urls = rest.get_external_weights_urls(external).result().urls
    assert any(name.endswith("config.json") for name in urls)
    # publish: public, and the adapter is the next version of a teachloop adapter that `teachloop deploy` serves
    rest.publish_checkpoint_from_tinker_path(sampler_path).result()
    with server.database.session(write=False) as s:
        version = AdapterVersions(s).resolve(server.org_id, "r1s")
        assert version.base_model == BASE and version.info["tinker_path"] == sampler_path
    assert next(c for c in rest.list_checkpoints(tc.model_id).result().checkpoints
                if c.tinker_path == sampler_path).public
    rest.unpublish_checkpoint_from_tinker_path(sampler_path).result()
    rest.set_checkpoint_ttl_from_tinker_path(state, 60).result()
    copied = rest.copy_weights(state, "default").result()
    assert copied.endswith(":train:0/weights/r1") and copied != state
    assert rest.get_weights_info_by_tinker_path(copied).result().lora_rank == 4
    rest.delete_checkpoint_from_tinker_path(copied).result()
    assert copied not in {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    # sessions and samplers
    sampler = tc.save_weights_and_get_sampling_client().result()
    session_id = tc.model_id.split(":")[0]
    session = rest.get_session(session_id).result()
    assert tc.model_id in session.training_run_ids
    assert sampler.get_base_model() == BASE
    assert session_id in rest.list_sessions().result().sessions
    sampler_id = session.sampler_ids[0]
    assert rest.get_sampler(sampler_id).result().base_model == BASE
    found = rest.search_sessions(types.SessionSearchRequest(session_id=session_id)).result()
    assert [s.session_id for s in found.sessions] == [session_id] and found.sessions[0].checkpoints_count >= 3
    # the model is a teachloop training run of the organisation
    with server.database.session(write=False) as s:
        from teachloop.store.schema.runs import TrainingRun

        runs = {r.name: r for r in s.query(TrainingRun).filter(TrainingRun.org_id == server.org_id)}
    assert runs[f"tinker {tc.model_id}"].step == 1 and runs[f"tinker {tc.model_id}"].algorithm == "tinker"
    svc.close("success").result()
    with server.database.session(write=False) as s:
        assert s.get(TrainingRun, run.teachloop_run_id if hasattr(run, "teachloop_run_id") else
                     runs[f"tinker {tc.model_id}"].id).status == "completed"


def test_other_organisations_cannot_reach_models_or_checkpoints(server: Server) -> None:
    tc = _client(server).create_lora_training_client(BASE, rank=4, seed=8).result()
    path = tc.save_state("private").result().path
    other = _client(server, server.other_key)
    with pytest.raises(tinker.RequestFailedError) as err:
        other.create_training_client_from_state(path).result()
    assert err.value.category == types.RequestErrorCategory.User and "not found" in str(err.value)
    rest = tinker.RestClient(base_url=server.url, api_key=server.other_key)
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run(tc.model_id).result()
    assert tc.model_id not in [r.training_run_id for r in rest.list_training_runs().result().training_runs]
    with pytest.raises(tinker.NotFoundError):
        rest.delete_checkpoint_from_tinker_path(path).result()
    # a viewer key reads but does not train
    viewer = _client(server, server.viewer_key)
    with pytest.raises(tinker.PermissionDeniedError):
        viewer.create_lora_training_client(BASE, rank=4).result()
    # a key without the tml- prefix is refused by the SDK itself; an unknown key by the server
    with pytest.raises(tinker.AuthenticationError):
        tinker.RestClient(base_url=server.url, api_key="tml-tl_nope_nope").list_training_runs().result()


def test_the_remaining_client_methods(server: Server) -> None:
    """Custom losses (client-side), deprecated loads, sampler handles, top-k and partial prompt logprobs."""
    import torch

    svc = _client(server)
    with pytest.warns(FutureWarning):
        assert [m.model_name for m in svc.get_server_capabilities().supported_models] == [BASE]
    tc = svc.create_lora_training_client(BASE, rank=4, seed=9).result()
    data = [_sl_datum(t) for t in TOKENS]

    def neg_ll(batch: list[types.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = sum(-(lp * d.loss_fn_inputs["weights"].to_torch()).sum() for d, lp in zip(batch, logprobs,
                                                                                        strict=True))
        return loss, {"custom_nll:sum": float(loss.detach())}

    custom = tc.forward_backward_custom(data, neg_ll).result()
    plain = tc.forward(data, "cross_entropy").result()
    assert custom.metrics["loss:sum"] == pytest.approx(plain.metrics["loss:sum"], rel=1e-4)
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    handle = svc.create_custom_loss(lambda logprobs, weights: (-(logprobs * weights).sum(), {}),
                                    input_ranks={"logprobs": 1, "weights": 1}).result()
    assert tc.forward_backward_custom(data, handle).result().metrics["loss:sum"] > 0
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    path = tc.save_state("m1").result().path
    tc.forward_backward(data, "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-1)).result()
    tc.load_state_with_optimizer(path).result()  # deprecated, still supported: back to the saved weights
    restored = svc.create_training_client_from_state(path).result()
    assert np.allclose(_flat(_logprobs(tc, data)), _flat(_logprobs(restored, data)), atol=1e-6)
    tc.load_state(path).result()
    # sampling: a client from the training client, top-k, partial prompt logprobs, handles
    sampler = tc.create_sampling_client(tc.save_weights_for_sampler("m1s").result().path).result()
    prompt = types.ModelInput.from_ints(TOKENS[0])
    res = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=3, stop=[]), include_prompt_logprobs=True,
                         topk_prompt_logprobs=3, topk_sample_logprobs=2, prompt_logprobs_last_n=2).result()
    assert res.prompt_logprobs is not None and res.prompt_logprobs[:-2] == [None] * (len(TOKENS[0]) - 2)
    topk = res.topk_prompt_logprobs
    assert topk is not None and topk[0] is None and len(topk[-1]) == 3
    full = sampler.compute_logprobs(prompt).result()
    assert np.allclose(res.prompt_logprobs[-2:], full[-2:], atol=LOGPROB_TOLERANCE)
    assert max(lp for _, lp in topk[-1]) >= full[-1] - LOGPROB_TOLERANCE
    for seq in res.sequences:
        assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == 3
        assert all(len(row) == 2 and row[0][1] >= row[1][1] for row in seq.topk_logprobs)
    clone = tinker.SamplingClient.from_sampler_handle(sampler.get_sampler_handle(), api_key=server.key)
    assert clone.compute_logprobs(prompt).result() == full
    assert clone.get_base_model() == BASE
    # SamplingClient.get_tokenizer loads the base model's name: offline, name the model by its folder (an alias)
    by_folder = svc.create_sampling_client(base_model=str(server.model_dir)).result()
    assert by_folder.get_tokenizer().vocab_size > 0
    svc.close("success").result()


def test_protocol_dedup_order_and_malformed_bodies(server: Server) -> None:
    """Raw HTTP: a retried seq_id runs once, a malformed body is a user error, and results stay retrievable."""
    import httpx

    headers = {"X-API-Key": server.key}
    http = httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60)

    def result(request_id: str, proto: bool = False) -> httpx.Response:
        for _ in range(20):
            r = http.post("/retrieve_future", json={"request_id": request_id},
                          headers={"Accept": "application/x-protobuf"} if proto else {})
            assert r.status_code == 200, r.text
            if r.headers["content-type"].startswith("application/json") and r.json().get("type") == "try_again":
                continue
            return r
        raise AssertionError("never finished")

    assert http.post("/client/config", json={"sdk_version": "0.38.0"}).json()["pjwt_auth_enabled"] is False
    session = http.post("/create_session", json={"tags": [], "user_metadata": {}}).json()["session_id"]
    created = http.post("/create_model", json={"session_id": session, "model_seq_id": 0, "base_model": BASE,
                                               "lora_config": {"rank": 4, "seed": 0}}).json()
    again = http.post("/create_model", json={"session_id": session, "model_seq_id": 0, "base_model": BASE,
                                             "lora_config": {"rank": 4, "seed": 0}}).json()
    assert again["request_id"] == created["request_id"]
    model_id = result(created["request_id"]).json()["model_id"]
    assert model_id == f"{session}:train:0"
    # an optim_step before any gradient fails in its turn; its retry (same seq_id) is the same request
    first = http.post("/optim_step", json={"model_id": model_id, "seq_id": 1, "adam_params": {}}).json()
    retry = http.post("/optim_step", json={"model_id": model_id, "seq_id": 1, "adam_params": {}}).json()
    assert first["request_id"] == retry["request_id"]
    assert result(first["request_id"]).json()["category"] == "user"
    # a body that is not protobuf: a user error naming it
    bad = http.post("/forward_backward", content=b"\xff\xff\xff not protobuf",
                    headers={"Content-Type": "application/x-protobuf"}).json()
    failed = result(bad["request_id"], proto=True).json()
    assert failed["category"] == "user" and "protobuf" in failed["error"]
    # seq_id 3 waits for 2; 2 arrives second (zstd-compressed) and both run, in order
    import zstandard
    from tinker.proto.request_conv import forward_backward_request_to_proto

    def fwdbwd(seq: int) -> bytes:
        req = types.ForwardBackwardRequest(
            forward_backward_input=types.ForwardBackwardInput(data=[_sl_datum(TOKENS[0])], loss_fn="cross_entropy"),
            model_id=model_id, seq_id=seq)
        return bytes(forward_backward_request_to_proto(req).SerializeToString())

    late = http.post("/optim_step", json={"model_id": model_id, "seq_id": 3,
                                          "adam_params": {"learning_rate": 0.01}}).json()
    server.service.long_poll = 0.3
    try:
        r = http.post("/retrieve_future", json={"request_id": late["request_id"]})
    finally:
        server.service.long_poll = 25.0
    assert r.json() == {"type": "try_again", "request_id": late["request_id"], "queue_state": "active"}
    early = http.post("/forward_backward", content=zstandard.ZstdCompressor().compress(fwdbwd(2)),
                      headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"}).json()
    assert result(early["request_id"], proto=True).headers["content-type"] == "application/x-protobuf"
    assert result(late["request_id"]).json()["metrics"]["step:max"] == 1.0
    # a seq_id far ahead is refused; an unknown request id is 404; a finished result can be read again
    far = http.post("/optim_step", json={"model_id": model_id, "seq_id": 10**6, "adam_params": {}}).json()
    assert "skips ahead" in result(far["request_id"]).json()["error"]
    assert http.post("/retrieve_future", json={"request_id": "nope"}).status_code == 404
    assert result(late["request_id"]).json()["metrics"]["step:max"] == 1.0
    # another organisation cannot read this organisation's futures
    other = http.post("/retrieve_future", json={"request_id": late["request_id"]},
                      headers={"X-API-Key": server.other_key})
    assert other.status_code == 404


def test_a_session_whose_client_went_away_is_ended_and_its_run_cancelled_saying_why(server: Server) -> None:
    """A client that exits without finishing its session (the cookbook's recipes do) stops heartbeating: after
    ``session_timeout`` the next session call ends it as interrupted, its run cancelled with the reason and its
    adapters unloaded. A live session is left alone. (Last in the module: it ends every silent session.)"""
    from sqlalchemy import select

    from teachloop.store.schema.runs import TrainingRun
    from teachloop.store.schema.tinker import TinkerModel

    tc = _client(server).create_lora_training_client(BASE, rank=4, seed=9).result()
    model_id = str(tc.model_id)
    service = server.app.state.tinker
    assert service.reap(force=True) == []  # its client heartbeats: nothing is stale at the default timeout
    timeout, service.session_timeout = service.session_timeout, 0.0
    try:
        time.sleep(0.05)
        ended = service.reap(force=True)
    finally:
        service.session_timeout = timeout
    assert model_id.split(":")[0] in ended
    with server.database.session(write=False) as s:
        run = s.get(TrainingRun, s.scalar(select(TinkerModel.run_id).where(TinkerModel.id == model_id)))
        assert run is not None and run.status == "cancelled" and "no heartbeat" in (run.error or "")
    assert model_id not in service._training  # its adapter is unloaded
    import httpx

    session_id = model_id.split(":")[0]
    with httpx.Client(base_url=server.url + "/api/v1", headers={"X-API-Key": server.key}, timeout=60) as http:
        beat = http.post("/session_heartbeat", json={"session_id": session_id})
        assert beat.status_code == 410 and "has finished (interrupted" in beat.text  # the SDK's loop stops on 410
        again = http.post(f"/sessions/{session_id}/finish", json={"reason": {"type": "success"}})
        assert again.status_code == 200 and again.json()["status"] == "interrupted"  # the first finish wins
        other = http.post("/session_heartbeat", json={"session_id": session_id},
                          headers={"X-API-Key": server.other_key})
        assert other.status_code == 404  # another organisation learns nothing
    with server.database.session(write=False) as s:
        assert s.get(TrainingRun, run.id).status == "cancelled"  # type: ignore[union-attr]
