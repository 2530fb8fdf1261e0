"""The torch engine: one Hugging Face base model in memory, named PEFT LoRA adapters on it.

Sampling, logprobs and training all run through ``LlamaForward`` (the lean
functional forward over the same weights); PEFT owns the adapter parameters,
their initialisation, the on-disk format and merging. Works on CPU (float32,
oneDNN-prepacked weights; or ``dtype="bfloat16"``: frozen weights in bfloat16,
everything trained float32, ``engine/precision.py``) and CUDA. Every method that
touches torch runs on the engine's own compute thread (``engine/compute.py``: one
OpenMP team, whoever calls), which also serialises them, so a serving scheduler
and a trainer can share one engine; ``exclusive(fn)`` runs a caller's function
there (serving drives its continuous-batching ``DecodeBatch`` from ``batch()``
that way).
Loading an adapter or a checkpoint is all-or-nothing: a bad folder leaves the
adapter of that name as it was.

It knows nothing about chat templates, storage or HTTP.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import torch

from teachloop.core.errors import Conflict, InvalidInput, ModelError, NotFound
from teachloop.core.files import replace_dir
from teachloop.core.sampling import SampledSequence, SamplingParams
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
from teachloop.engine.adapter_files import read_peft_adapter
from teachloop.engine.base import AdapterInfo, LogprobsFor
from teachloop.engine.compute import ComputeThread, trim_heap
from teachloop.engine.hf_generic import build_forward, lora_target_groups, lora_targets
from teachloop.engine.llama import Segments, single
from teachloop.engine.losses import TokenInputs, compute_loss, merge_metrics
from teachloop.engine.model_sources import quiet_transformers
from teachloop.engine.optim_state import check_optimizer_state
from teachloop.engine.packing import micro_batches, plan_packing
from teachloop.engine.precision import WEIGHT_DTYPES, lower_weights, native_bfloat16
from teachloop.engine.prefix import PrefixCache
from teachloop.engine.sampler import DecodeBatch, SampleRequest, sample_all

CHECKPOINT_FORMAT = 1
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


@dataclass
class _Adapter:
    spec: LoraSpec
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.AdamW
    step: int = 0
    accumulated: int = 0


P = ParamSpec("P")
R = TypeVar("R")


def _on_compute(method: Callable[Concatenate[TorchEngine, P], R]) -> Callable[Concatenate[TorchEngine, P], R]:
    """Run ``method`` on the engine's compute thread (inline when already there)."""

    def wrapper(self: TorchEngine, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._compute.run(method, self, *args, **kwargs)

    return functools.update_wrapper(wrapper, method)  # type: ignore[return-value]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidInput(f"unknown device {device!r}; use auto, cpu or cuda[:N]", param="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device cuda requested but no CUDA GPU is available", param="device")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``auto`` -> bfloat16 where ``device`` multiplies it natively (``native_bfloat16``), else float32."""
    if dtype == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if dtype not in WEIGHT_DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}; use auto, {' or '.join(WEIGHT_DTYPES)}", param="dtype")
    return dtype


