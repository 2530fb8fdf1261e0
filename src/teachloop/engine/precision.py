"""The precision the engine stores its frozen weights in (``TEACHLOOP_DTYPE``).

``lower_weights(hf_model, "bfloat16")`` converts, in place, the frozen linear
weights of a Llama-family model loaded in float32: every decoder projection
and the unembedding (and with it the input embedding when the two are tied,
so there is still one copy). The norms stay float32, which is what tells
``LlamaForward`` to keep its activations float32 and to run each frozen GEMM
through ``ops.CastLinear``: inputs cast to bfloat16, products accumulated in
float32 by the kernel, the result cast back. Attention, the KV cache, LoRA
factors, their gradients and the optimizer state stay float32: what bfloat16
changes is the frozen weights' rounding and the GEMMs' input rounding, the
same trade as mixed-precision training elsewhere (TRL's ``bf16=True``).

Why: on a CPU with AMX or AVX512-BF16 oneDNN multiplies bfloat16 2-8x faster
than float32, and the weights take half the memory. On a CPU without either,
oneDNN emulates bfloat16 and it is slower than float32 (5x measured): keep
the default there. ``bench/README.md`` ("bfloat16 weights") has the figures.

Only the fast path takes lower-precision weights: a model on
``hf_generic.py``'s path runs transformers' own forward, which would mix
dtypes, so it is refused with ``ModelError``.
"""

from __future__ import annotations

from typing import Any

import torch

from teachloop.core.errors import ModelError
from teachloop.engine.llama import model_problem

#: what ``lower_weights`` stores the frozen projections in: ``"float32"`` (as loaded, the default) or
#: ``"bfloat16"``: half the weights' memory, and GEMMs at the CPU's bfloat16 rate (AMX or AVX512-BF16:
#: 2-8x float32's; where the CPU lacks both, oneDNN emulates bfloat16 and it is slower than float32).
#: The embedding (when tied to the unembedding), norms, attention, the KV cache, LoRA factors,
#: their gradients and optimizer state stay float32 (``bench/README.md``, "bfloat16 weights").
WEIGHT_DTYPES = ("float32", "bfloat16")


def lower_weights(hf_model: Any, dtype: str) -> None:
    """Store every frozen linear weight of a Llama-family ``hf_model`` in ``dtype`` (``WEIGHT_DTYPES``), in place.

    Converts the decoder blocks' projections and the unembedding (with it the input
    embedding when the two are tied: one copy); RMSNorm weights stay float32, so
    ``LlamaForward`` keeps its activations float32 and multiplies by the lower-precision
    weights through ``CastLinear``. Call before adapters are created. Raises
    ``ModelError`` for a model off the fast path (its Hugging Face forward would
    mix dtypes) and ``ValueError`` for an unknown dtype.
    """
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights dtype must be one of {', '.join(WEIGHT_DTYPES)}; got {dtype!r}")
    if dtype == "float32":
        return
    problem = model_problem(hf_model)
    if problem is not None:
        raise ModelError(f"{dtype} weights need the engine's fast path: {problem}")
    target = getattr(torch, dtype)
    for layer in hf_model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(target)
    hf_model.lm_head.to(target)
    # transformers maps the safetensors file and the float32 tensors it loads are views of that mapping;
    # the ones left (norms) would keep the whole file mapped, its pages resident: copy them out
    for tensor in [*hf_model.parameters(), *hf_model.buffers()]:
        if tensor.dtype != target:
            tensor.data = tensor.data.clone()


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: a CUDA GPU that supports it, or a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


__all__ = ["WEIGHT_DTYPES", "lower_weights", "native_bfloat16"]
