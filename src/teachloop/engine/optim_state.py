"""The check every backend runs before it loads a saved AdamW state into an adapter.

``torch.optim.Optimizer.load_state_dict`` checks only the number of
parameters: moments of another shape (a state saved for another LoRA rank or
other target modules) load silently and fail -- or worse, broadcast -- at the
next step. ``check_optimizer_state`` refuses such a state with ``ModelError``
naming the first parameter that differs (its name when the caller gives the
names, else its index), the moment and both shapes. It reads nothing from disk
and changes nothing; ``where`` is only used in the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from teachloop.core.errors import ModelError


def check_optimizer_state(opt_state: Any, params: Sequence[torch.Tensor], where: object,
                          names: Sequence[str] | None = None) -> None:
    """Raise ``ModelError`` unless ``opt_state`` (an AdamW state dict) has one moment per parameter, shaped alike."""
    try:
        groups = opt_state["param_groups"]
        ids = [i for g in groups for i in g["params"]]
        moments = opt_state["state"]
    except (KeyError, TypeError):
        raise ModelError(f"{where}: not an optimizer state") from None
    if len(ids) != len(params):
        raise ModelError(f"optimizer state in {where} has {len(ids)} parameters; the adapter has {len(params)}")
    for position, (index, param) in enumerate(zip(ids, params, strict=True)):
        for moment, value in (moments.get(index) or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                label = f"{names[position]} (parameter {position})" if names is not None else f"parameter {index}"
                raise ModelError(
                    f"optimizer state in {where} does not fit the adapter: {moment} of {label} has shape "
                    f"{tuple(value.shape)}, expected {tuple(param.shape)}"
                )


__all__ = ["check_optimizer_state"]
