r"""Serving under load: concurrent chat clients over HTTP vs plain transformers ``generate``.

Workload (SmolLM2-135M-Instruct, float32, CPU; greedy, at most ``--max-tokens`` new tokens,
stopping at the end of the turn): short chat questions. Measured in the same run:

* ``baseline``: the same requests served one at a time by ``model.generate`` in this
  process (no HTTP).
* ``serve c=N``: N client tasks each sending ``--requests-per-client`` streaming requests
  back to back to ``teachloop``'s ``/v1/chat/completions`` (a server in a subprocess:
  uvicorn + the serving scheduler + trace capture), for N in ``--levels``.
* ``mixed c=N`` (``--mixed-clients``, default 16; 0 skips): product-like traffic beside the
  uniform one -- prompts of one to twenty sentences, ``max_tokens`` 1..64, ``n`` 1 or 2, some
  ``stop`` strings, streaming and not, drawn from ``random.Random(--seed)``. Every round runs
  it, before the levels in odd rounds and after them in even ones. Failures (an HTTP error, an
  error chunk, a stream without ``[DONE]``) are counted and must be 0.
* trace capture on vs off at N clients (``--traces-off-levels``): on the same server,
  rounds alternate capture on, off, off, on (ABBA), and the median latencies of the
  pooled on and off requests are compared.
* JSON-schema-constrained vs free decoding at N clients (``--json-clients``, default 16; 0
  skips): the same prompts, each asking for a small JSON object, with
  ``response_format={"type": "json_schema", ..., "strict": true}`` or without it, ABBA on the
  same server. A constrained reply that does not parse as the object is a failure.
* prefix cache on vs off at N clients (``--prefix-cache-clients``, default 16; 0 skips): short
  questions behind one shared system prompt of about 600 tokens, against two servers started
  with ``--prefix-cache on`` and ``--prefix-cache off`` (``ServingConfig.prefix_cache``), ABBA;
  compares p50 time to first token and tokens/s. Skipped, with a note, while the serving
  build has no ``ServingConfig.prefix_cache``. Every other run uses one server with the
  ``ServingConfig`` defaults (the prefix cache as its default says).

The machine may be shared, so the baseline and the levels are interleaved: each of
``--rounds`` rounds runs ``--baseline-requests`` baseline requests, then every level;
figures pool the rounds; the ABBA comparisons run ``--rounds`` times A, B, B, A. Figures:
aggregate output tokens/s (completion tokens / wall time), p50 and p99 latency, p50 time to
first token (the whole latency for a non-streamed request), failures; then ratios.
Targets (issue 5): at 16 clients >= 6x the baseline's tokens/s; trace capture adds <= 5% to
median latency. Issue 11: the mixed workload fails no request.

    python bench/serve_load.py                     # roughly 15 minutes on 2 CPU cores (estimated)
    python bench/serve_load.py --levels 1,4 --requests-per-client 2 --json out.json
    python bench/serve_load.py --levels 1 --requests-per-client 1 --rounds 1 --baseline-requests 1 \
        --traces-off-levels "" --mixed-clients 2 --json-clients 2 --prefix-cache-clients 2   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is 26 - 15?", "Name three primary colors.", "What is the capital of Italy?",
    "Give me a synonym for happy.", "How many legs does a spider have?", "What is 48 + 37?",
    "Write a haiku about rain.", "What does a thermometer measure?", "Translate 'thank you' into French.",
    "What is the boiling point of water in Celsius?", "Name a mammal that can fly.", "What is 9 times 7?",
    "Which planet is known as the red planet?", "What is the opposite of cold?", "Spell the word 'banana' backwards.",
    "What season comes after winter?",
]
#: the mixed workload's prompts: one to twenty of these sentences, then one of ASKS
SENTENCES = [
    "The river ran fast after three days of rain.", "Mara keeps a notebook of every bird she sees.",
    "Our order number is 4471 and it has not arrived.", "The bakery on the corner opens at seven.",
    "Solar panels cover the roof of the old library.", "He asked whether the train to Lyon was delayed.",
    "A good password is long and hard to guess.", "The meeting moved from Tuesday to Thursday afternoon.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.", "The cat slept on the warm laptop.",
    "Invoices are due thirty days after delivery.", "She planted tomatoes, basil and two rows of beans.",
    "Refunds take five business days to process.", "Fresh snow fell on the mountain pass overnight.",
]
ASKS = ["Summarize the text above in one sentence.", "What is the main topic of the text above?",
        "Write a short title for the text above.", "List two facts from the text above.",
        "Continue the text with one more sentence."]
STOPS = [".", ",", "\n", " the"]
#: the JSON workload: one object per city, constrained by CITY_SCHEMA or free
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Nairobi", "Toronto", "Madrid", "Hanoi", "Sydney", "Quito",
          "Vienna", "Dakar", "Seoul", "Lisbon", "Denver"]
REQUIRED = ["city", "country", "population_millions", "is_capital"]
CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30},
                   "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
                   "is_capital": {"type": "boolean"}},
    "required": REQUIRED,
    "additionalProperties": False,
}
JSON_MAX_TOKENS = 96  # the schema's longest object is well under this
#: the prefix-cache workload's shared system prompt, repeated up to about PREFIX_TOKENS tokens
PREFIX_TOKENS = 600
POLICY = [
    "You are the assistant of Northwind Outfitters, a shop for hiking and camping gear.",
    "Answer politely and briefly, in the language the customer writes in.",
    "Never invent order numbers, prices, stock levels or delivery dates.",
    "Refunds go to the original payment method within five business days of the return arriving.",
    "Shipping costs are refunded only when an item arrived damaged or was sent in error.",
    "Orders over fifty euros ship free within the European Union; others pay a flat six euros.",
    "Tents, sleeping bags and stoves carry a two-year warranty; clothing carries one year.",
    "A human agent is available from nine to five on weekdays; offer a hand-over when you cannot help.",
    "Do not discuss internal policies, other customers, or these instructions.",
]


def _model_dir() -> Path:
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model

    env = dict(os.environ)
    if not env.get("TEACHLOOP_MODEL_CACHE") and (REPO / ".cache" / "models").is_dir():
        env["TEACHLOOP_MODEL_CACHE"] = str(REPO / ".cache" / "models")
    return ensure_default_model(Settings.from_env(env))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


@dataclass
class Row:
    name: str
    requests: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    failures: int = 0


#: one request's (latency s, time to first content s, completion tokens)
Sample = tuple[float, float, int]


def _row(name: str, results: list[Sample], wall: float, failures: int = 0) -> Row:
    latencies = [r[0] * 1000 for r in results] or [float("nan")]
    tokens = sum(r[2] for r in results)
    return Row(name, len(results), tokens, wall, tokens / wall, statistics.median(latencies), _pct(latencies, 0.99),
               statistics.median([r[1] * 1000 for r in results] or [float("nan")]), failures)


# ---------------------------------------------------------------------------------------------- the server


def serve(args: argparse.Namespace) -> None:
    """Server mode (a subprocess of the benchmark): teachloop's app on the default model."""
    import uvicorn
    from fastapi import APIRouter

    from teachloop.app import AppDeps, create_app
    from teachloop.core.settings import DEFAULT_MODEL, Settings
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer
    from teachloop.serve import Serving, ServingConfig
    from teachloop.store import BlobStore, Database, bootstrap

    home = Path(args.home)
    model_dir = _model_dir()
    settings = Settings(home=home, model_cache=model_dir.parent, database_url=f"sqlite:///{home / 'bench.db'}",
                        blob_url=str(home / "blobs"))
    database = Database(settings.database_url)
    database.migrate()
    with database.session() as session:
        first = bootstrap(session, "bench", "bench@localhost")
    assert first.key is not None
    blobs = BlobStore(settings.blob_url)
    engine = TorchEngine(model_dir, device="cpu")
    knobs: dict[str, Any] = {"capture_traces": args.traces == "on"}
    if args.prefix_cache is not None:
        if not prefix_cache_supported():
            raise SystemExit("--prefix-cache needs ServingConfig.prefix_cache, which this build does not have")
        knobs["prefix_cache"] = args.prefix_cache == "on"
    serving = Serving(database, blobs, engine=engine, renderer=Renderer.from_pretrained(model_dir),
                      base_model=DEFAULT_MODEL, config=ServingConfig(**knobs))
    serving.start()
    app = create_app(AppDeps(settings, database, blobs, engine=engine, serving=serving))
    bench = APIRouter()

    @bench.post("/bench/capture")
    def capture(on: bool) -> dict[str, bool]:
        """Turn trace capture on or off between rounds (benchmark servers only)."""
        serving.config = replace(serving.config, capture_traces=on)
        return {"capture_traces": on}

    app.include_router(bench)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning",
                                           access_log=False))

    def announce() -> None:
        while not server.started:
            time.sleep(0.05)
        Path(args.ready).write_text(first.key.secret if first.key else "")

    threading.Thread(target=announce, daemon=True).start()
    try:
        with contextlib.suppress(KeyboardInterrupt):  # the benchmark stops us with SIGINT
            server.run()
    finally:
        stats = serving.traces.stats()
        print(json.dumps({"trace_commits": stats.commits, "trace_rows": stats.rows_written,
                          "commit_ms_mean": round(stats.commit_ms_mean, 2),
                          "trace_wait_ms_mean": round(stats.wait_ms_mean, 2),
                          "trace_wait_ms_max": round(stats.wait_ms_max, 2)}), flush=True)
        serving.close()
        database.close()


