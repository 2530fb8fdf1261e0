"""Adapters that load other ecosystems unchanged: reasoning-gym, TRL reward functions, verifiers v1, OpenAI graders.

Each third-party package is imported lazily, inside the adapter that needs it.
"""

from teachloop.envs.adapters.openai_graders import GraderJsonEnv
from teachloop.envs.adapters.reasoning_gym import ReasoningGym
from teachloop.envs.adapters.trl import TRLReward, from_trl_reward, to_trl_reward
from teachloop.envs.adapters.verifiers import VerifiersTaskset

__all__ = ["GraderJsonEnv", "ReasoningGym", "TRLReward", "VerifiersTaskset", "from_trl_reward", "to_trl_reward"]
