"""teachloop.envs -- environments, graders, rollouts, adapters and publish-time checks (layer L2).

An environment poses tasks, answers the model's turns and scores the result;
``rollout`` runs it against any ``core.rl.ChatCompleter`` (the engine, or an
OpenAI-compatible endpoint), concurrently, with failures recorded as data.
Imports only ``core`` (and ``render``); never the engine, the store or training.
Third-party ecosystems (reasoning-gym, verifiers, math-verify) load lazily.
"""

from teachloop.envs.adapters import (
    GraderJsonEnv,
    ReasoningGym,
    TRLReward,
    VerifiersTaskset,
    from_trl_reward,
    to_trl_reward,
)
from teachloop.envs.base import Environment, system, user
from teachloop.envs.builtin import BUILTINS, Arithmetic, Countdown, GuessNumber, JsonExtract
from teachloop.envs.check import CheckReport, CheckResult, OracleCompleter, check_environment
from teachloop.envs.completers import OpenAICompleter, ScriptedCompleter
from teachloop.envs.eval import CI_METHOD, EvalReport, TaskFailure, evaluate, mean_ci95, report_from_groups
from teachloop.envs.extract import Extractor, boxed, final_answer, last_number, tagged
from teachloop.envs.graders import (
    ExactMatch,
    FunctionGrader,
    Grader,
    GroupGrader,
    JsonSchema,
    LLMJudge,
    MathEquiv,
    NormalizedMatch,
    Numeric,
    RankingJudge,
    Regex,
    Sample,
    Score,
    Weighted,
    extract_json,
    from_openai_grader,
    grader,
)
from teachloop.envs.manifest import Manifest, Price, Resources, build_manifest, package_hash, parse_semver
from teachloop.envs.registry import ENTRY_POINT_GROUP, EnvEntry, available, load
from teachloop.envs.rollout import rollout, rollout_group, run_episode
from teachloop.envs.scaffold import scaffold
from teachloop.envs.tools import Tool, ToolError, tool

__all__ = [
    "BUILTINS",
    "CI_METHOD",
    "ENTRY_POINT_GROUP",
    "Arithmetic",
    "CheckReport",
    "CheckResult",
    "Countdown",
    "EnvEntry",
    "Environment",
    "EvalReport",
    "ExactMatch",
    "Extractor",
    "FunctionGrader",
    "Grader",
    "GraderJsonEnv",
    "GroupGrader",
    "GuessNumber",
    "JsonExtract",
    "JsonSchema",
    "LLMJudge",
    "Manifest",
    "MathEquiv",
    "NormalizedMatch",
    "Numeric",
    "OpenAICompleter",
    "OracleCompleter",
    "Price",
    "RankingJudge",
    "ReasoningGym",
    "Regex",
    "Resources",
    "Sample",
    "Score",
    "ScriptedCompleter",
    "TRLReward",
    "TaskFailure",
    "Tool",
    "ToolError",
    "VerifiersTaskset",
    "Weighted",
    "available",
    "boxed",
    "build_manifest",
    "check_environment",
    "evaluate",
    "extract_json",
    "final_answer",
    "from_openai_grader",
    "from_trl_reward",
    "grader",
    "last_number",
    "load",
    "mean_ci95",
    "package_hash",
    "parse_semver",
    "report_from_groups",
    "rollout",
    "rollout_group",
    "run_episode",
    "scaffold",
    "system",
    "tagged",
    "to_trl_reward",
    "tool",
    "user",
]