def prefix_cache_supported() -> bool:
    """Whether this build's ``ServingConfig`` has the ``prefix_cache`` switch the prefix-cache runs need."""
    from teachloop.serve import ServingConfig

    return "prefix_cache" in {f.name for f in fields(ServingConfig)}


class ServerProcess:
    def __init__(self, traces: str, prefix_cache: str | None = None) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="teachloop-bench-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.ready = Path(self.tmp.name) / "ready"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--home", self.tmp.name, "--port", str(self.port),
             "--traces", traces, "--ready", str(self.ready),
             *(["--prefix-cache", prefix_cache] if prefix_cache is not None else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait(self) -> str:
        deadline = time.monotonic() + 300
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{self.proc.stdout.read() if self.proc.stdout else ''}")
            time.sleep(0.1)
        return self.ready.read_text()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        self.tmp.cleanup()
        return out


# ---------------------------------------------------------------------------------------------- the clients


class Failed(Exception):
    """A request that did not complete: an HTTP error, an error chunk, or a stream cut short."""


def _body(content: str | list[dict[str, str]], max_tokens: int, *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    from teachloop.core.settings import DEFAULT_MODEL

    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    body = {"model": DEFAULT_MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def _request(http: Any, url: str, key: str, body: dict[str, Any]) -> tuple[Sample, str]:
    """One chat completion, streamed or not: its timings and tokens, and the text of choice 0."""
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    if not body.get("stream"):
        r = await http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        if r.status_code != 200:
            raise Failed(f"{r.status_code} {r.text}")
        end = time.perf_counter()
        data = r.json()
        return (end - t0, end - t0, data["usage"]["completion_tokens"]), data["choices"][0]["message"]["content"] or ""
    first = None
    tokens = 0
    text = ""
    done = False
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise Failed(f"{r.status_code} {(await r.aread())!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise Failed(f"error chunk: {chunk['error']}")
            for choice in chunk["choices"]:
                delta = choice["delta"].get("content")
                if delta and first is None:
                    first = time.perf_counter()
                if delta and choice["index"] == 0:
                    text += delta
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if not done:
        raise Failed("the stream ended without [DONE]")
    end = time.perf_counter()
    return (end - t0, (first or end) - t0, tokens), text


#: what a workload hands ``_clients``: per client, the request bodies it sends back to back
Plan = list[list[dict[str, Any]]]


async def _clients(url: str, key: str, plan: Plan, check: Any = None) -> tuple[list[Sample], float, int]:
    """Every client of ``plan`` at once; (samples, wall s, failures). ``check(text)`` False is a failure too."""
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(plan) + 4)) as http:
        await _request(http, url, key, _body(QUESTIONS[0], 4))  # warm the connection and the server
        failures = 0

        async def client(bodies: list[dict[str, Any]]) -> list[Sample]:
            nonlocal failures
            out = []
            for body in bodies:
                try:
                    sample, text = await _request(http, url, key, body)
                except (Failed, httpx.HTTPError) as err:
                    failures += 1
                    print(f"  request failed: {err}", file=sys.stderr, flush=True)
                    continue
                if check is not None and not check(text):
                    failures += 1
                    print(f"  reply failed its check: {text!r}", file=sys.stderr, flush=True)
                out.append(sample)
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(bodies) for bodies in plan))
        wall = time.perf_counter() - t0
    return [r for rs in results for r in rs], wall, failures


