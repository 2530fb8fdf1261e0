"""The latency teachloop adds in front of an upstream model (issue 17), measured in the same run.

Three processes: an OpenAI-compatible **upstream** (a minimal ASGI app on uvicorn answering a fixed chat
completion), a **teachloop** server (no model loaded; one deployment whose primary arm is that upstream,
with prices, so every call is relayed, priced and traced to SQLite before it is answered), and this
process as the caller. Each round sends requests alternately straight to the upstream and through
teachloop (one keep-alive ``httpx`` client each, sequential, the same body), so both contenders share
whatever else the machine is doing. Prints per-contender medians (p50, p90) per round, the median over
rounds, the p50 overhead (through teachloop minus direct) and the ratio.

    python bench/upstream_proxy.py --rounds 5 --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = {"model": "support", "messages": [{"role": "user", "content": "What is 12 + 35?"}], "max_tokens": 16}
ANSWER = json.dumps({
    "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "teacher",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 47.", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 6, "total_tokens": 20},
}).encode()
KEY = "sk-bench-upstream-key-0123456789"


# ---------------------------------------------------------------------------------------------- servers


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A minimal OpenAI-compatible upstream: a fixed completion, and 200 for GET /v1/models/*."""
    if scope["type"] != "http":
        return
    while True:  # drain the body
        message = await receive()
        if not message.get("more_body"):
            break
    body = ANSWER if scope["method"] == "POST" else b'{"id": "teacher", "object": "model"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_teachloop(port: int, home: Path) -> None:
    import uvicorn
    from cryptography.fernet import Fernet

    from teachloop.app import AppDeps, create_app
    from teachloop.core.settings import Settings
    from teachloop.serve import Serving
    from teachloop.store import BlobStore, Database, bootstrap

    settings = Settings(home=home, model_cache=home / "models", database_url=f"sqlite:///{home / 'teachloop.db'}",
                        blob_url=str(home / "blobs"))
    db = Database(settings.database_url)
    db.migrate()
    with db.session() as s:
        first = bootstrap(s, "bench", "owner@bench.test")
        assert first.key is not None
        (home / "key").write_text(first.key.secret)
    blobs = BlobStore(settings.blob_url)
    serving = Serving(db, blobs, upstream_key=Fernet.generate_key().decode())
    serving.start()
    uvicorn.run(create_app(AppDeps(settings, db, blobs, serving=serving)), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------- caller


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="Requests per contender per round.")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tl-bench-upstream-"))
    up_port, tl_port = _port(), _port()
    me = [sys.executable, str(Path(__file__).resolve())]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = [subprocess.Popen([*me, "--serve-upstream", str(up_port)], env=env),
             subprocess.Popen([*me, "--serve-teachloop", str(tl_port), str(home)], env=env)]
    try:
        upstream, teachloop = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{tl_port}"
        _wait(upstream + "/models/teacher", procs[0])
        _wait(teachloop + "/healthz", procs[1])
        key = (home / "key").read_text()
        created = httpx.post(f"{teachloop}/api/deployments", headers={"Authorization": f"Bearer {key}"}, json={
            "name": "support", "base_model": "smollm2-135m-instruct",
            "upstream": {"base_url": upstream, "model": "teacher", "api_key": KEY},
            "prices": {"teacher": {"prompt_per_1m": 15, "completion_per_1m": 60}}}, timeout=30)
        assert created.status_code == 201, created.text
        direct = httpx.Client(base_url=upstream, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        proxied = httpx.Client(base_url=teachloop + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30)

        def once(client: httpx.Client) -> float:
            t0 = time.perf_counter()
            r = client.post("/chat/completions", json=BODY)
            elapsed = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200, r.text
            return elapsed

        for _ in range(args.warmup):
            once(direct)
            once(proxied)
        rows = []
        print(f"{'round':>5} {'direct p50':>11} {'direct p90':>11} {'teachloop p50':>14} {'teachloop p90':>14} "
              f"{'overhead p50':>13}")
        for r in range(args.rounds):
            d, p = [], []
            for _ in range(args.requests):  # alternate request by request
                d.append(once(direct))
                p.append(once(proxied))
            row = (statistics.median(d), _pct(d, 0.9), statistics.median(p), _pct(p, 0.9))
            rows.append(row)
            print(f"{r + 1:>5} {row[0]:>9.2f}ms {row[1]:>9.2f}ms {row[2]:>12.2f}ms {row[3]:>12.2f}ms "
                  f"{row[2] - row[0]:>11.2f}ms", flush=True)
        med = [statistics.median(x[i] for x in rows) for i in range(4)]
        print(f"median over {args.rounds} rounds: direct p50 {med[0]:.2f} ms (p90 {med[1]:.2f}), through teachloop "
              f"p50 {med[2]:.2f} ms (p90 {med[3]:.2f}); p50 overhead {med[2] - med[0]:.2f} ms "
              f"(target <= 5 ms), ratio {med[2] / med[0]:.2f}x")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve-upstream":
        serve_upstream(int(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "--serve-teachloop":
        serve_teachloop(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
