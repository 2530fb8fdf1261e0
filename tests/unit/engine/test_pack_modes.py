"""The fast path's weight modes (``LlamaForward(pack=...)``, ``llama.PACK_MODES``) on a tiny random Llama.

- ``"dense"`` (what ``low_memory`` loads) keeps one copy of each base projection: what oneDNN multiplies
  by is the dense weight itself (same storage), while ``"all"`` (the CPU default) holds a separate
  prepacked copy and ``"lm_head"`` only one of the unembedding;
- every mode gives the same hidden states, token logprobs and input gradients as plain ``F.linear``
  (``pack=False``) within float32 rounding;
- an unknown mode is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from teachloop.engine.llama import DEFAULT_PACK, LlamaForward, can_pack, single
from tests._tiny import tiny_llama

pytestmark = pytest.mark.skipif(not can_pack("cpu"), reason="no oneDNN on this CPU build")

#: float32, different GEMM kernels (oneDNN vs MKL): rounding only
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("packs"), hidden_size=64, num_layers=2)


def _forward(model_dir: Path, pack: bool | str | None) -> LlamaForward:
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    hf.requires_grad_(False)
    return LlamaForward(hf, pack=pack)


def _run(fw: LlamaForward) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states, token logprobs and d(sum of logprobs)/d(input embeddings) of two packed sequences."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, fw.vocab, (13,), generator=g)
    emb = fw.embed
    fw.embed = emb.detach().clone().requires_grad_(True)  # a leaf to take the input gradient at
    try:
        with torch.enable_grad():
            hidden = fw.forward_packed(tokens, [8, 5], single(None), training=True)
            lp, _ = fw.token_logprobs(hidden, torch.roll(tokens, -1), None, training=True)
            lp.sum().backward()
        assert fw.embed.grad is not None
        return hidden.detach(), lp.detach(), fw.embed.grad
    finally:
        fw.embed = emb


def _copies(fw: LlamaForward) -> list[bool]:
    """Per projection (unembedding first): whether oneDNN multiplies by a second copy of the weight."""
    out = []
    for proj in fw._projections():
        assert proj.packed is not None
        out.append(proj.packed.is_mkldnn or proj.packed.data_ptr() != proj.weight.data_ptr())
    return out


def test_dense_the_default_keeps_one_copy_of_every_projection(model_dir: Path) -> None:
    fw = _forward(model_dir, None)
    assert fw.pack == DEFAULT_PACK == "dense"
    assert not any(_copies(fw))


def test_all_and_lm_head_hold_prepacked_copies(model_dir: Path) -> None:
    fw = _forward(model_dir, "all")
    assert fw.pack == "all"
    assert all(_copies(fw))
    copies = _copies(_forward(model_dir, "lm_head"))
    assert copies[0] and not any(copies[1:])
    plain = _forward(model_dir, False)
    assert all(proj.packed is None for proj in plain._projections())


@pytest.mark.parametrize("pack", ["dense", "lm_head", "all"])
def test_every_mode_computes_what_f_linear_computes(model_dir: Path, pack: str) -> None:
    ref_hidden, ref_lp, ref_grad = _run(_forward(model_dir, False))
    hidden, lp, grad = _run(_forward(model_dir, pack))
    assert torch.allclose(hidden, ref_hidden, atol=TOLERANCE)
    assert torch.allclose(lp, ref_lp, atol=TOLERANCE)
    assert torch.allclose(grad, ref_grad, atol=TOLERANCE)
    assert grad.abs().sum() > 0


def test_an_unknown_mode_is_refused(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="pack must be one of"):
        _forward(model_dir, "prepacked")