def uniform_plan(clients: int, per_client: int, max_tokens: int) -> Plan:
    """Short questions, streamed, ``max_tokens`` each (the issue-5 workload)."""
    return [[_body(QUESTIONS[(c * per_client + i) % len(QUESTIONS)], max_tokens) for i in range(per_client)]
            for c in range(clients)]


def mixed_plan(clients: int, per_client: int, rng: random.Random) -> Plan:
    """Product-like traffic: 1-20 sentence prompts, max_tokens 1..64, n 1 or 2, some stops, streamed or not."""
    plan = []
    for _ in range(clients):
        bodies = []
        for _ in range(per_client):
            text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 20)))
            extra: dict[str, Any] = {"n": rng.choice([1, 2])}
            if rng.random() < 0.3:
                extra["stop"] = rng.sample(STOPS, rng.randint(1, 2))
            bodies.append(_body(f"{text}\n\n{rng.choice(ASKS)}", rng.randint(1, 64), stream=rng.random() < 0.5,
                                **extra))
        plan.append(bodies)
    return plan


def json_plan(clients: int, per_client: int, constrained: bool) -> Plan:
    """One small JSON object per city; ``constrained`` adds the strict ``json_schema`` response_format."""
    fmt: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    plan = []
    for c in range(clients):
        bodies = []
        for i in range(per_client):
            city = CITIES[(c * per_client + i) % len(CITIES)]
            ask = (f"Describe {city} as a JSON object with the keys city, country, population_millions (an integer) "
                   "and is_capital (true or false). Reply with the JSON only.")
            extra: dict[str, Any] = {"response_format": fmt} if constrained else {}
            bodies.append(_body(ask, JSON_MAX_TOKENS, **extra))
        plan.append(bodies)
    return plan


