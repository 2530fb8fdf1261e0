"""CapitalLookup: name a country's capital; the model may call the ``atlas`` tool first.

Reward: 0.8 for the right capital (normalised match of the final answer) plus
0.2 for a reply that ends with the requested ``answer: <city>`` line; the
weighted mean lies in [0, 1]. The atlas answers from a fixed table, so
episodes need no network. Tasks are a seeded shuffle of the table.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from teachloop.core.rl import Task
from teachloop.envs import Environment, NormalizedMatch, Regex, ToolError, system, tool, user

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
            "Canada": "Ottawa", "Egypt": "Cairo", "Chile": "Santiago", "Nepal": "Kathmandu", "Ghana": "Accra"}


@tool
def atlas(country: str) -> str:
    """Look up the capital of a country.

    Args:
        country: the country's English name.
    """
    if country.strip().title() not in CAPITALS:
        raise ToolError(f"unknown country {country!r}")
    return CAPITALS[country.strip().title()]


class CapitalLookup(Environment):
    """Name the capital of a country (an atlas tool is offered)."""

    name = "capital-lookup"
    version = "0.1.0"
    max_turns = 3
    tools = (atlas,)
    grader = 0.8 * NormalizedMatch() + 0.2 * Regex(r"answer:\s*\S+\s*$")

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        countries = sorted(CAPITALS)
        random.Random(f"capital-lookup:{seed}").shuffle(countries)
        for i, country in enumerate(countries):
            prompt = (system("End with a line 'answer: <city>'."), user(f"What is the capital of {country}?"))
            yield Task(id=f"capital-lookup-{seed}-{i}", prompt=prompt, answer=CAPITALS[country],
                       tools=(atlas.spec,))

    def reference(self, task: Task) -> str:
        return f"answer: {task.answer}"
