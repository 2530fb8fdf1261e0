"""JSON extraction: read a short text about a person and return their record as JSON.

Each task carries its JSON schema (``info["schema"]``) and the expected
object (``info["expected"]``; the answer is the same object as JSON). The
reward is 0 for output that is not JSON or breaks the schema, else the
fraction of fields that match (strings compared case- and space-insensitively).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from teachloop.core.rl import Task
from teachloop.envs.base import Environment, system, user
from teachloop.envs.builtin._args import size_arg
from teachloop.envs.graders import JsonSchema

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "city": {"type": "string"},
        "job": {"type": "string"},
    },
    "required": ["name", "age", "city", "job"],
    "additionalProperties": False,
}
NAMES = ["Maria Lopez", "Kenji Sato", "Amara Okafor", "Lars Nilsson", "Priya Patel", "Tom Becker", "Ana Silva"]
CITIES = ["Lisbon", "Osaka", "Lagos", "Uppsala", "Pune", "Leipzig", "Recife", "Denver"]
JOBS = ["nurse", "carpenter", "teacher", "pilot", "chemist", "baker", "architect"]
TEMPLATES = [
    "{name}, {age}, lives in {city} and works as a {job}.",
    "Meet {name}: a {job} from {city}, {age} years old.",
    "At {age}, {name} moved to {city}, where they now work as a {job}.",
    "{city} is home to {name}, a {age}-year-old {job}.",
]


class JsonExtract(Environment):
    """Extract name, age, city and job from one sentence into JSON that fits a schema."""

    name = "json_extract"
    version = "1.0.0"
    grader = JsonSchema()

    def __init__(self, size: int | None = None):
        self.size = size_arg(size)

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        rng = random.Random(f"json_extract:{seed}")
        i = 0
        while self.size is None or i < self.size:
            rec = {"name": rng.choice(NAMES), "age": rng.randint(18, 80), "city": rng.choice(CITIES), "job": rng.choice(JOBS)}
            text = rng.choice(TEMPLATES).format(**rec)
            ask = f"Text: {text}\n\nReturn only a JSON object matching this schema:\n{json.dumps(SCHEMA)}"
            yield Task(id=f"json_extract-{seed}-{i}", prompt=(system("You extract data as JSON."), user(ask)),
                       answer=json.dumps(rec), info={"schema": SCHEMA, "expected": rec, "text": text})
            i += 1
