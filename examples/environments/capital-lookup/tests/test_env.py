import asyncio

from capital_lookup.env import CapitalLookup

from teachloop.envs import Sample


def test_reference_scores_top_and_format_alone_scores_little():
    env = CapitalLookup()
    task = env.take(1)[0]
    assert asyncio.run(env.score(Sample.of(task, f"answer: {task.answer}"))).value == 1.0
    assert asyncio.run(env.score(Sample.of(task, "answer: Atlantis"))).value == 0.2
