"""``EchoEngine``: a scripted stand-in for the serving scheduler's engine (``serve.scheduler.BatchingEngine``).

The torch engine's ``DecodeBatch`` needs a transformer; the fake engine of
``engine/fake.py`` has no batch at all. This one implements exactly the slice
the scheduler uses (``batch()``, ``exclusive()``, adapters) with deterministic
replies a test can steer through the prompt: each sample replies with the
text of the last user message (prefixed by the adapter's ``prefix.txt``, if
its folder has one), then the end-of-turn token. Every forward pass is
recorded (``prefills``, ``steps``) so tests can check which requests shared a
pass; ``step_delay`` slows steps down so requests overlap.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from teachloop.core.errors import InvalidInput, PayloadTooLarge
from teachloop.core.sampling import SampledSequence, StopReason
from teachloop.engine.sampler import SampleRequest

T = TypeVar("T")

LOGPROB = -0.25


@dataclass
class EchoSeq:
    request: SampleRequest
    index: int
    script: list[int]
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    stop_reason: StopReason | None = None
    error: Exception | None = None

    def result(self) -> SampledSequence:
        extras: dict[str, object] = {"top_logprobs": self.top} if self.request.top_logprobs else {}
        return SampledSequence(list(self.tokens), list(self.logprobs), self.stop_reason or "length", extras)


class EchoBatch:
    def __init__(self, engine: EchoEngine) -> None:
        self.engine = engine
        self.rows: list[EchoSeq] = []

    @property
    def active(self) -> int:
        return len(self.rows)

    def validate(self, req: SampleRequest) -> None:
        if req.n < 1:
            raise InvalidInput("n must be at least 1", param="n")
        if len(req.prompt) >= self.engine.context_length:
            raise PayloadTooLarge("prompt too long", param="prompt")
        if req.adapter is not None and req.adapter not in self.engine.adapters:
            raise InvalidInput(f"unknown adapter {req.adapter!r}", param="adapter")

    def add(self, requests: Sequence[SampleRequest]) -> list[EchoSeq]:
        self.engine.prefills.append([(r.key, r.adapter) for r in requests])
        new = []
        for req in requests:
            script = self.engine.script(req)
            room = self.engine.context_length - len(req.prompt)
            for i in range(req.n):
                new.append(EchoSeq(req, i, script, min(req.params.max_tokens, room)))
        self.rows.extend(new)
        self._sample(new)
        self._retire()
        return new

    def step(self) -> list[EchoSeq]:
        self.engine.steps.append([(s.request.key, s.request.adapter) for s in self.rows])
        if self.engine.step_delay:
            time.sleep(self.engine.step_delay)
        if self.engine.fail_next_step:
            self.engine.fail_next_step = False
            raise RuntimeError("simulated forward failure")
        self._sample(self.rows)
        return self._retire()

    def drop(self, seqs: Sequence[EchoSeq]) -> list[EchoSeq]:
        live = {id(s) for s in self.rows}
        dropped = [s for s in seqs if id(s) in live and s.stop_reason is None]
        for seq in dropped:
            seq.stop_reason = "cancelled"
        return self._retire() if dropped else []

    def _sample(self, rows: list[EchoSeq]) -> None:
        eng = self.engine
        for seq in rows:
            pos = len(seq.tokens)
            tok = seq.script[pos] if pos < len(seq.script) else eng.eos
            seq.tokens.append(tok)
            seq.logprobs.append(LOGPROB)
            if seq.request.top_logprobs:
                alts = [(tok, LOGPROB), ((tok + 1) % eng.vocab, -2.0), ((tok + 2) % eng.vocab, -3.0)]
                seq.top.append(alts[: seq.request.top_logprobs])
            if seq.request.on_token is not None:
                seq.request.on_token(seq.index, tok, LOGPROB)
            seq.stop_reason = self._stop(seq, tok)

    def _stop(self, seq: EchoSeq, tok: int) -> StopReason | None:
        stops = seq.request.params.stop
        ids = {self.engine.eos} if stops is None else {t for t in stops if isinstance(t, int)}
        strs = [] if stops is None else [t for t in stops if isinstance(t, str)]
        if tok in ids:
            return "stop"
        if strs and any(s in self.engine.decode(seq.tokens) for s in strs):
            return "stop"
        if len(seq.tokens) >= seq.max_tokens:
            return "length"
        return None

    def _retire(self) -> list[EchoSeq]:
        done = [s for s in self.rows if s.stop_reason is not None]
        self.rows = [s for s in self.rows if s.stop_reason is None]
        return done


class EchoEngine:
    """Replies with the last user message; records every pass (see the module docstring)."""

    def __init__(self, tokenizer: Any, *, context_length: int = 1024, step_delay: float = 0.0) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.eos = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.vocab = len(tokenizer)
        self.step_delay = step_delay
        self.fail_next_step = False
        self.adapters: dict[str, str] = {}
        self.loads: list[str] = []
        self.deletes: list[str] = []
        self.prefills: list[list[tuple[Any, str | None]]] = []
        self.steps: list[list[tuple[Any, str | None]]] = []
        self._lock = threading.RLock()

    @property
    def eos_token_ids(self) -> list[int]:
        return [self.eos]

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=False))

    def script(self, req: SampleRequest) -> list[int]:
        text = self.decode(req.prompt)
        user = text.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]
        prefix = self.adapters.get(req.adapter, "") if req.adapter else ""
        return list(self.tokenizer.encode(prefix + user, add_special_tokens=False))

    def batch(self) -> EchoBatch:
        return EchoBatch(self)

    def exclusive(self, fn: Callable[[], T]) -> T:
        with self._lock:
            return fn()

    def load_adapter(self, name: str, path: Path) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise InvalidInput(f"{path} is not an adapter folder", param="path")
        prefix = Path(path) / "prefix.txt"
        with self._lock:
            self.adapters[name] = prefix.read_text() if prefix.is_file() else ""
            self.loads.append(name)

    def delete_adapter(self, name: str) -> None:
        with self._lock:
            del self.adapters[name]
            self.deletes.append(name)

    def has_adapter(self, name: str) -> bool:
        return name in self.adapters


def adapter_folder(root: Path, prefix: str) -> Path:
    """A fake adapter folder whose replies start with ``prefix``."""
    folder = root / f"adapter-{hashlib.sha1(prefix.encode()).hexdigest()[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"fake": true}')
    (folder / "prefix.txt").write_text(prefix)
    return folder


__all__ = ["LOGPROB", "EchoEngine", "adapter_folder"]
