"""Built-in environments, one screen each: arithmetic, countdown, JSON extraction, guess-the-number, and
``traffic`` (prompts from a file, graded by another environment: what the loop's GRPO trains on)."""

from teachloop.envs.builtin.arithmetic import Arithmetic
from teachloop.envs.builtin.countdown import Countdown
from teachloop.envs.builtin.guess_number import GuessNumber
from teachloop.envs.builtin.json_extract import JsonExtract
from teachloop.envs.builtin.traffic import TrafficPrompts

BUILTINS = {"arithmetic": Arithmetic, "countdown": Countdown, "json_extract": JsonExtract, "guess_number": GuessNumber,
            "traffic": TrafficPrompts}

__all__ = ["BUILTINS", "Arithmetic", "Countdown", "GuessNumber", "JsonExtract", "TrafficPrompts"]
