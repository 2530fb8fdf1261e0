"""The latency teachloop adds in front of an upstream model (issue 17), measured in the same run.

Processes: an OpenAI-compatible **upstream** (a minimal ASGI app on uvicorn answering a fixed chat
completion), **teachloop** servers (no model loaded; one deployment each whose primary arm is that upstream,
with prices, so every call is relayed, priced and traced to SQLite), and this process as the caller. The
teachloop contenders:

* ``teachloop`` -- this tree as configured by default: the answer waits for its trace's commit;
* ``queued`` -- this tree with ``ServingConfig(upstream_commit_first=False)``: the trace is queued on the
  same writer before the answer and committed right after it;
* ``baseline`` (with ``--baseline-rev REV``) -- this tree with the files under ``--baseline-paths``
  (default: ``src/teachloop``, the whole package: the request path spans ``app``, ``serve``, ``store`` and
  ``market``) as they are at ``REV`` (read with ``git show``; files added since are left out), so only those
  files differ (name fewer paths, e.g. ``src/teachloop/serve``, to isolate one change);
* ``baseline src`` (with ``--baseline-src DIR``) -- any prepared source tree, e.g. this one with a change
  undone by hand where the file at ``REV`` would not import with the rest of the tree.

Each round sends requests round-robin, one by one, straight to the upstream and through each teachloop
(one keep-alive ``httpx`` client each, sequential, the same body), so all contenders share whatever else the
machine is doing. Prints per-contender p50 and p90 per round, the median over rounds, each teachloop's
p50 overhead (minus direct) and ratio, and each server's CPU per call (``/proc`` user + system time over
the round; for ``direct``, the upstream's CPU per request it answered, every contender's included).

    python bench/upstream_proxy.py --rounds 5 --requests 200 [--baseline-rev HEAD]
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


def serve_teachloop(port: int, home: Path, commit_first: bool = True) -> None:
    import uvicorn
    from cryptography.fernet import Fernet

    from teachloop.app import AppDeps, create_app
    from teachloop.core.settings import Settings
    from teachloop.serve import Serving, ServingConfig
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
    config = ServingConfig() if commit_first else ServingConfig(upstream_commit_first=False)
    serving = Serving(db, blobs, upstream_key=Fernet.generate_key().decode(), config=config)
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


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline_tree(rev: str, paths: list[str]) -> Path:
    """A copy of this tree's ``src`` with ``paths`` (files or folders) as they are at ``rev``."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    out = Path(tempfile.mkdtemp(prefix="tl-bench-baseline-"))
    shutil.copytree(root / "src", out / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for path in paths:
        for f in (out / path).rglob("*.py") if (out / path).is_dir() else [out / path]:
            f.unlink(missing_ok=True)
        listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", path], cwd=root, check=True,
                                capture_output=True, text=True).stdout.split()
        for name in listed:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(subprocess.run(["git", "show", f"{rev}:{name}"], cwd=root, check=True,
                                                    capture_output=True).stdout)
    return out / "src"


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="Requests per contender per round.")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--baseline-rev", default=None, help="Also run this tree with --baseline-paths at REV.")
    parser.add_argument("--baseline-paths", nargs="+",
                        default=["src/teachloop"])
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="Also run a prepared source tree (the folder holding teachloop/), named 'baseline src'.")
    parser.add_argument("--no-queued", action="store_true", help="Leave out the upstream_commit_first=False server.")
    args = parser.parse_args()

    src = Path(__file__).resolve().parents[1] / "src"
    servers = [("teachloop", src, "1")]
    if not args.no_queued:
        servers.append(("queued", src, "0"))
    if args.baseline_rev:
        servers.append((f"baseline {args.baseline_rev}", baseline_tree(args.baseline_rev, args.baseline_paths), "1"))
    if args.baseline_src:
        servers.append(("baseline src", args.baseline_src.resolve(), "1"))
    up_port = _port()
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = [subprocess.Popen([*me, "--serve-upstream", str(up_port)], env={**os.environ, "PYTHONPATH": str(src)})]
    try:
        upstream = f"http://127.0.0.1:{up_port}/v1"
        _wait(upstream + "/models/teacher", procs[0])
        pids = {"direct": procs[0].pid}
        clients = {"direct": httpx.Client(base_url=upstream, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)}
        for name, tree, commit_first in servers:
            home, port = Path(tempfile.mkdtemp(prefix="tl-bench-upstream-")), _port()
            procs.append(subprocess.Popen([*me, "--serve-teachloop", str(port), str(home), commit_first],
                                          env={**os.environ, "PYTHONPATH": str(tree)}))
            url = f"http://127.0.0.1:{port}"
            _wait(url + "/healthz", procs[-1])
            key = (home / "key").read_text()
            created = httpx.post(f"{url}/api/deployments", headers={"Authorization": f"Bearer {key}"}, json={
                "name": "support", "base_model": "smollm2-135m-instruct",
                "upstream": {"base_url": upstream, "model": "teacher", "api_key": KEY},
                "prices": {"teacher": {"prompt_per_1m": 15, "completion_per_1m": 60}}}, timeout=30)
            assert created.status_code == 201, created.text
            pids[name] = procs[-1].pid
            clients[name] = httpx.Client(base_url=url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30)

        def once(client: httpx.Client) -> float:
            t0 = time.perf_counter()
            r = client.post("/chat/completions", json=BODY)
            elapsed = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200, r.text
            return elapsed

        for _ in range(args.warmup):
            for client in clients.values():
                once(client)
        names = list(clients)
        rounds: list[dict[str, tuple[float, float]]] = []
        cpu: dict[str, list[float]] = {n: [] for n in names}  # server CPU ms per call, per round
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        print(f"{'round':>5} " + " ".join(f"{n + ' p50/p90':>28}" for n in names))
        for r in range(args.rounds):
            got: dict[str, list[float]] = {n: [] for n in names}
            cpu0 = {n: _cpu_s(pids[n]) for n in names}
            for _ in range(args.requests):  # round-robin, request by request
                for n in names:
                    got[n].append(once(clients[n]))
            rounds.append({n: (statistics.median(v), _pct(v, 0.9)) for n, v in got.items()})
            for n in names:  # the upstream serves every contender: its CPU per call is per request it answered
                calls = args.requests * (len(names) if n == "direct" else 1)
                cpu[n].append((_cpu_s(pids[n]) - cpu0[n]) * 1000 / calls)
            print(f"{r + 1:>5} " + " ".join(f"{rounds[-1][n][0]:>13.2f} /{rounds[-1][n][1]:>9.2f} ms" for n in names),
                  flush=True)
        med = {n: (statistics.median(x[n][0] for x in rounds), statistics.median(x[n][1] for x in rounds))
               for n in names}
        print(f"median over {args.rounds} rounds x {args.requests} requests (load average after: "
              f"{os.getloadavg()[0]:.1f}):")
        for n in names:
            line = (f"  {n:<24} p50 {med[n][0]:7.2f} ms  p90 {med[n][1]:7.2f} ms  "
                    f"server CPU {statistics.median(cpu[n]):5.2f} ms/call")
            if n != "direct":
                line += (f"  p50 overhead {med[n][0] - med['direct'][0]:6.2f} ms (target <= 5 ms), "
                         f"ratio {med[n][0] / med['direct'][0]:.2f}x")
            print(line)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve-upstream":
        serve_upstream(int(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "--serve-teachloop":
        serve_teachloop(int(sys.argv[2]), Path(sys.argv[3]), len(sys.argv) < 5 or sys.argv[4] == "1")
    else:
        main()
