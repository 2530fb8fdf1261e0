"""Tiny, deterministic, offline stand-ins for the default model, shared by the test suites.

Import as ``from tests._tiny import tiny_tokenizer, tiny_llama`` (the repository root
is on ``sys.path`` under ``python -m pytest``; the conftest files of the suites that
use this module make sure of it).

- ``tiny_tokenizer(...) -> PreTrainedTokenizerFast``: a byte-level BPE tokenizer
  trained in memory on a fixed corpus (so any text encodes and decodes exactly, and
  common words are multi-byte tokens), with the ChatML special tokens of SmolLM2 and
  SmolLM2's own chat template. About 5 ms.
- ``tiny_llama(root, ...) -> Path``: writes ``root / name`` with a random-weight
  ``LlamaForCausalLM`` (2 layers, hidden 64, 4 heads, 2 kv heads, tied embeddings,
  vocab = the tokenizer's size) plus that tokenizer, loadable with
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
  Same seed, same bytes. Well under a second once torch and transformers are imported.
- ``tiny_qwen2(root, ...)`` and ``tiny_mistral(root, ..., sliding_window=None)``: the same
  for the other architectures the torch engine accepts (Qwen2: biases on q/k/v, untied
  embeddings; Mistral: optionally a sliding attention window).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: SmolLM2-135M-Instruct's chat template, verbatim (ChatML with a default system prompt).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Special tokens in SmolLM2's order: ids 0, 1, 2.
CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: Llama-3 header tokens, for tests of a second template style (pass as ``extra_special_tokens``).
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

_CORPUS = (
    "system user assistant tool You are a helpful AI assistant named SmolLM, trained by Hugging Face. "
    "What is 12 + 35? The answer is 47. Hello there! How are you today? I am fine, thank you. "
    "Call the weather tool for Paris. {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}} "
    "<tool_call> </tool_call> <tool_response> </tool_response> the of and to in is it that for on with as "
    "Please add these numbers: 1 2 3 4 5 6 7 8 9 0. Think step by step, then answer.\n\n"
)


def tiny_tokenizer(
    *,
    chat_template: str | None = SMOLLM2_CHAT_TEMPLATE,
    extra_special_tokens: Sequence[str] = (),
    vocab_size: int = 384,
) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with ChatML specials (eos and pad ``<|im_end|>``).

    ``extra_special_tokens`` are added after the ChatML ones (e.g. ``LLAMA3_SPECIAL_TOKENS``);
    ``chat_template=None`` leaves the tokenizer without a template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*CHATML_SPECIAL_TOKENS, *extra_special_tokens]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_CORPUS], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        additional_special_tokens=list(extra_special_tokens),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama(
    root: Path,
    *,
    name: str = "tiny-llama",
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    chat_template: str | None = SMOLLM2_CHAT_TEMPLATE,
) -> Path:
    """Write a tiny random-weight Llama and its tokenizer to ``root / name``; return that folder.

    4 attention heads, 2 kv heads, intermediate size 2 x hidden, 512 positions, tied
    embeddings, float32; bos/eos/pad ids follow ``tiny_tokenizer``. The weights depend only
    on ``seed`` (the global torch RNG is left as it was).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(chat_template=chat_template)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=eos,
        pad_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=eos
    )
    out = Path(root) / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_qwen2(root: Path, *, name: str = "tiny-qwen2", seed: int = 0, num_layers: int = 2, hidden_size: int = 64) -> Path:
    """Write a tiny random-weight ``Qwen2ForCausalLM`` (q/k/v biases, untied embeddings) to ``root / name``.

    Shapes as ``tiny_llama``; the q/k/v biases are random (not zero), so a forward that
    dropped them would be caught.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def config(**common: object) -> Qwen2Config:
        return Qwen2Config(**common, tie_word_embeddings=False, use_sliding_window=False)

    return _write_tiny(Path(root) / name, seed, num_layers, hidden_size, config, Qwen2ForCausalLM, random_biases=True)


def tiny_mistral(
    root: Path,
    *,
    name: str = "tiny-mistral",
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    sliding_window: int | None = None,
) -> Path:
    """Write a tiny random-weight ``MistralForCausalLM`` to ``root / name`` (``sliding_window`` tokens, or none)."""
    from transformers import MistralConfig, MistralForCausalLM

    def config(**common: object) -> MistralConfig:
        return MistralConfig(**common, tie_word_embeddings=True, sliding_window=sliding_window)

    return _write_tiny(Path(root) / name, seed, num_layers, hidden_size, config, MistralForCausalLM)


def _write_tiny(
    out: Path,
    seed: int,
    num_layers: int,
    hidden_size: int,
    make_config: Callable[..., Any],
    model_cls: Any,
    *,
    random_biases: bool = False,
) -> Path:
    import torch
    from transformers import GenerationConfig

    tokenizer = tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = make_config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=eos,
        pad_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32).eval()
        if random_biases:
            with torch.no_grad():
                for module in model.modules():
                    bias = getattr(module, "bias", None)
                    if isinstance(bias, torch.Tensor):
                        bias.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


__all__ = [
    "CHATML_SPECIAL_TOKENS",
    "LLAMA3_SPECIAL_TOKENS",
    "SMOLLM2_CHAT_TEMPLATE",
    "tiny_llama",
    "tiny_mistral",
    "tiny_qwen2",
    "tiny_tokenizer",
]
