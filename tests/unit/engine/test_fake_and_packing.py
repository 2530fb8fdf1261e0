"""FakeEngine honours the Engine contract; packing plans share prefixes exactly; the completer batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from teachloop.core import AdamParams, Datum, InvalidInput, LoraSpec, Message, SamplingParams
from teachloop.engine import Engine, FakeEngine
from teachloop.engine.packing import plan_packing


def test_fake_engine_is_an_engine_and_learns() -> None:
    eng = FakeEngine(vocab_size=16, seed=0)
    assert isinstance(eng, Engine)
    eng.create_adapter("a", LoraSpec(rank=4, seed=0))
    batch = [Datum.from_sequence([1, 5, 5, 5, 5], [0, 1, 1, 1, 1])]
    losses = []
    for _ in range(30):
        losses.append(eng.forward_backward(batch, "cross_entropy", adapter="a").loss)
        eng.optim_step("a", AdamParams(learning_rate=0.1))
    assert losses[-1] < 0.2 * losses[0]
    out = eng.sample([[1]], 4, SamplingParams(max_tokens=5, temperature=0, stop=[]), adapter="a")[0]
    assert all(s.tokens == [5] * 5 for s in out)
    lp = eng.logprobs([[1, *out[0].tokens]], adapter="a")[0]
    assert lp == pytest.approx(out[0].logprobs, abs=1e-6)


def test_fake_engine_checkpoint_round_trip(tmp_path: Path) -> None:
    eng = FakeEngine(vocab_size=16)
    eng.create_adapter("a", LoraSpec(rank=2, seed=1))
    batch = [Datum.from_sequence([1, 2, 3], [0, 1, 1])]
    eng.forward_backward(batch, "cross_entropy", adapter="a")
    eng.optim_step("a", AdamParams(learning_rate=0.05))
    eng.save_checkpoint("a", tmp_path / "ck")
    eng.load_checkpoint("b", tmp_path / "ck")
    for name in ("a", "b"):
        eng.forward_backward(batch, "cross_entropy", adapter=name)
        eng.optim_step(name, AdamParams(learning_rate=0.05))
    assert eng.logprobs([[1, 2, 3]], "a") == eng.logprobs([[1, 2, 3]], "b")
    with pytest.raises(InvalidInput):
        eng.sample([[99]], 1, SamplingParams())


@pytest.mark.parametrize(
    "seqs",
    [
        [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7], [1, 2, 3, 4, 9, 9, 9], [8, 8]],
        [[5, 5, 5, 5, 5]] * 3,
        [[1], [2, 3]],
        [[0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 1], [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 2],
         [0, 1, 2, 3, 4, 20, 21, 22, 23, 24, 1], [0, 1, 2, 3, 4, 20, 21, 22, 23, 24, 2]],
    ],
)
def test_packing_plan_reconstructs_every_sequence(seqs: list[list[int]]) -> None:
    plan = plan_packing(seqs)
    for seq, rows in zip(seqs, plan.rows, strict=True):
        assert [plan.tokens[r] for r in rows] == seq
    assert len(plan.tokens) + plan.saved_tokens == sum(len(s) for s in seqs)
    assert all(p == -1 or plan.parent[p] == -1 for p in plan.parent)


def test_packing_prefers_the_grouping_that_saves_most() -> None:
    system = list(range(100, 106))
    groups = [[system + [g] * 10 + [200 + i] for i in range(4)] for g in range(3)]
    plan = plan_packing([s for g in groups for s in g])
    # one shared root per prompt (16 tokens), not one shared system prompt (6 tokens)
    assert sorted(n for n, p in zip(plan.lens, plan.parent, strict=True) if p == -1) == [16, 16, 16]
    assert plan_packing([s for g in groups for s in g], share=False).saved_tokens == 0


class _Render:
    """A renderer stand-in for the completer test: one token per character."""

    def build_prompt(self, messages, tools=None):  # type: ignore[no-untyped-def]
        return [1 + (ord(c) % 10) for m in messages for c in m.content]

    def stop_token_ids(self) -> list[int]:
        return [0]

    def parse_reply(self, tokens, tools=None):  # type: ignore[no-untyped-def]
        return Message(role="assistant", content=" ".join(map(str, tokens)))


def test_engine_completer_batches_concurrent_calls() -> None:
    from teachloop.engine.completer import EngineCompleter

    eng = FakeEngine(vocab_size=16)
    calls: list[int] = []
    real = eng.sample

    def counting(prompts, n, params, adapter=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(prompts))
        return real(prompts, n, params, adapter, **kw)

    eng.sample = counting  # type: ignore[method-assign]
    comp = EngineCompleter(eng, _Render())  # type: ignore[arg-type]

    async def run() -> list:
        msgs = [[Message(role="user", content=f"q{i}")] for i in range(5)]
        return await asyncio.gather(*(comp.complete(m, SamplingParams(max_tokens=4), n=2) for m in msgs))

    results = asyncio.run(run())
    assert calls == [5]  # one engine call for five concurrent episodes
    assert all(len(r) == 2 and r[0].turn is not None for r in results)
    turn = results[0][0].turn
    assert len(turn.tokens) == len(turn.logprobs) >= 1


def test_inverse_cdf_sampling_follows_the_distribution() -> None:
    import torch

    from teachloop.engine.sampler import _choose

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(20000, 4).contiguous()
    gen = torch.Generator().manual_seed(0)
    picks = _choose(logits, SamplingParams(temperature=1.0), gen)
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    assert torch.allclose(freq, probs, atol=0.015) and freq[3] == 0
    top1 = _choose(logits[:100], SamplingParams(temperature=1.0, top_k=1), gen)
    assert bool((top1 == 0).all())
    nucleus = _choose(logits, SamplingParams(temperature=1.0, top_p=0.75), gen)
    assert set(nucleus.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75; 2 and 3 are cut
    cold = _choose(logits, SamplingParams(temperature=0.25), gen)
    assert (cold == 0).float().mean() > 0.85


def test_two_level_inverse_cdf_is_exact_across_blocks() -> None:
    """Mass in several CDF blocks (and in the padded last one) is drawn in proportion."""
    import torch

    from teachloop.engine.sampler import CDF_BLOCK, _choose

    vocab = 3 * CDF_BLOCK + 100  # the last block is padded
    probs = torch.zeros(vocab)
    targets = {3: 0.2, CDF_BLOCK + 44: 0.3, 2 * CDF_BLOCK + 255: 0.1, vocab - 1: 0.4}
    for tok, p in targets.items():
        probs[tok] = p
    gen = torch.Generator().manual_seed(1)
    picks = _choose(probs.log().expand(40000, vocab).contiguous(), SamplingParams(temperature=1.0), gen)
    freq = torch.bincount(picks, minlength=vocab).float() / len(picks)
    assert set(torch.nonzero(freq).squeeze(-1).tolist()) == set(targets)
    for tok, p in targets.items():
        assert abs(float(freq[tok]) - p) < 0.01
    flat = _choose(torch.zeros(40000, vocab), SamplingParams(temperature=1.0), gen)  # uniform
    assert abs(float(flat.float().mean()) - (vocab - 1) / 2) < 5 and int(flat.min()) < 5 and int(flat.max()) > vocab - 6
