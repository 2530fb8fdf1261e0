"""Reading a PEFT LoRA adapter folder for the torch engine, checked against its base model.

Contract: ``read_peft_adapter`` reads ``adapter_config.json`` and
``adapter_model.safetensors`` and checks every LoRA factor against the base
model's layers *before* the engine changes anything, so loading a folder is
all-or-nothing (``TorchEngine.load_adapter``). It only reads; writing an adapter
is PEFT's ``save_pretrained`` (``TorchEngine.save_adapter``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from teachloop.core.errors import ModelError, NotFound
from teachloop.core.training import LoraSpec


def read_peft_adapter(path: Path, model: torch.nn.Module, groups: dict[str, list[str]],
                      device: torch.device) -> tuple[LoraSpec, dict[str, torch.Tensor]]:
    """Config and weights of the PEFT adapter folder ``path``, checked against the base ``model`` (every LoRA
    factor names one of its 2-D layers, with that layer's shape at the adapter's rank); changes nothing.
    ``groups``: the base's LoRA target groups (``attn``, ``mlp``, ``unembed``: module names).
    Raises ``NotFound`` (no such adapter folder or weights) or ``ModelError`` (unreadable, or not for this base)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise NotFound(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{cfg_file} is not valid JSON: {err}".splitlines()[0]) from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{cfg_file} is not a JSON object")
    spec = spec_from_peft(cfg, groups)
    weights_file = path / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise NotFound(f"{path} has no adapter_model.safetensors")
    try:
        state_dict = load_file(str(weights_file), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"cannot read {weights_file}: {err}".splitlines()[0]) from None
    modules = dict(model.named_modules())
    found = 0
    for key, tensor in state_dict.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        found += 1
        owner = key.split(".lora_")[0].removeprefix("base_model.model.")
        module = modules.get(owner)
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            raise ModelError(f"adapter at {path} does not fit this base model: no layer {owner!r}")
        out_f, in_f = weight.shape
        if type(getattr(module, "base_layer", module)).__name__ == "Conv1D":  # GPT-2 style: weight [in, out]
            in_f, out_f = out_f, in_f
        want = (spec.rank, in_f) if ".lora_A." in key else (out_f, spec.rank)
        if tuple(tensor.shape) != want:
            raise ModelError(
                f"adapter at {path} does not fit this base model: {key} has shape {tuple(tensor.shape)}, "
                f"expected {want} (rank {spec.rank})"
            )
    if not found:
        raise ModelError(f"{weights_file} holds no LoRA weights")
    return spec, state_dict


def spec_from_peft(cfg: dict[str, Any], groups: dict[str, list[str]]) -> LoraSpec:
    """The ``LoraSpec`` an ``adapter_config.json`` describes (``groups``: as in ``read_peft_adapter``)."""
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    names = set(targets) | {t.split(".")[-1] for t in targets}
    try:
        return LoraSpec(
            rank=int(cfg.get("r", 8)),
            alpha=float(cfg.get("lora_alpha", 8)),
            dropout=float(cfg.get("lora_dropout", 0.0)),
            train_attn=bool(names & set(groups["attn"])),
            train_mlp=bool(names & set(groups["mlp"])),
            train_unembed=bool(names & set(groups["unembed"])),
        )
    except ValueError as err:
        raise ModelError(f"unsupported adapter_config.json: {err}".splitlines()[0]) from None


__all__ = ["read_peft_adapter", "spec_from_peft"]
