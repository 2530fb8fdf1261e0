"""Serving under load: concurrent streaming chat clients over HTTP vs plain transformers ``generate``.

Workload (SmolLM2-135M-Instruct, float32, CPU; greedy, at most ``--max-tokens`` new tokens,
stopping at the end of the turn): short chat questions. Measured in the same run:

* ``baseline``: the same requests served one at a time by ``model.generate`` in this
  process (no HTTP).
* ``serve c=N``: N client tasks each sending ``--requests-per-client`` streaming requests
  back to back to ``teachloop``'s ``/v1/chat/completions`` (a server in a subprocess:
  uvicorn + the serving scheduler + trace capture), for N in ``--levels``.
* trace capture on vs off at N clients (``--traces-off-levels``): on the same server,
  rounds alternate capture on, off, off, on (ABBA), and the median latencies of the
  pooled on and off requests are compared.

The machine may be shared, so the baseline and the levels are interleaved: each of
``--rounds`` rounds runs ``--baseline-requests`` baseline requests, then every level;
figures pool the rounds. Figures: aggregate output tokens/s (completion tokens / wall
time), p50 and p99 latency, p50 time to first token. Targets (issue 5): at 16 clients
>= 6x the baseline's tokens/s; trace capture adds <= 5% to median latency.

    python bench/serve_load.py                     # about 6 minutes on 2 CPU cores
    python bench/serve_load.py --levels 1,4 --requests-per-client 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
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


def _row(name: str, results: list[tuple[float, float, int]], wall: float) -> Row:
    latencies = [r[0] * 1000 for r in results]
    tokens = sum(r[2] for r in results)
    return Row(name, len(results), tokens, wall, tokens / wall, statistics.median(latencies), _pct(latencies, 0.99),
               statistics.median(r[1] * 1000 for r in results))


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
    serving = Serving(database, blobs, engine=engine, renderer=Renderer.from_pretrained(model_dir),
                      base_model=DEFAULT_MODEL, config=ServingConfig(capture_traces=args.traces == "on"))
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


class ServerProcess:
    def __init__(self, traces: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="teachloop-bench-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.ready = Path(self.tmp.name) / "ready"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--home", self.tmp.name, "--port", str(self.port),
             "--traces", traces, "--ready", str(self.ready)],
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


async def _one(http: Any, url: str, key: str, question: str, max_tokens: int) -> tuple[float, float, int]:
    from teachloop.core.settings import DEFAULT_MODEL

    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return end - t0, (first or end) - t0, tokens


async def _level(url: str, key: str, clients: int, per_client: int, max_tokens: int) -> tuple[list[Any], float]:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as http:
        await _one(http, url, key, QUESTIONS[0], 4)  # warm the connection and the server

        async def client(c: int) -> list[tuple[float, float, int]]:
            out = []
            for i in range(per_client):
                out.append(await _one(http, url, key, QUESTIONS[(c * per_client + i) % len(QUESTIONS)], max_tokens))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return [r for rs in results for r in rs], wall


def run(levels: list[int], cost_levels: list[int], rounds: int, base_requests: int, per_client: int,
        max_tokens: int) -> list[Row]:
    """Interleaved rounds of baseline and serving levels, then the ABBA capture on/off rounds, on one server."""
    import httpx

    server = ServerProcess("on")
    key = server.wait()
    url = f"http://127.0.0.1:{server.port}"
    base = Baseline(max_tokens)
    pooled: dict[str, list[tuple[float, float, int]]] = {}
    walls: dict[str, float] = {}

    def add(name: str, results: list[tuple[float, float, int]], wall: float) -> None:
        pooled.setdefault(name, []).extend(results)
        walls[name] = walls.get(name, 0.0) + wall
        print(f"  {name}: {sum(r[2] for r in results) / wall:.1f} tok/s", file=sys.stderr, flush=True)

    try:
        for r in range(rounds):
            add("baseline generate, 1 at a time", *base.run(base_requests, offset=r * base_requests))
            for clients in levels:
                add(f"serve c={clients}", *asyncio.run(_level(url, key, clients, per_client, max_tokens)))
        for clients in cost_levels:
            for on in (True, False, False, True):
                httpx.post(f"{url}/bench/capture", params={"on": on}, timeout=10,
                           headers={"Authorization": f"Bearer {key}"}).raise_for_status()
                name = f"c={clients} traces {'on' if on else 'off'} (ABBA)"
                add(name, *asyncio.run(_level(url, key, clients, per_client, max_tokens)))
    finally:
        tail = server.stop().strip().splitlines()
        if tail:
            print(f"  server: {tail[-1]}", file=sys.stderr)
    return [_row(name, results, walls[name]) for name, results in pooled.items()]


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


def report(rows: list[Row]) -> str:
    lines = ["| run | requests | output tokens | tokens/s | p50 latency ms | p99 latency ms | p50 TTFT ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.requests} | {r.tokens} | {r.tokens_per_s:.1f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} "
                     f"| {r.ttft_p50_ms:.0f} |")
    base = rows[0]
    lines.append("")
    by_name = {r.name: r for r in rows}
    for r in rows[1:]:
        if r.name.startswith("serve "):
            lines.append(f"- {r.name}: {r.tokens_per_s / base.tokens_per_s:.1f}x the baseline's tokens/s")
    for r in rows:
        if r.name.endswith("traces on (ABBA)"):
            off = by_name[r.name.replace("traces on", "traces off")]
            lines.append(f"- trace capture at {r.name.split()[0]}: median latency {r.p50_ms:.0f} ms on vs "
                         f"{off.p50_ms:.0f} ms off ({(r.p50_ms / off.p50_ms - 1) * 100:+.1f}%)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16", help="client counts (default 1,4,16)")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--baseline-requests", type=int, default=4, help="baseline requests per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of baseline + every level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--traces-off-levels", default="4,16", help="levels of the ABBA capture on/off rounds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--traces", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    levels = [int(x) for x in args.levels.split(",") if x]
    off_levels = [int(x) for x in args.traces_off_levels.split(",") if x]
    rows = run(levels, off_levels, args.rounds, args.baseline_requests, args.requests_per_client, args.max_tokens)
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
