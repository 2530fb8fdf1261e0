"""LLM judges: grade with a rubric by asking another model, through any ``ChatCompleter``.

``LLMJudge`` scores one sample: it shows the judge the task, the reference
answer (if any), the response and the rubric, and reads the last
``score: N`` line of the judge's reply, N on ``scale``, normalised to [0, 1].
``RankingJudge`` is a group grader (RULER-style): it shows all responses of a
group at once and reads a JSON list of scores in [0, 1], so the judge can
compare them. Both take any completer: ``OpenAICompleter`` for an
OpenAI-compatible endpoint (teachloop's own ``/v1`` included), or the engine.
A judge reply without a readable score is a grader failure, not a zero.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.rl import ChatCompleter
from teachloop.core.sampling import SamplingParams
from teachloop.envs.graders.base import Grader, GroupGrader, Sample, Score
from teachloop.envs.graders.structured import extract_json

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
JUDGE_PARAMS = SamplingParams(max_tokens=512, temperature=0.0)


def _task_text(sample: Sample) -> str:
    return "\n\n".join(f"[{m.role}] {m.content}" for m in sample.task.prompt if m.role != "system") or "(none)"


def parse_judge_score(reply: str, scale: tuple[float, float]) -> float:
    """The judge's ``score: N`` (last one; a bare number also works), normalised to [0, 1]."""
    found = _SCORE.findall(reply)
    raw = found[-1] if found else reply.strip()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"judge reply has no 'score: N' line: {reply[-200:]!r}") from None
    lo, hi = scale
    return (min(max(value, lo), hi) - lo) / (hi - lo)


class LLMJudge(Grader):
    """Scores one sample against ``rubric`` with a judge model (see the module docstring)."""

    name = "judge"
    timeout_s = 120.0

    def __init__(
        self,
        rubric: str,
        completer: ChatCompleter,
        *,
        scale: tuple[float, float] = (0, 10),
        params: SamplingParams = JUDGE_PARAMS,
        name: str = "judge",
    ):
        if scale[1] <= scale[0]:
            raise ValueError("scale must be (low, high) with low < high")
        self.rubric, self.completer, self.scale, self.params, self.name = rubric, completer, scale, params, name

    @classmethod
    def openai(cls, rubric: str, *, base_url: str, model: str, api_key: str | None = None, **kw: Any) -> LLMJudge:
        """A judge behind an OpenAI-compatible endpoint (``base_url`` like ``http://host:8000/v1``)."""
        from teachloop.envs.completers import OpenAICompleter

        return cls(rubric, OpenAICompleter(base_url, model, api_key=api_key), **kw)

    def messages(self, sample: Sample) -> list[Message]:
        """The conversation sent to the judge."""
        lo, hi = self.scale
        system = (
            "You are a strict, fair grader. Judge the response against the rubric. "
            f"Think briefly, then end with one line 'score: N' where N is a number from {lo:g} to {hi:g}."
        )
        ref = f"\n\n## Reference answer\n{sample.task.answer}" if sample.task.answer else ""
        user = f"## Task\n{_task_text(sample)}{ref}\n\n## Response\n{sample.completion}\n\n## Rubric\n{self.rubric}"
        return [Message(role="system", content=system), Message(role="user", content=user)]

    async def ascore(self, sample: Sample) -> Score:
        [reply] = await self.completer.complete(self.messages(sample), self.params, n=1)
        value = parse_judge_score(reply.message.content, self.scale)
        return Score(value=value, details={"judge": reply.message.content[-500:]})


class RankingJudge(GroupGrader):
    """Scores a whole group at once, relative to each other (RULER-style), via a judge model."""

    name = "ranking_judge"

    def __init__(self, rubric: str, completer: ChatCompleter, *, params: SamplingParams = JUDGE_PARAMS,
                 name: str = "ranking_judge"):
        self.rubric, self.completer, self.params, self.name = rubric, completer, params, name

    def messages(self, samples: Sequence[Sample]) -> list[Message]:
        """The conversation sent to the judge."""
        system = (
            "You compare several responses to the same task and score each from 0 to 1 against the rubric; "
            "better responses get higher scores. Reply with JSON only: {\"scores\": [s1, s2, ...]}, one per response, in order."
        )
        responses = "\n\n".join(f"### Response {i + 1}\n{s.completion}" for i, s in enumerate(samples))
        ref = f"\n\n## Reference answer\n{samples[0].task.answer}" if samples[0].task.answer else ""
        user = f"## Task\n{_task_text(samples[0])}{ref}\n\n## Rubric\n{self.rubric}\n\n## Responses\n{responses}"
        return [Message(role="system", content=system), Message(role="user", content=user)]

    async def ascore_group(self, samples: Sequence[Sample]) -> list[Score]:
        [reply] = await self.completer.complete(self.messages(samples), self.params, n=1)
        parsed = extract_json(reply.message.content)
        scores = parsed.get("scores") if isinstance(parsed, dict) else parsed
        if not isinstance(scores, list) or not all(isinstance(s, int | float) for s in scores):
            raise ValueError(f"judge reply is not a list of scores: {reply.message.content[-200:]!r}")
        return [Score(value=min(max(float(s), 0.0), 1.0)) for s in scores]


__all__ = ["JUDGE_PARAMS", "LLMJudge", "RankingJudge", "parse_judge_score"]
