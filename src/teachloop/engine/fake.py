"""A fast fake engine for unit tests: a bigram model with low-rank adapters.

``FakeEngine`` implements the whole ``Engine`` contract in milliseconds: the
next-token logits are ``table[prev] (+ scale * A[prev] @ B)`` for an adapter,
sampling honours every ``SamplingParams`` field, the losses are the real ones
(``engine/losses.py``), gradients accumulate until ``optim_step`` (real
AdamW), and checkpoints round-trip. Use it to test rollouts, GRPO, serving and
the loop without a transformer. It is deterministic for a given ``seed``.

Text: the fake has no tokenizer. Stop *strings* are matched against
``decode(tokens)``: by default token ``i`` is the single character
``LETTERS[i % 62]`` (``a-z``, ``A-Z``, ``0-9``); pass ``decode=tokenizer.decode``
to match against real text. As in the torch engine, a list of stop strings
replaces EOS, and the token that completes a stop string is the last one returned.

``load_adapter`` and ``load_checkpoint`` are all-or-nothing, as the ``Engine``
contract asks: a bad folder raises and leaves the adapter of that name as it was
(an optimizer state whose moments do not fit the adapter included:
``engine.optim_state``, the torch engine's check).
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from teachloop.core.errors import Conflict, InvalidInput, ModelError, NotFound
from teachloop.core.sampling import SampledSequence, SamplingParams, check_n
from teachloop.core.training import (
    RL_LOSSES,
    AdamParams,
    Datum,
    ForwardBackwardResult,
    LoraSpec,
    LossConfig,
    LossFn,
    OptimStepResult,
)
from teachloop.engine.base import AdapterInfo, LogprobsFor
from teachloop.engine.losses import TokenInputs, compute_loss
from teachloop.engine.optim_state import check_optimizer_state
from teachloop.engine.sampler import _choose

#: What the default ``decode`` maps token ``i`` to: ``LETTERS[i % len(LETTERS)]``.
LETTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits


def letters(tokens: Sequence[int]) -> str:
    """The default text of ``tokens``: one character of ``LETTERS`` per token."""
    return "".join(LETTERS[int(t) % len(LETTERS)] for t in tokens)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class _FakeAdapter:
    spec: LoraSpec
    A: torch.nn.Parameter
    B: torch.nn.Parameter
    optimizer: torch.optim.AdamW
    step: int = 0
    accumulated: int = 0


class FakeEngine:
    """A bigram ``Engine`` over ``vocab_size`` tokens. Token ``eos_token_id`` (default 0) ends replies."""

    def __init__(
        self,
        vocab_size: int = 64,
        *,
        seed: int = 0,
        eos_token_id: int = 0,
        context_length: int = 512,
        decode: Callable[[Sequence[int]], str] | None = None,
    ):
        gen = torch.Generator().manual_seed(seed)
        self.decode = decode or letters
        self.table = torch.randn(vocab_size, vocab_size, generator=gen)
        self._vocab = vocab_size
        self._eos = [eos_token_id]
        self._context = context_length
        self._adapters: dict[str, _FakeAdapter] = {}
        self.model_name = f"fake-bigram-{vocab_size}"

    @property
    def vocab_size(self) -> int:
        """Vocabulary size."""
        return self._vocab

    @property
    def context_length(self) -> int:
        """Longest sequence."""
        return self._context

    @property
    def eos_token_ids(self) -> list[int]:
        """The EOS token."""
        return list(self._eos)

    # --------------------------------------------------------------- adapters
    def _get(self, name: str) -> _FakeAdapter:
        if name not in self._adapters:
            raise NotFound(f"adapter {name!r} is not loaded on this engine")
        return self._adapters[name]

    def create_adapter(self, name: str, spec: LoraSpec) -> AdapterInfo:
        """A fresh adapter (B = 0)."""
        if name in self._adapters:
            raise Conflict(f"adapter {name!r} already exists on this engine")
        self._adapters[name] = self._new_adapter(spec)
        return self._info(name)

    def _new_adapter(self, spec: LoraSpec) -> _FakeAdapter:
        gen = torch.Generator().manual_seed(spec.seed or 0)
        A = torch.nn.Parameter(torch.randn(self._vocab, spec.rank, generator=gen) / math.sqrt(spec.rank))
        B = torch.nn.Parameter(torch.zeros(spec.rank, self._vocab))
        return _FakeAdapter(spec, A, B, torch.optim.AdamW([A, B], foreach=False))

    def _info(self, name: str) -> AdapterInfo:
        s = self._adapters[name]
        return AdapterInfo(name, s.spec, s.step, s.A.numel() + s.B.numel())

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter."""
        self._get(name)
        del self._adapters[name]

    def list_adapters(self) -> list[AdapterInfo]:
        """Loaded adapters."""
        return [self._info(n) for n in sorted(self._adapters)]

    def has_adapter(self, name: str) -> bool:
        """Whether ``name`` is loaded."""
        return name in self._adapters

    def copy_adapter(self, src: str, dst: str) -> AdapterInfo:
        """Copy ``src``'s weights into ``dst`` (created if missing)."""
        s = self._get(src)
        if dst not in self._adapters:
            self.create_adapter(dst, s.spec)
        with torch.no_grad():
            self._adapters[dst].A.copy_(s.A)
            self._adapters[dst].B.copy_(s.B)
        return self._info(dst)

    def save_adapter(self, name: str, path: Path) -> Path:
        """Adapter tensors + spec into folder ``path``."""
        s = self._get(name)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"A": s.A.detach().clone(), "B": s.B.detach().clone()}, path / "fake_adapter.pt")
        (path / "adapter_config.json").write_text(json.dumps({"fake": True, "spec": s.spec.model_dump()}))
        return path

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Load what ``save_adapter`` wrote; on any error the adapter ``name`` is left as it was."""
        self._adapters[name] = self._read_adapter(Path(path))
        return self._info(name)

    def _read_adapter(self, path: Path) -> _FakeAdapter:
        """A new adapter from folder ``path`` (nothing registered); one-line errors for a bad folder."""
        if not (path / "fake_adapter.pt").is_file() or not (path / "adapter_config.json").is_file():
            raise NotFound(f"{path} is not a fake adapter folder (fake_adapter.pt and adapter_config.json)")
        try:
            spec = LoraSpec.model_validate(json.loads((path / "adapter_config.json").read_text())["spec"])
            tensors = torch.load(path / "fake_adapter.pt", weights_only=True)
            state = self._new_adapter(spec)
            with torch.no_grad():
                for key, param in (("A", state.A), ("B", state.B)):
                    if tuple(tensors[key].shape) != tuple(param.shape):
                        raise ModelError(
                            f"{path}: tensor {key} has shape {tuple(tensors[key].shape)}, expected {tuple(param.shape)}"
                        )
                    param.copy_(tensors[key])
        except ModelError:
            raise
        except Exception as err:  # corrupt json, pickle or a missing key: one line, nothing changed
            raise ModelError(f"{path} is not a readable fake adapter: {_first_line(err)}") from None
        return state

    def save_checkpoint(self, name: str, path: Path) -> Path:
        """Adapter + optimizer + step."""
        s = self._get(name)
        self.save_adapter(name, Path(path) / "adapter")
        torch.save(s.optimizer.state_dict(), Path(path) / "optimizer.pt")
        (Path(path) / "checkpoint.json").write_text(json.dumps({"format": 1, "step": s.step}))
        return Path(path)

    def load_checkpoint(self, name: str, path: Path) -> AdapterInfo:
        """Restore a checkpoint; on any error the adapter ``name`` is left as it was."""
        path = Path(path)
        state = self._read_adapter(path / "adapter")
        try:
            opt_state = torch.load(path / "optimizer.pt", weights_only=True)
            check_optimizer_state(opt_state, [state.A, state.B], path, ["A", "B"])
            state.optimizer.load_state_dict(opt_state)
            state.step = int(json.loads((path / "checkpoint.json").read_text())["step"])
        except FileNotFoundError as err:
            raise NotFound(f"{path} is not a checkpoint folder: {Path(str(err.filename)).name} is missing") from None
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(f"{path} is not a readable checkpoint: {_first_line(err)}") from None
        self._adapters[name] = state
        return self._info(name)

    def merge_adapter(self, name: str, path: Path) -> Path:
        """Write the merged bigram table."""
        s = self._get(name)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self._logits_table(name).detach(), path / "merged_table.pt")
        del s
        return path

    # ------------------------------------------------------------------ model
    def _logits_table(self, adapter: str | None) -> torch.Tensor:
        if adapter is None:
            return self.table
        s = self._get(adapter)
        return self.table + (s.spec.alpha / s.spec.rank) * (s.A @ s.B)

    def _check_tokens(self, toks: Sequence[int], param: str) -> None:
        if not toks:
            raise InvalidInput(f"{param} is empty", param=param)
        if min(toks) < 0 or max(toks) >= self._vocab:
            raise InvalidInput(f"{param} has a token id outside [0, {self._vocab})", param=param)

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: str | None = None,
        *,
        top_logprobs: int = 0,
        prefix_cache: bool = False,
    ) -> list[list[SampledSequence]]:
        """``n`` continuations per prompt from the bigram model (``prefix_cache`` is ignored: a bigram
        model has no prefix to reuse)."""
        check_n(n)
        with torch.no_grad():
            table = self._logits_table(adapter)
        gen = torch.Generator()
        if params.seed is None:
            gen.seed()
        else:
            gen.manual_seed(params.seed)
        out: list[list[SampledSequence]] = []
        for prompt in prompts:
            self._check_tokens(list(prompt), "prompt")
            stops = params.stop
            stop_ids = set(self._eos) if stops is None else {t for t in stops if isinstance(t, int)}
            stop_strs = () if stops is None else tuple(t for t in stops if isinstance(t, str))
            tail = max((len(t) for t in stop_strs), default=0) + 8
            group = []
            for _ in range(n):
                prev = int(prompt[-1])
                toks: list[int] = []
                lps: list[float] = []
                reason = "length"
                limit = min(params.max_tokens, self._context - len(prompt))
                while len(toks) < limit:
                    logits = table[prev][None]
                    tok = int(_choose(logits, params, gen)[0])
                    toks.append(tok)
                    lps.append(float(torch.log_softmax(logits[0], -1)[tok]))
                    prev = tok
                    if tok in stop_ids or (stop_strs and any(t in self.decode(toks[-tail:]) for t in stop_strs)):
                        reason = "stop"
                        break
                group.append(SampledSequence(toks, lps, reason))  # type: ignore[arg-type]
            out.append(group)
        return out

    def logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]:
        """Per-token logprobs of each sequence (length ``len - 1``)."""
        with torch.no_grad():
            lsm = torch.log_softmax(self._logits_table(adapter), -1)
        out = []
        for seq in sequences:
            if len(seq) < 2:
                raise InvalidInput("a sequence needs at least two tokens to score", param="sequences")
            self._check_tokens(list(seq), "sequences")
            out.append([float(lsm[seq[i], seq[i + 1]]) for i in range(len(seq) - 1)])
        return out

    def forward_backward(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig | None = None,
        *,
        adapter: str,
        logprobs_for: LogprobsFor = "all",
    ) -> ForwardBackwardResult:
        """Loss and gradient accumulation into ``adapter``."""
        s = self._get(adapter)
        res = self._run(batch, loss, config or LossConfig(), adapter, backward=True)
        s.accumulated += 1
        return res

    def forward(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig | None = None,
        *,
        adapter: str | None,
        logprobs_for: LogprobsFor = "all",
    ) -> ForwardBackwardResult:
        """Loss without gradients."""
        return self._run(batch, loss, config or LossConfig(), adapter, backward=False)

    def _run(
        self, batch: Sequence[Datum], loss: LossFn, config: LossConfig, adapter: str | None, backward: bool
    ) -> ForwardBackwardResult:
        if not batch:
            raise InvalidInput("the batch is empty", param="batch")
        for i, d in enumerate(batch):
            self._check_tokens(d.input_tokens, f"batch[{i}].input_tokens")
            self._check_tokens(d.target_tokens, f"batch[{i}].target_tokens")
            if loss in RL_LOSSES and (d.advantages is None or d.sampler_logprobs is None):
                raise InvalidInput(f"loss {loss!r} needs advantages and sampler_logprobs on batch[{i}]", param="batch")
        inp = torch.tensor([t for d in batch for t in d.input_tokens])
        tgt = torch.tensor([t for d in batch for t in d.target_tokens])
        datum = torch.tensor([i for i, d in enumerate(batch) for _ in d.input_tokens])

        def cat(field: str) -> torch.Tensor | None:
            vals = [getattr(d, field) for d in batch]
            if any(v is None for v in vals):
                return None
            return torch.tensor([x for v in vals for x in v], dtype=torch.float32)

        weights = torch.tensor(
            [w for d in batch for w in (d.weights if d.weights is not None else [1.0] * d.num_tokens)]
        )
        ref = cat("reference_logprobs")
        if ref is None and (loss == "dpo" or config.kl_coef > 0):
            ref = torch.log_softmax(self.table, -1)[inp, tgt]
        with torch.enable_grad() if backward else torch.no_grad():
            lp = torch.log_softmax(self._logits_table(adapter), -1)[inp, tgt]
            inputs = TokenInputs(weights, datum, len(batch), cat("advantages"), cat("sampler_logprobs"), ref)
            total, metrics = compute_loss(loss, config, lp, inputs)
            if backward:
                total.backward()
        flat = lp.detach().tolist()
        out, k = [], 0
        for d in batch:
            out.append(flat[k : k + d.num_tokens])
            k += d.num_tokens
        return ForwardBackwardResult(float(total.detach()), out, metrics, len(flat))

    def optim_step(self, adapter: str, params: AdamParams) -> OptimStepResult:
        """AdamW step on the accumulated gradient."""
        s = self._get(adapter)
        if s.accumulated == 0:
            raise InvalidInput(f"adapter {adapter!r} has no accumulated gradient", param="adapter")
        for g in s.optimizer.param_groups:
            g.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps,
                     weight_decay=params.weight_decay)
        for p in (s.A, s.B):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        max_norm = params.grad_clip_norm if params.grad_clip_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_([s.A, s.B], max_norm))
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        s.accumulated = 0
        return OptimStepResult(s.step, norm, {"lr": params.learning_rate, "grad_norm": norm})


__all__ = ["LETTERS", "FakeEngine", "letters"]
