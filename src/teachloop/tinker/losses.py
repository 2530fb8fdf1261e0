"""Tinker's losses on the engine's: names, ``loss_fn_config`` keys and per-datum inputs.

Tinker names its loss inputs ``target_tokens``, ``weights`` (cross-entropy),
``logprobs`` (the sampler's, RL) and ``advantages`` (RL); the engine's
``Datum`` calls them ``target_tokens``, ``weights``, ``sampler_logprobs`` and
``advantages``. Configuration keys are ``clip_low_threshold`` and
``clip_high_threshold`` (``ppo``, ``cispo``). ``to_engine`` checks everything
against the loss -- an unknown loss, config key or input, a missing input, a
float where token ids belong -- and raises ``InvalidInput`` naming it, before
any work. For the RL losses without ``weights`` the weight of a token is 1
where its advantage is non-zero and 0 elsewhere: the loss and gradient are the
same as with all ones (a zero advantage contributes nothing) and the engine's
``:mean`` metrics then average over the trained tokens rather than the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from teachloop.core.errors import InvalidInput
from teachloop.core.training import Datum, LossConfig, LossFn
from teachloop.tinker.proto import TinkerDatum

#: Tinker loss name -> the config keys it accepts.
SUPPORTED: dict[str, frozenset[str]] = {
    "cross_entropy": frozenset(),
    "importance_sampling": frozenset(),
    "ppo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "cispo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
}
#: Tinker losses this server does not run (named in the error).
UNSUPPORTED = ("dro", "gspo", "stable_reinforce", "custom")

_INPUTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # loss -> (required, optional)
    "cross_entropy": (frozenset({"target_tokens"}), frozenset({"weights"})),
    "importance_sampling": (frozenset({"target_tokens", "logprobs", "advantages"}), frozenset({"weights"})),
    "ppo": (frozenset({"target_tokens", "logprobs", "advantages"}), frozenset({"weights"})),
    "cispo": (frozenset({"target_tokens", "logprobs", "advantages"}), frozenset({"weights"})),
}


def loss_config(loss_fn: str, config: Mapping[str, float | str]) -> tuple[LossFn, LossConfig]:
    """The engine's loss and ``LossConfig`` for Tinker's ``loss_fn`` and ``loss_fn_config``."""
    if loss_fn not in SUPPORTED:
        what = "is not supported by this server" if loss_fn in UNSUPPORTED else "is not a Tinker loss"
        raise InvalidInput(
            f"loss_fn {loss_fn!r} {what}; supported: {', '.join(SUPPORTED)}", param="loss_fn"
        )
    allowed = SUPPORTED[loss_fn]
    unknown = sorted(set(config) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise InvalidInput(
            f"loss_fn_config key(s) {', '.join(unknown)} are not used by {loss_fn} (it accepts: {accepted})",
            param="loss_fn_config",
        )
    values: dict[str, float] = {}
    for key, value in config.items():
        if isinstance(value, str):
            raise InvalidInput(f"loss_fn_config[{key!r}] must be a number, got {value!r}", param="loss_fn_config")
        values[key] = float(value)
    try:
        cfg = LossConfig(clip_low=values.get("clip_low_threshold"), clip_high=values.get("clip_high_threshold"))
    except ValueError as err:
        raise InvalidInput(f"loss_fn_config is invalid: {err}".splitlines()[0], param="loss_fn_config") from None
    cfg.clip_bounds(loss_fn)  # type: ignore[arg-type]
    return loss_fn, cfg  # type: ignore[return-value]


def to_engine(loss_fn: str, data: Sequence[TinkerDatum], vocab_size: int) -> list[Datum]:
    """The engine's datums for ``data`` under ``loss_fn`` (already checked by ``loss_config``)."""
    if not data:
        raise InvalidInput("forward_backward needs at least one datum", param="data")
    required, optional = _INPUTS[loss_fn]
    out: list[Datum] = []
    for i, d in enumerate(data):
        names = set(d.inputs)
        missing = sorted(required - names)
        if missing:
            raise InvalidInput(f"data[{i}] lacks loss input(s) {', '.join(missing)} needed by {loss_fn}",
                               param="loss_fn_inputs")
        extra = sorted(names - required - optional)
        if extra:
            raise InvalidInput(
                f"data[{i}] has loss input(s) {', '.join(extra)} that {loss_fn} does not use "
                f"(it reads {', '.join(sorted(required | optional))})",
                param="loss_fn_inputs",
            )
        for name, values in (("model_input", d.tokens), ("target_tokens", d.inputs["target_tokens"])):
            if any(isinstance(v, float) and not float(v).is_integer() for v in values):
                raise InvalidInput(f"data[{i}].{name} must hold integer token ids", param=name)
            if any(int(v) < 0 or int(v) >= vocab_size for v in values):
                raise InvalidInput(f"data[{i}].{name} has a token id outside [0, {vocab_size})", param=name)
        weights = _floats(d.inputs.get("weights"))
        advantages = _floats(d.inputs.get("advantages"))
        if loss_fn != "cross_entropy" and weights is None and advantages is not None:
            weights = [1.0 if a != 0 else 0.0 for a in advantages]
        out.append(Datum(
            input_tokens=[int(t) for t in d.tokens],
            target_tokens=[int(t) for t in d.inputs["target_tokens"]],
            weights=weights,
            advantages=advantages,
            sampler_logprobs=_floats(d.inputs.get("logprobs")),
        ))
    return out


def _floats(values: Sequence[float | int] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


__all__ = ["SUPPORTED", "UNSUPPORTED", "loss_config", "to_engine"]