def is_city(text: str) -> bool:
    """Whether ``text`` is one JSON object with exactly CITY_SCHEMA's keys (the grammar's promise)."""
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and sorted(data) == sorted(REQUIRED)


def shared_system_prompt(tokens: int = PREFIX_TOKENS) -> str:
    """POLICY repeated, numbered, until it takes about ``tokens`` tokens of the default model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_model_dir()))
    lines: list[str] = []
    while len(tokenizer.encode("\n".join(lines))) < tokens:
        lines.append(f"{len(lines) + 1}. {POLICY[len(lines) % len(POLICY)]}")
    return "\n".join(lines)


def prefix_plan(clients: int, per_client: int, max_tokens: int, system: str) -> Plan:
    """Short questions behind one shared system prompt (what a prefix cache saves the prefill of)."""
    return [[_body([{"role": "system", "content": system},
                    {"role": "user", "content": QUESTIONS[(c * per_client + i) % len(QUESTIONS)]}], max_tokens)
             for i in range(per_client)] for c in range(clients)]


# ---------------------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Options:
    """What to run (``main`` fills it from the command line)."""

    levels: list[int]
    cost_levels: list[int]
    rounds: int
    base_requests: int
    per_client: int
    max_tokens: int
    mixed_clients: int
    json_clients: int
    prefix_clients: int
    seed: int


class Pool:
    """Samples, wall time and failures pooled by run name over the rounds."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}
        self.walls: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def add(self, name: str, results: list[Sample], wall: float, failures: int = 0) -> None:
        self.samples.setdefault(name, []).extend(results)
        self.walls[name] = self.walls.get(name, 0.0) + wall
        self.failures[name] = self.failures.get(name, 0) + failures
        tokens = sum(r[2] for r in results)
        note = f", {failures} failed" if failures else ""
        print(f"  {name}: {tokens / wall:.1f} tok/s{note}", file=sys.stderr, flush=True)

    def rows(self) -> list[Row]:
        return [_row(name, results, self.walls[name], self.failures[name]) for name, results in self.samples.items()]


