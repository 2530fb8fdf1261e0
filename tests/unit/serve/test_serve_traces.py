"""Trace capture and feedback: group commits, acknowledgements, REST filters, exports, and the text stream."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from teachloop.core.errors import Conflict, ServiceUnavailable
from teachloop.core.ids import new_id
from teachloop.serve import TraceWriter, export_hf, export_jsonl
from teachloop.serve.text import TextStream, cut_at_stops
from teachloop.store import Database
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants, auth

CHAT = "/v1/chat/completions"


def _values(org: str, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": new_id("tr"), "org_id": org, "key_id": None, "model": "m", "base_model": "m",
        "messages": [{"role": "user", "content": "hi"}], "tools": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}],
        "params": {}, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1, "latency_ms": 1.0,
        "request_metadata": {}, "created_at": datetime.now(UTC),
    }
    values.update(over)
    return values


def test_writer_groups_concurrent_traces_into_few_commits(database: Database, tenants: Tenants) -> None:
    writer = TraceWriter(database)
    writer.start()
    try:
        futures = []
        slow = threading.Event()

        def burst() -> None:
            for _ in range(50):
                futures.append(writer.submit(_values(tenants.acme.org_id)))
            slow.set()

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done, _ = wait(futures, timeout=30)
        assert len(done) == 200 and all(f.exception() is None for f in done)
        stats = writer.stats()
        assert stats.rows_written == 200 and stats.commits < 200
        with database.session(write=False) as s:
            assert s.query(Trace).count() == 200
        with database.session(write=False) as s:  # tools=None is stored as SQL NULL
            assert s.query(Trace).filter(Trace.tools.is_(None)).count() == 200
    finally:
        writer.close()


def test_writer_reports_how_long_rows_wait_to_be_durable(database: Database, tenants: Tenants) -> None:
    """wait_ms is submit -> committed per row: a row queued behind a held commit waits for it."""
    writer = TraceWriter(database)
    writer.start()
    try:
        assert writer.stats().wait_ms_mean == writer.stats().commit_ms_mean == 0.0
        writer.submit(_values(tenants.acme.org_id)).result(timeout=30)
        quick = writer.stats()
        assert 0 < quick.commit_ms_mean <= quick.wait_ms_mean == quick.wait_ms_max
        with database.session() as held:  # hold SQLite's write lock so the next commit waits
            held.execute(text("UPDATE organisations SET name = name WHERE id = :o"), {"o": tenants.acme.org_id})
            future = writer.submit(_values(tenants.acme.org_id))
            time.sleep(0.3)
            assert not future.done()
        future.result(timeout=30)
        stats = writer.stats()
        assert stats.rows_written == 2 and stats.wait_ms_max >= 300 > quick.wait_ms_max
        assert stats.wait_ms_mean == pytest.approx((quick.wait_ms_mean + stats.wait_ms_max) / 2)
    finally:
        writer.close()


def test_a_bad_row_fails_only_its_own_request(database: Database, tenants: Tenants) -> None:
    writer = TraceWriter(database)
    writer.start()
    try:
        good = [_values(tenants.acme.org_id) for _ in range(3)]
        bad = _values("org_01m88q503wzm0efj62e8rttgag")  # no such organisation: a foreign-key violation
        futures = [writer.submit(v) for v in [good[0], bad, *good[1:]]]
        wait(futures, timeout=30)
        assert [f.exception() is None for f in futures] == [True, False, True, True]
        assert isinstance(futures[1].exception(), Conflict)
        with database.session(write=False) as s:
            assert s.query(Trace).count() == 3
    finally:
        writer.close()
    with pytest.raises(ServiceUnavailable):
        writer.submit(_values(tenants.acme.org_id))


def test_a_response_waits_for_its_trace_commit(client: TestClient, tenants: Tenants, database: Database) -> None:
    """While the database is locked by another writer, the answer does not go out."""
    started = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with database.session() as s:
            s.connection().exec_driver_sql("SELECT 1")
            started.set()
            release.wait(10)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert started.wait(5)
    answered: list[float] = []

    def ask() -> None:
        r = client.post(CHAT, json={"model": BASE, "messages": [{"role": "user", "content": "hi"}]},
                        headers=auth(tenants.acme.member))
        assert r.status_code == 200
        answered.append(time.monotonic())

    caller = threading.Thread(target=ask)
    t0 = time.monotonic()
    caller.start()
    time.sleep(0.6)
    assert not answered  # generation is done, but the trace cannot commit yet
    release.set()
    caller.join(10)
    holder.join(10)
    assert answered and answered[0] - t0 >= 0.6


def test_feedback_over_rest_and_trace_filters(client: TestClient, tenants: Tenants) -> None:
    h = auth(tenants.acme.member)
    ids = []
    for i, app in enumerate(["web", "ios", "web"]):
        r = client.post(CHAT, json={"model": BASE, "messages": [{"role": "user", "content": f"q{i}"}],
                                    "metadata": {"app": app}, "user": f"u{i}"}, headers=h)
        ids.append(r.headers["x-teachloop-trace-id"])
    r = client.post(f"/api/traces/chatcmpl-{ids[0]}/feedback", json={"score": 1.0, "label": "good"}, headers=h)
    assert r.status_code == 201 and r.json()["trace_id"] == ids[0]
    client.post(f"/api/traces/{ids[2]}/feedback", json={"score": 0.0, "comment": "wrong",
                                                          "corrected_output": "q2 fixed"}, headers=h)
    client.post(f"/api/traces/{ids[2]}/feedback", json={"label": "needs-review"}, headers=h)
    for body, param in (({}, "score"), ({"score": "high"}, "score"), ({"score": 1, "choice_index": 4}, "choice_index"),
                        ({"corrected_output": {"role": "user", "content": "x"}}, "corrected_output.role"),
                        ({"label": ""}, "label"), ({"score": 1, "extra": 1}, "extra")):
        bad = client.post(f"/api/traces/{ids[1]}/feedback", json=body, headers=h)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    assert client.get(f"/api/traces/{ids[1]}/feedback", headers=h).json()["data"] == []
    assert client.post(f"/api/traces/{ids[1]}/feedback", json={"score": 1}, headers=auth(tenants.acme.viewer)).status_code == 403

    def listed(query: str) -> list[str]:
        r = client.get(f"/api/traces?{query}", headers=auth(tenants.acme.viewer))
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["data"]]

    assert listed("") == ids[::-1]
    assert listed("has_feedback=true") == [ids[2], ids[0]]
    assert listed("has_feedback=false") == [ids[1]]
    assert listed("min_score=0.5") == [ids[0]]
    assert listed("label=needs-review") == [ids[2]]
    assert listed("has_correction=true") == [ids[2]]
    assert listed("metadata=app%3Dweb") == [ids[2], ids[0]]
    assert listed("user=u1") == [ids[1]]
    assert listed(f"model={BASE}&limit=1") == [ids[2]]
    assert listed(f"before={ids[2]}") == [ids[1], ids[0]]
    one = client.get(f"/api/traces/{ids[2]}", headers=h).json()
    assert [f["label"] for f in one["feedback"]] == [None, "needs-review"]
    assert one["feedback"][0]["corrected_output"] == {"role": "assistant", "content": "q2 fixed"}
    for query, param in (("limit=0", "limit"), ("metadata=novalue", "metadata"), ("since=yesterday", "since"),
                         ("min_score=2&max_score=1", "min_score")):
        r = client.get(f"/api/traces?{query}", headers=h)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_export_jsonl_and_hf_dataset(database: Database, tenants: Tenants, tmp_path: Path) -> None:
    org = tenants.acme.org_id
    rows = [_values(org, request_metadata={"app": "web"}), _values(org)]
    with database.session() as s:
        Traces(s).add_many(Trace(**{k: v for k, v in r.items() if k != "tools"}) for r in rows)
        Traces(s).add_feedback(org, rows[0]["id"], score=1.0, corrected_output={"role": "assistant", "content": "fixed"})
    out = tmp_path / "traces.jsonl"
    n = export_jsonl(database, org, TraceFilter(has_feedback=True), out, use_corrections=True)
    [line] = out.read_text().splitlines()
    row = json.loads(line)
    assert n == 1 and row["messages"][-1] == {"role": "assistant", "content": "fixed"}
    assert row["metadata"]["trace_id"] == rows[0]["id"] and row["metadata"]["corrected"] is True
    assert export_jsonl(database, org, TraceFilter(), out) == 2
    assert json.loads(out.read_text().splitlines()[1])["messages"][-1]["content"] == "yo"

    import datasets

    n = export_hf(database, org, TraceFilter(), tmp_path / "hf", use_corrections=True)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert n == len(ds) == 2
    by_id = {r["trace_id"]: r for r in ds}
    fixed, plain = by_id[rows[0]["id"]], by_id[rows[1]["id"]]
    assert (fixed["messages"][-1]["content"], fixed["score"], fixed["corrected"]) == ("fixed", 1.0, True)
    assert (plain["messages"][-1]["content"], plain["score"], plain["corrected"]) == ("yo", None, False)
    assert json.loads(fixed["metadata"]) == {"app": "web"} and fixed["messages"][0]["role"] == "user"


class _Tok:
    """A decode over a byte tokenizer where token 300 is half of 'é' and 301 the other half."""

    def __call__(self, ids: Any) -> str:
        data = b"".join(bytes([i]) if i < 256 else {300: b"\xc3", 301: b"\xa9"}[i] for i in ids)
        return data.decode("utf-8", errors="replace")


def test_text_stream_never_splits_characters_and_holds_back_stops() -> None:
    stream = TextStream(_Tok(), stop_ids={0}, stops=("END",))
    out = [stream.push([ord("a")]), stream.push([300]), stream.push([301]), stream.push([ord("E")]),
           stream.push([ord("N")])]
    assert out == ["a", "", "é", "", ""]
    assert stream.push([ord("x")]) == "ENx"
    assert stream.push([ord("E"), ord("N"), ord("D"), ord("y")]) == "" and stream.ended
    assert stream.finish() == "" and stream.text == "aéENx"
    stops = TextStream(_Tok(), stop_ids={0})
    assert stops.push([ord("h"), ord("i"), 0, ord("z")]) == "hi" and stops.ended
    assert cut_at_stops("one two three", ["three", "two"]) == ("one ", True)
