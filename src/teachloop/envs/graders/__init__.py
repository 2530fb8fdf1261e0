"""Graders: exact, normalised, regex, numeric, JSON schema, math, Python functions, LLM judges, OpenAI grader JSON.

See ``graders.base`` for the contract: ``await grader.grade(sample)`` never
raises, and graders combine with weights (``0.7 * a + 0.3 * b``).
"""

from teachloop.envs.graders.base import Grader, GroupGrader, Sample, Score, Weighted
from teachloop.envs.graders.function import FunctionGrader, grader
from teachloop.envs.graders.judge import LLMJudge, RankingJudge
from teachloop.envs.graders.math import MathEquiv
from teachloop.envs.graders.openai import from_openai_grader
from teachloop.envs.graders.structured import JsonSchema, extract_json
from teachloop.envs.graders.text import ExactMatch, NormalizedMatch, Numeric, Regex, normalize_text

__all__ = [
    "ExactMatch",
    "FunctionGrader",
    "Grader",
    "GroupGrader",
    "JsonSchema",
    "LLMJudge",
    "MathEquiv",
    "NormalizedMatch",
    "Numeric",
    "RankingJudge",
    "Regex",
    "Sample",
    "Score",
    "Weighted",
    "extract_json",
    "from_openai_grader",
    "grader",
    "normalize_text",
]