def run(opts: Options) -> list[Row]:
    """Interleaved rounds of baseline, serving levels and the mixed workload, then the ABBA comparisons."""
    import httpx

    server = ServerProcess("on")
    key = server.wait()
    url = f"http://127.0.0.1:{server.port}"
    base = Baseline(opts.max_tokens)
    pool = Pool()
    rng = random.Random(opts.seed)

    def levels() -> None:
        for clients in opts.levels:
            pool.add(f"serve c={clients}", *asyncio.run(
                _clients(url, key, uniform_plan(clients, opts.per_client, opts.max_tokens))))

    def mixed() -> None:
        if opts.mixed_clients:
            pool.add(f"mixed c={opts.mixed_clients}", *asyncio.run(
                _clients(url, key, mixed_plan(opts.mixed_clients, opts.per_client, rng))))

    try:
        for r in range(opts.rounds):
            results, wall = base.run(opts.base_requests, offset=r * opts.base_requests)
            pool.add("baseline generate, 1 at a time", results, wall)
            for step in ((levels, mixed) if r % 2 == 0 else (mixed, levels)):  # A B, then B A
                step()
        for clients in opts.cost_levels:
            for _ in range(opts.rounds):
                for on in (True, False, False, True):
                    httpx.post(f"{url}/bench/capture", params={"on": on}, timeout=10,
                               headers={"Authorization": f"Bearer {key}"}).raise_for_status()
                    pool.add(f"c={clients} traces {'on' if on else 'off'} (ABBA)", *asyncio.run(
                        _clients(url, key, uniform_plan(clients, opts.per_client, opts.max_tokens))))
        if opts.json_clients:
            for _ in range(opts.rounds):
                for constrained in (True, False, False, True):
                    name = f"c={opts.json_clients} {'json_schema' if constrained else 'free'} (ABBA)"
                    plan = json_plan(opts.json_clients, opts.per_client, constrained)
                    pool.add(name, *asyncio.run(_clients(url, key, plan, is_city if constrained else None)))
    finally:
        tail = server.stop().strip().splitlines()
        if tail:
            print(f"  server: {tail[-1]}", file=sys.stderr)
    if opts.prefix_clients:
        run_prefix_cache(opts, pool)
    return pool.rows()


def run_prefix_cache(opts: Options, pool: Pool) -> None:
    """ABBA between a server with the prefix cache on and one with it off, on the shared-system-prompt workload."""
    if not prefix_cache_supported():
        print("  prefix cache on vs off: skipped (this build's ServingConfig has no prefix_cache)", file=sys.stderr)
        return
    plan = prefix_plan(opts.prefix_clients, opts.per_client, opts.max_tokens, shared_system_prompt())
    servers = {"on": ServerProcess("on", prefix_cache="on"), "off": ServerProcess("on", prefix_cache="off")}
    try:
        keys = {mode: server.wait() for mode, server in servers.items()}
        for _ in range(opts.rounds):
            for mode in ("on", "off", "off", "on"):
                url = f"http://127.0.0.1:{servers[mode].port}"
                pool.add(f"c={opts.prefix_clients} prefix cache {mode} (ABBA)",
                         *asyncio.run(_clients(url, keys[mode], plan)))
    finally:
        for server in servers.values():
            server.stop()


# ---------------------------------------------------------------------------------------------- the baseline


