"""Built-in environments, one screen each: arithmetic, countdown, JSON extraction, guess-the-number."""

from teachloop.envs.builtin.arithmetic import Arithmetic
from teachloop.envs.builtin.countdown import Countdown
from teachloop.envs.builtin.guess_number import GuessNumber
from teachloop.envs.builtin.json_extract import JsonExtract

BUILTINS = {"arithmetic": Arithmetic, "countdown": Countdown, "json_extract": JsonExtract, "guess_number": GuessNumber}

__all__ = ["BUILTINS", "Arithmetic", "Countdown", "GuessNumber", "JsonExtract"]