class TorchEngine:
    """``Engine`` on PyTorch. Build with ``TorchEngine(path)`` for a local Hugging Face model folder."""

    def __init__(
        self, model_path: str | Path, *, device: str = "auto", pack: bool | str | None = None, dtype: str = "float32"
    ) -> None:
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json); run `teachloop models pull`")
        self._path = path
        self.device = resolve_device(device)
        #: what the frozen weights are stored and multiplied in (``precision.WEIGHT_DTYPES``; ``auto`` resolved)
        self.weights_dtype = resolve_dtype(dtype, self.device)
        self._compute = ComputeThread()
        weakref.finalize(self, self._compute.close)
        try:
            self._compute.run(self._load, path, pack)
        except BaseException:
            self._compute.close()
            raise
        self._adapters: dict[str, _Adapter] = {}
        self._lock = threading.RLock()

    def _load(self, path: Path, pack: bool | str | None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with quiet_transformers():  # no "Loading weights" bar in `teachloop up`'s or a run's output
                self.tokenizer = AutoTokenizer.from_pretrained(str(path))
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the model at {path}: {err}".splitlines()[0]) from None
        model.requires_grad_(False)
        model.eval()
        lower_weights(model, self.weights_dtype)  # float32: unchanged; bfloat16: the fast path's models only
        self.hf: Any = model.to(self.device)  # type: ignore[arg-type]
        self._peft: Any = None
        self.fw = build_forward(self.hf, pack=pack)  # LlamaForward, or GenericForward for other architectures
        #: prompt-prefix keys/values shared by the serving batches that ask for it (``batch(prefix_cache=True)``)
        self.prefix = PrefixCache()
        eos: set[int] = set()
        gen_eos = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list):
                eos.update(int(v) for v in value)
        self._eos = sorted(eos)

    def close(self) -> None:
        """Stop the compute thread once its queued calls are done (the engine is unusable afterwards)."""
        self._compute.close()

    # ------------------------------------------------------------- properties
    @property
    def model_name(self) -> str:
        """The model folder."""
        return str(self._path)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the model."""
        return int(self.fw.vocab)

    @property
    def context_length(self) -> int:
        """``max_position_embeddings`` of the model, capped at its attention window if it has one.

        The engine computes full causal attention; for a sliding-window model
        (Mistral, Qwen2 with ``use_sliding_window``) that is exact only for
        sequences within the window, so longer ones are refused as too long.
        """
        cfg = self.hf.config
        length = int(getattr(cfg, "max_position_embeddings", 2048))
        window = getattr(cfg, "sliding_window", None)
        windowed = getattr(cfg, "use_sliding_window", True)  # Qwen2 carries a window it does not use by default
        if isinstance(window, int) and window > 0 and windowed:
            length = min(length, window)
        return length

    @property
    def eos_token_ids(self) -> list[int]:
        """EOS token ids (generation config and tokenizer)."""
        return list(self._eos)

    def exclusive(self, fn: Callable[[], R]) -> R:
        """``fn()`` on the compute thread with the engine to itself (to drive a ``DecodeBatch`` step by step)."""
        return self._compute.run(self._locked_call, fn)

    def _locked_call(self, fn: Callable[[], R]) -> R:
        with self._lock:
            return fn()

    # --------------------------------------------------------------- adapters
    def _check_name(self, name: str) -> None:
        if not name or len(name) > 128 or not set(name) <= _NAME_OK:
            raise InvalidInput(
                f"adapter name {name!r} must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
                param="adapter",
            )

    def _get(self, name: str) -> _Adapter:
        state = self._adapters.get(name)
        if state is None:
            raise NotFound(f"adapter {name!r} is not loaded on this engine")
        return state

    def _lora_config(self, spec: LoraSpec) -> Any:
        from peft import LoraConfig

        targets = lora_targets(self.fw, attn=spec.train_attn, mlp=spec.train_mlp, unembed=spec.train_unembed)
        return LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,  # type: ignore[arg-type]
            lora_dropout=spec.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def _register(self, name: str, spec: LoraSpec) -> _Adapter:
        params: list[torch.nn.Parameter] = []
        for pname, p in self._peft.named_parameters():
            if _owned_by(pname, name):
                p.requires_grad_(True)
                params.append(p)
        if not params:
            raise ModelError(f"adapter {name!r} has no LoRA parameters on this model")
        optimizer = torch.optim.AdamW(params, lr=AdamParams().learning_rate, foreach=False)
        state = _Adapter(spec, params, optimizer)
        self._adapters[name] = state
        self.fw.refresh_adapters()
        return state

    def _info(self, name: str, state: _Adapter) -> AdapterInfo:
        return AdapterInfo(name, state.spec, state.step, sum(p.numel() for p in state.params))

    @_on_compute
    def create_adapter(self, name: str, spec: LoraSpec) -> AdapterInfo:
        """A fresh LoRA adapter (A random, B zero), deterministic when ``spec.seed`` is set."""
        self._check_name(name)
        with self._lock:
            if name in self._adapters:
                raise Conflict(f"adapter {name!r} already exists on this engine")
            config = self._lora_config(spec)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed if spec.seed is not None else int.from_bytes(os.urandom(4), "little"))
                self._inject(name, config)
            return self._info(name, self._register(name, spec))

    def _inject(self, name: str, config: Any) -> None:
        import warnings

        from peft import get_peft_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._peft is None:
                self._peft = get_peft_model(self.hf, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)
                if self._peft.active_adapter not in self._peft.peft_config:  # the last adapter was deleted:
                    self._peft.set_adapter(name)  # PEFT still names it active, and save_pretrained would fail
        self._peft.base_model.model.requires_grad_(False)
        for state in self._adapters.values():
            for p in state.params:
                p.requires_grad_(True)

    @_on_compute
    def delete_adapter(self, name: str) -> None:
        """Remove ``name`` and its optimizer state."""
        with self._lock:
            self._get(name)
            del self._adapters[name]
            self._peft.delete_adapter(name)
            self.fw.refresh_adapters()

    def list_adapters(self) -> list[AdapterInfo]:
        """Adapters on this engine, by name."""
        with self._lock:
            return [self._info(n, s) for n, s in sorted(self._adapters.items())]

    def has_adapter(self, name: str) -> bool:
        """Whether ``name`` is loaded."""
        return name in self._adapters

    @_on_compute
    def copy_adapter(self, src: str, dst: str) -> AdapterInfo:
        """Make ``dst`` an exact copy of ``src``'s weights (created if missing); optimizer state not copied."""
        self._check_name(dst)
        with self._lock:
            source = self._get(src)
            if dst not in self._adapters:
                self.create_adapter(dst, source.spec)
            target = self._get(dst)
            named = dict(self._peft.named_parameters())
            with torch.no_grad():
                for pname, p in named.items():
                    if _owned_by(pname, src):
                        twin = pname.replace(f".{src}.", f".{dst}.")
                        named[twin].copy_(p)
            return self._info(dst, target)

    @_on_compute
    def save_adapter(self, name: str, path: Path) -> Path:
        """Write ``name`` in PEFT format into folder ``path`` (created; replaced atomically)."""
        with self._lock:
            self._get(name)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=path.parent))
            try:
                self._peft.save_pretrained(str(tmp), selected_adapters=[name])
                src = tmp / name if (tmp / name).is_dir() else tmp
                cfg_path = src / "adapter_config.json"
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = str(self._path)
                cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
                replace_dir(src, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return path

    @_on_compute
    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Load a PEFT adapter folder as ``name`` (replacing an adapter of that name).

        All or nothing: the folder is read and checked against this base model
        before anything changes, and if loading still fails the adapter that had
        this name is restored (weights, optimizer state and step).
        """
        self._check_name(name)
        spec, state_dict = read_peft_adapter(Path(path), self.hf, lora_target_groups(self.fw), self.device)
        with self._lock, self._restoring(name):
            return self._install(name, spec, state_dict, Path(path))

    def _install(self, name: str, spec: LoraSpec, state_dict: dict[str, torch.Tensor], path: Path) -> AdapterInfo:
        from peft.utils import set_peft_model_state_dict

        if name in self._adapters:
            self.delete_adapter(name)
        self._inject(name, self._lora_config(spec))
        try:
            result = set_peft_model_state_dict(self._peft, state_dict, adapter_name=name)
        except RuntimeError as err:
            raise ModelError(f"adapter at {path} does not fit this base model: {err}".splitlines()[0]) from None
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ModelError(f"adapter at {path} does not fit this base model (e.g. {unexpected[0]})")
        return self._info(name, self._register(name, spec))

    @contextlib.contextmanager
    def _restoring(self, name: str) -> Iterator[None]:
        """On failure inside, drop whatever half-loaded ``name`` exists and bring back the adapter it replaced."""
        old = self._adapters.get(name)
        backup = None
        if old is not None:
            named = dict(self._peft.named_parameters())
            weights = {k: p.detach().clone() for k, p in named.items() if _owned_by(k, name)}
            backup = (old.spec, weights, copy.deepcopy(old.optimizer.state_dict()), old.step, old.accumulated)
        try:
            yield
        except BaseException:
            self._discard(name)
            if backup is not None:
                spec, weights, opt_state, step, accumulated = backup
                self._inject(name, self._lora_config(spec))
                named = dict(self._peft.named_parameters())
                with torch.no_grad():
                    for k, w in weights.items():
                        named[k].copy_(w)
                state = self._register(name, spec)
                state.optimizer.load_state_dict(opt_state)
                state.step, state.accumulated = step, accumulated
            raise

    def _discard(self, name: str) -> None:
        """Remove every trace of ``name`` (registered or only injected into PEFT)."""
        self._adapters.pop(name, None)
        if self._peft is not None and name in getattr(self._peft, "peft_config", {}):
            with contextlib.suppress(Exception):  # best effort: a half-injected adapter
                self._peft.delete_adapter(name)
        self.fw.refresh_adapters()

    @_on_compute
    def save_checkpoint(self, name: str, path: Path) -> Path:
        """Adapter (PEFT format) + optimizer state + step counter into folder ``path``, atomically."""
        with self._lock:
            state = self._get(name)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=path.parent))
            try:
                self.save_adapter(name, tmp / "adapter")
                torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
                meta = {"format": CHECKPOINT_FORMAT, "step": state.step, "spec": state.spec.model_dump()}
                (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2))
                replace_dir(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return path

    @_on_compute
    def load_checkpoint(self, name: str, path: Path) -> AdapterInfo:
        """Restore a checkpoint written by ``save_checkpoint`` as adapter ``name`` (all or nothing)."""
        self._check_name(name)
        path = Path(path)
        meta_file = path / "checkpoint.json"
        if not meta_file.is_file():
            raise NotFound(f"{path} is not a teachloop checkpoint (no checkpoint.json)")
        try:
            meta = json.loads(meta_file.read_text())
            spec = LoraSpec.model_validate(meta["spec"])
            step = int(meta["step"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelError(f"{meta_file} is not a valid checkpoint record: {err}".splitlines()[0]) from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"checkpoint {path} has format {meta.get('format')}, expected {CHECKPOINT_FORMAT}")
        _, state_dict = read_peft_adapter(path / "adapter", self.hf, lora_target_groups(self.fw), self.device)
        try:
            opt_state = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError) as err:
            raise ModelError(f"cannot read {path / 'optimizer.pt'}: {err}".splitlines()[0]) from None
        with self._lock, self._restoring(name):
            info = self._install(name, spec, state_dict, path / "adapter")
            state = self._adapters[name]
            names = [k.replace(f".{name}.", ".") for k, _ in self._peft.named_parameters() if _owned_by(k, name)]
            check_optimizer_state(opt_state, state.params, path, names)
            try:
                state.optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError, RuntimeError) as err:
                raise ModelError(f"optimizer state in {path} does not fit the adapter: {err}".splitlines()[0]) from None
            state.step = step
            return AdapterInfo(name, state.spec, state.step, info.trainable_params)

    @_on_compute
    def merge_adapter(self, name: str, path: Path) -> Path:
        """Export base + ``name`` merged into a standalone Hugging Face model folder."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        with self._lock:
            self._get(name)
            path = Path(path)
            with tempfile.TemporaryDirectory() as tmp:
                self.save_adapter(name, Path(tmp) / "adapter")
                with quiet_transformers():
                    base = AutoModelForCausalLM.from_pretrained(str(self._path), dtype=torch.float32)
                if self._adapters[name].spec.train_unembed and getattr(base.config, "tie_word_embeddings", False):
                    # merging into a tied unembedding would also move the input embedding: untie first
                    base.lm_head.weight = torch.nn.Parameter(base.get_input_embeddings().weight.detach().clone())  # type: ignore[operator]
                    base.config.tie_word_embeddings = False
                merged = PeftModel.from_pretrained(base, str(Path(tmp) / "adapter")).merge_and_unload()
                path.parent.mkdir(parents=True, exist_ok=True)  # staged beside it: replace_dir renames, never copies
                out = Path(tempfile.mkdtemp(prefix=".tmp-merge-", dir=path.parent))
                try:
                    merged.save_pretrained(str(out))
                    self.tokenizer.save_pretrained(str(out))
                    replace_dir(out, path)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
            return path

    # --------------------------------------------------------------- sampling
    def batch(self, rows: int = 8, capacity: int = 256, *, prefix_cache: bool = False) -> DecodeBatch:
        """A fresh continuous-batching ``DecodeBatch`` on this engine (drive it inside ``exclusive``).

        ``rows`` and ``capacity`` size its KV cache to begin with (it grows when needed).
        ``prefix_cache`` shares the engine's ``PrefixCache`` (``self.prefix``) with the batch, so
        prompts reuse the keys/values of prefixes any earlier batch prefilled.
        """
        return DecodeBatch(
            self.fw,
            prefix_cache=self.prefix if prefix_cache else None,
            eos_token_ids=self._eos,
            decode=lambda toks: str(self.tokenizer.decode(toks, skip_special_tokens=False)),
            context_length=self.context_length,
            device=self.device,
            initial_capacity=capacity,
            initial_rows=rows,
        )

    @_on_compute
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
        """``n`` continuations of each prompt; all prompts prefilled in one pass, samples share it.

        One RNG seeded from ``params.seed`` drives the whole call, so the same
        call with the same seed returns the same sequences. ``prefix_cache``
        reuses the keys/values of prompt prefixes an earlier call prefilled under
        the same adapter version (``self.prefix``; a multi-turn episode's next
        turn extends its previous prompt) and prefills only the rest: the same
        tokens and logprobs as a whole prefill up to float32 rounding.
        """
        if adapter is not None:
            self._check_name(adapter)
        with self._lock:
            if adapter is not None:
                self._get(adapter)
            gen = torch.Generator(device=self.device)
            if params.seed is None:
                gen.seed()
            else:
                gen.manual_seed(params.seed)
            reqs = [
                SampleRequest(list(p), n, params, adapter, generator=gen, top_logprobs=top_logprobs) for p in prompts
            ]
            longest = max((len(p) for p in prompts), default=0)
            capacity = max(1, min(self.context_length, longest + params.max_tokens + 1))
            return sample_all(self.batch(rows=max(1, len(reqs) * n), capacity=capacity, prefix_cache=prefix_cache),
                              reqs)

    @_on_compute
    def logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]:
        """``out[i][t]`` = log p(seq[t + 1] | seq[: t + 1]) under ``adapter`` (None: the base)."""
        batch = []
        for i, seq in enumerate(sequences):
            if len(seq) < 2:
                raise InvalidInput(f"sequence {i} needs at least two tokens to score", param="sequences")
            batch.append(Datum(list(seq[:-1]), list(seq[1:])))
        if not batch:
            return []
        result = self.forward(batch, "cross_entropy", adapter=adapter)
        return result.logprobs

    @_on_compute
    def prompt_top_logprobs(
        self, tokens: Sequence[int], k: int, adapter: str | None = None
    ) -> list[list[tuple[int, float]]]:
        """``out[t]``: the ``k`` most likely next tokens after ``tokens[: t + 1]`` with their logprobs.

        Length ``len(tokens) - 1`` (the last position predicts past the prompt and is left out);
        logprobs follow the same unscaled-model convention as ``logprobs``.
        """
        if not 1 <= k <= 100:
            raise InvalidInput("k must be between 1 and 100", param="k")
        if len(tokens) < 2:
            return []
        if adapter is not None:
            self._check_name(adapter)
        with self._lock, torch.no_grad():
            if adapter is not None:
                self._get(adapter)
            seq = torch.tensor(list(tokens[:-1]), dtype=torch.long, device=self.device)
            rows = single(adapter)
            hidden = self.fw.forward_packed(seq, [len(seq)], rows)
            logits = self.fw.logits(hidden, rows)
            values, indices = logits.topk(min(k, logits.shape[-1]), dim=-1)
            values = values - torch.logsumexp(logits, dim=-1, keepdim=True)
            return [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]

    # --------------------------------------------------------------- training
    @_on_compute
    def forward_backward(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig | None = None,
        *,
        adapter: str,
        logprobs_for: LogprobsFor = "all",
    ) -> ForwardBackwardResult:
        """Compute ``loss`` over ``batch`` under ``adapter`` and add its gradient to the adapter's."""
        with self._lock:
            state = self._get(adapter)
            result = self._run(batch, loss, config or LossConfig(), adapter, logprobs_for, backward=True)
            state.accumulated += 1
            return result

    @_on_compute
    def forward(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig | None = None,
        *,
        adapter: str | None,
        logprobs_for: LogprobsFor = "all",
    ) -> ForwardBackwardResult:
        """Loss, logprobs and metrics of ``batch`` without gradients."""
        with self._lock:
            if adapter is not None:
                self._get(adapter)
            return self._run(batch, loss, config or LossConfig(), adapter, logprobs_for, backward=False)

    def _validate(self, batch: Sequence[Datum], loss: LossFn, config: LossConfig) -> None:
        if not batch:
            raise InvalidInput("the batch is empty", param="batch")
        vocab = self.vocab_size
        for i, d in enumerate(batch):
            if not isinstance(d, Datum):
                raise InvalidInput(f"batch[{i}] is not a Datum", param="batch")
            if d.num_tokens > self.context_length:
                raise InvalidInput(
                    f"batch[{i}] has {d.num_tokens} tokens; the context is {self.context_length}", param="batch"
                )
            for name in ("input_tokens", "target_tokens"):
                toks = getattr(d, name)
                if min(toks) < 0 or max(toks) >= vocab:
                    raise InvalidInput(f"batch[{i}].{name} has a token id outside [0, {vocab})", param=name)
            if loss in RL_LOSSES and (d.advantages is None or d.sampler_logprobs is None):
                raise InvalidInput(f"loss {loss!r} needs advantages and sampler_logprobs on batch[{i}]", param="batch")
        if loss == "dpo" and len(batch) % 2:
            raise InvalidInput("dpo needs (chosen, rejected) pairs: an even number of datums", param="batch")
        config.clip_bounds(loss)

    #: packed tokens per micro-batch of ``forward_backward``: its activations (and so its peak memory)
    #: are bounded by this, not by the batch (``packing.micro_batches``; gradients accumulate). 768, not
    #: 1024: two groups of 8 x 32-token completions per micro-batch instead of three (peak 2.3 vs 2.6 GB
    #: for the step's forward_backward, same time, bench/README.md), while a reasoning-gym group
    #: (150-token prompt + 8 x 48) still fits whole and is never split.
    micro_batch_tokens: int = 768

    def _run(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig,
        adapter: str | None,
        logprobs_for: LogprobsFor,
        backward: bool,
    ) -> ForwardBackwardResult:
        """``_run_one`` per micro-batch when training (the loss is a sum over datums); one pass otherwise."""
        parts = (
            micro_batches([d.input_tokens for d in batch], self.micro_batch_tokens, pairs=loss == "dpo")
            if backward and batch and all(isinstance(d, Datum) for d in batch)
            else []
        )
        if len(parts) == 1:
            result = self._run_part(batch, loss, config, adapter, logprobs_for)
        elif not parts:
            result = self._run_one(batch, loss, config, adapter, logprobs_for, backward)
        else:
            self._validate(batch, loss, config)  # all or nothing: no gradient is added for a bad batch
            results = [self._run_part([batch[i] for i in idx], loss, config, adapter, logprobs_for)
                       for idx in parts]
            out: list[list[float]] = [[] for _ in batch]
            for idx, res in zip(parts, results, strict=True):
                for i, lps in zip(idx, res.logprobs, strict=True):
                    out[i] = lps
            weight_sums = [sum(sum(batch[i].weights or [1.0] * batch[i].num_tokens) for i in idx) for idx in parts]
            result = ForwardBackwardResult(
                loss=sum(r.loss for r in results), logprobs=out,
                metrics=merge_metrics([r.metrics for r in results], weight_sums),
                num_tokens=sum(r.num_tokens for r in results),
            )
        if backward:
            trim_heap()  # the step's activations are freed: hand their pages back before the next phase
        return result

    def _run_part(
        self, part: Sequence[Datum], loss: LossFn, config: LossConfig, adapter: str | None, logprobs_for: LogprobsFor
    ) -> ForwardBackwardResult:
        """One micro-batch; one that must exceed ``micro_batch_tokens`` (a long prompt's group) checkpoints its layers."""
        big = len(plan_packing([d.input_tokens for d in part]).tokens) > self.micro_batch_tokens
        if not big or self.fw.checkpoint_layers:
            return self._run_one(part, loss, config, adapter, logprobs_for, True)
        self.fw.checkpoint_layers = True  # where it pays: this micro-batch's activations are what sets the peak
        try:
            return self._run_one(part, loss, config, adapter, logprobs_for, True)
        finally:
            self.fw.checkpoint_layers = False

    def _run_one(
        self,
        batch: Sequence[Datum],
        loss: LossFn,
        config: LossConfig,
        adapter: str | None,
        logprobs_for: LogprobsFor,
        backward: bool,
    ) -> ForwardBackwardResult:
        self._validate(batch, loss, config)
        dev = self.device
        plan = plan_packing([d.input_tokens for d in batch])
        # which positions of each datum get a logprob
        sel_rows: list[int] = []
        sel_targets: list[int] = []
        sel_datum: list[int] = []
        sel_pos: list[tuple[int, int]] = []
        for i, d in enumerate(batch):
            w = d.weights
            for t in range(d.num_tokens):
                if logprobs_for == "all" or w is None or w[t] != 0:
                    sel_rows.append(plan.rows[i][t])
                    sel_targets.append(d.target_tokens[t])
                    sel_datum.append(i)
                    sel_pos.append((i, t))

        def per_token(field: str) -> torch.Tensor | None:
            values = [getattr(batch[i], field) for i in range(len(batch))]
            if any(v is None for v in values):
                return None
            return torch.tensor([values[i][t] for i, t in sel_pos], dtype=torch.float32, device=dev)

        weights = torch.tensor(
            [1.0 if batch[i].weights is None else batch[i].weights[t] for i, t in sel_pos],  # type: ignore[index]
            dtype=torch.float32, device=dev,
        )
        tokens = torch.tensor(plan.tokens, dtype=torch.long, device=dev)
        segs = Segments(plan.lens, plan.parent)
        rows_t = torch.tensor(sel_rows, dtype=torch.long, device=dev)
        targets_t = torch.tensor(sel_targets, dtype=torch.long, device=dev)
        need_ref = loss == "dpo" or (loss in RL_LOSSES and config.kl_coef > 0)
        ref = per_token("reference_logprobs") if need_ref else None
        if need_ref and ref is None:
            with torch.no_grad():
                h_ref = self.fw.forward_packed(tokens, segs, single(None))
                ref, _ = self.fw.token_logprobs(h_ref.index_select(0, rows_t), targets_t, None)
                del h_ref
        grad_ctx = torch.enable_grad() if backward else torch.no_grad()
        with grad_ctx:
            hidden = self.fw.forward_packed(tokens, segs, single(adapter), training=backward)
            lp, ent = self.fw.token_logprobs(
                hidden.index_select(0, rows_t), targets_t, adapter, training=backward, with_entropy=True
            )
            inputs = TokenInputs(
                weights=weights,
                datum=torch.tensor(sel_datum, dtype=torch.long, device=dev),
                n_datums=len(batch),
                advantages=per_token("advantages"),
                sampler_logprobs=per_token("sampler_logprobs"),
                reference_logprobs=ref,
            )
            total, metrics = compute_loss(loss, config, lp, inputs)
            if backward:
                if not total.requires_grad:
                    raise InvalidInput("the loss does not depend on the adapter (all weights zero?)", param="batch")
                total.backward()
        if ent is not None and ent.numel():
            mask = weights != 0
            metrics["entropy:mean"] = float((ent * mask).sum() / mask.sum().clamp_min(1))
        metrics["packed_tokens:sum"] = float(len(plan.tokens))
        lp_list = lp.detach().tolist()
        out: list[list[float]] = [[math.nan] * d.num_tokens for d in batch]
        for (i, t), v in zip(sel_pos, lp_list, strict=True):
            out[i][t] = v
        return ForwardBackwardResult(
            loss=float(total.detach()), logprobs=out, metrics=metrics, num_tokens=sum(d.num_tokens for d in batch)
        )

    @_on_compute
    def optim_step(self, adapter: str, params: AdamParams) -> OptimStepResult:
        """AdamW on the gradients accumulated since the last step; zeroes them; step counter + 1."""
        with self._lock:
            state = self._get(adapter)
            if state.accumulated == 0:
                raise InvalidInput(
                    f"adapter {adapter!r} has no accumulated gradient; call forward_backward first", param="adapter"
                )
            for group in state.optimizer.param_groups:
                group["lr"] = params.learning_rate
                group["betas"] = (params.beta1, params.beta2)
                group["eps"] = params.eps
                group["weight_decay"] = params.weight_decay
            for p in state.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            max_norm = params.grad_clip_norm if params.grad_clip_norm > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(state.params, max_norm))
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
            calls, state.accumulated = state.accumulated, 0
            state.step += 1
            return OptimStepResult(
                step=state.step,
                grad_norm=norm,
                metrics={"lr": params.learning_rate, "grad_norm": norm, "accumulated_calls": float(calls)},
            )


def _owned_by(param_name: str, adapter: str) -> bool:
    """Whether a PEFT parameter name belongs to ``adapter``'s LoRA factors."""
    return f".lora_A.{adapter}." in param_name or f".lora_B.{adapter}." in param_name


__all__ = ["CHECKPOINT_FORMAT", "TorchEngine", "resolve_device", "resolve_dtype"]