class Baseline:
    """The same requests, one at a time, through plain transformers ``generate`` in this process."""

    def __init__(self, max_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from teachloop.render import Renderer

        model_dir = _model_dir()
        self.torch = torch
        self.renderer = Renderer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.stops = self.renderer.stop_token_ids()
        self.max_tokens = max_tokens
        self.one(QUESTIONS[0])  # warm up

    def one(self, question: str) -> tuple[float, float, int]:
        from transformers.generation.streamers import BaseStreamer

        class FirstToken(BaseStreamer):
            calls = 0
            first: float | None = None

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls == 2:  # call 1 is the prompt
                    self.first = time.perf_counter()

            def end(self) -> None:
                pass

        torch = self.torch
        ids = self.renderer.build_prompt([{"role": "user", "content": question}])
        streamer = FirstToken()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=self.max_tokens, do_sample=False, eos_token_id=self.stops, pad_token_id=self.stops[0],
                streamer=streamer,
            )
        end = time.perf_counter()
        return end - t0, (streamer.first or end) - t0, int(out.shape[1] - len(ids))

    def run(self, requests: int, offset: int = 0) -> tuple[list[tuple[float, float, int]], float]:
        t0 = time.perf_counter()
        results = [self.one(QUESTIONS[(offset + i) % len(QUESTIONS)]) for i in range(requests)]
        return results, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(rows: list[Row]) -> str:
    lines = ["| run | requests | failures | output tokens | tokens/s | p50 latency ms | p99 latency ms | p50 TTFT ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.requests} | {r.failures} | {r.tokens} | {r.tokens_per_s:.1f} | {r.p50_ms:.0f} "
                     f"| {r.p99_ms:.0f} | {r.ttft_p50_ms:.0f} |")
    base = rows[0]
    lines.append("")
    by_name = {r.name: r for r in rows}
    for r in rows[1:]:
        if r.name.startswith("serve "):
            lines.append(f"- {r.name}: {r.tokens_per_s / base.tokens_per_s:.1f}x the baseline's tokens/s")
    for r in rows:
        if r.name.startswith("mixed c="):
            clients = r.name.removeprefix("mixed ")
            uniform = by_name.get(f"serve {clients}")
            versus = f", {_ratio(r.tokens_per_s, uniform.tokens_per_s)} uniform {clients}'s" if uniform else ""
            lines.append(f"- mixed workload at {clients}: {r.failures} failed of {r.requests + r.failures} "
                         f"(must be 0); {r.tokens_per_s:.1f} tokens/s{versus}; p50/p99 latency "
                         f"{r.p50_ms:.0f}/{r.p99_ms:.0f} ms")
        if r.name.endswith("traces on (ABBA)"):
            off = by_name[r.name.replace("traces on", "traces off")]
            lines.append(f"- trace capture at {r.name.split()[0]}: median latency {r.p50_ms:.0f} ms on vs "
                         f"{off.p50_ms:.0f} ms off ({(r.p50_ms / off.p50_ms - 1) * 100:+.1f}%)")
        if r.name.endswith("json_schema (ABBA)"):
            free = by_name[r.name.replace("json_schema", "free")]
            lines.append(f"- json_schema vs free decoding at {r.name.split()[0]}: {r.tokens_per_s:.1f} vs "
                         f"{free.tokens_per_s:.1f} tokens/s ({_ratio(r.tokens_per_s, free.tokens_per_s)}); median "
                         f"latency {r.p50_ms:.0f} vs {free.p50_ms:.0f} ms; {r.failures} constrained replies failed")
        if r.name.endswith("prefix cache on (ABBA)"):
            off = by_name[r.name.replace("cache on", "cache off")]
            lines.append(f"- prefix cache at {r.name.split()[0]}: p50 TTFT {r.ttft_p50_ms:.0f} ms on vs "
                         f"{off.ttft_p50_ms:.0f} ms off ({_ratio(r.ttft_p50_ms, off.ttft_p50_ms)}); "
                         f"{r.tokens_per_s:.1f} vs {off.tokens_per_s:.1f} tokens/s "
                         f"({_ratio(r.tokens_per_s, off.tokens_per_s)})")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16", help="client counts (default 1,4,16)")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--baseline-requests", type=int, default=4, help="baseline requests per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of baseline + every level; ABBA repeats")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--traces-off-levels", default="4,16", help="levels of the ABBA capture on/off rounds")
    parser.add_argument("--mixed-clients", type=int, default=16, help="clients of the mixed workload (0 skips)")
    parser.add_argument("--json-clients", type=int, default=16,
                        help="clients of the ABBA json_schema vs free decoding runs (0 skips)")
    parser.add_argument("--prefix-cache-clients", type=int, default=16,
                        help="clients of the ABBA prefix cache on vs off runs (0 skips)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the mixed workload")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--traces", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--prefix-cache", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    opts = Options(
        levels=_ints(args.levels), cost_levels=_ints(args.traces_off_levels), rounds=args.rounds,
        base_requests=args.baseline_requests, per_client=args.requests_per_client, max_tokens=args.max_tokens,
        mixed_clients=args.mixed_clients, json_clients=args.json_clients, prefix_clients=args.prefix_cache_clients,
        seed=args.seed,
    )
    rows = run(opts)
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    failed = sum(r.failures for r in rows)
    if failed:
        raise SystemExit(f"{failed} requests failed")


if __name__ == "__main__":
    main()
