"""``teachloop traces``: list, show and export the captured completions and their feedback.

Reads the database directly (like ``teachloop admin``). Filters: ``--model`` (or ``--deployment``:
deployment name or base model id), ``--since`` / ``--until`` (ISO 8601 date or
time, UTC if no zone, or an age such as ``30m``, ``6h``, ``7d``), ``--feedback``
/ ``--no-feedback``, ``--min-score`` / ``--max-score``, ``--label``,
``--corrected``, ``--user``, ``--meta KEY=VALUE`` (repeatable). ``export``
writes OpenAI chat JSONL (``--format jsonl``) or a Hugging Face dataset saved
with ``save_to_disk`` (``--format hf``); ``--corrections`` replaces a reply by
its newest corrected output from feedback.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Column, Table

from teachloop.cli._common import StoreContext, console
from teachloop.cli.admin import errors
from teachloop.core.errors import InvalidInput

if TYPE_CHECKING:
    from teachloop.store.repos.traces import TraceFilter

app = typer.Typer(help="List, show and export captured completions and their feedback.", no_args_is_help=True)

_ORG_HELP = "Organisation name or id (default: the only organisation)."
_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

ModelOpt = typer.Option(None, "--model", "--deployment", "-m", help="Deployment name or base model id.")
SinceOpt = typer.Option(None, "--since", help="From (ISO 8601, or an age: 30m, 6h, 7d).")
UntilOpt = typer.Option(None, "--until", help="Before (ISO 8601, or an age).")
FeedbackOpt = typer.Option(None, "--feedback/--no-feedback", help="Only traces with (without) feedback.")
MinScoreOpt = typer.Option(None, "--min-score", help="Some feedback scored at least this.")
MaxScoreOpt = typer.Option(None, "--max-score", help="Some feedback scored at most this.")
LabelOpt = typer.Option(None, "--label", help="Some feedback has this label.")
CorrectedOpt = typer.Option(None, "--corrected/--not-corrected", help="Some feedback carries a corrected output.")
UserOpt = typer.Option(None, "--user", help="The client's `user` field.")
MetaOpt = typer.Option(None, "--meta", help="KEY=VALUE of the client's metadata (repeatable; all must match).")
OrgOpt = typer.Option(None, "--org", help=_ORG_HELP)


def parse_when(value: str | None, param: str) -> datetime | None:
    """An aware datetime from ISO 8601 (UTC if no zone) or an age (``30m``, ``6h``, ``7d``) before now."""
    if value is None:
        return None
    text = value.strip()
    age = _AGE.match(text)
    if age:
        return datetime.now(UTC) - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--{param}: {value!r} is neither ISO 8601 nor an age like 30m, 6h, 7d", param=param) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def build_filter(
    *, model: str | None, since: str | None, until: str | None, feedback: bool | None, min_score: float | None,
    max_score: float | None, label: str | None, corrected: bool | None, user: str | None, meta: list[str] | None,
    limit: int,
) -> TraceFilter:
    """The ``TraceFilter`` of the command-line filters."""
    from teachloop.store.repos.traces import TraceFilter

    pairs: dict[str, str] = {}
    for item in meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--meta reads KEY=VALUE, got {item!r}", param="meta")
        pairs[key] = value
    filt = TraceFilter(
        model=model, since=parse_when(since, "since"), until=parse_when(until, "until"), has_feedback=feedback,
        min_score=min_score, max_score=max_score, label=label, has_correction=corrected, user=user,
        metadata=pairs, limit=limit,
    )
    filt.validate()
    return filt


def _preview(text: str | None, width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@app.command("list")
def list_(
    model: str | None = ModelOpt, since: str | None = SinceOpt, until: str | None = UntilOpt,
    feedback: bool | None = FeedbackOpt, min_score: float | None = MinScoreOpt, max_score: float | None = MaxScoreOpt,
    label: str | None = LabelOpt, corrected: bool | None = CorrectedOpt, user: str | None = UserOpt,
    meta: list[str] | None = MetaOpt,
    limit: int = typer.Option(20, "--limit", min=1, max=10_000, help="Newest first, at most this many."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
    org: str | None = OrgOpt,
) -> None:
    """List traces, newest first."""
    from teachloop.serve.trace_views import trace_json
    from teachloop.store.repos.traces import Traces

    with errors():
        filt = build_filter(model=model, since=since, until=until, feedback=feedback, min_score=min_score,
                            max_score=max_score, label=label, corrected=corrected, user=user, meta=meta, limit=limit)
        with StoreContext(org) as ctx, ctx.database.session(write=False) as session:
            repo = Traces(session)
            rows = repo.list(ctx.org_id, filt)
            feedback_of = repo.feedback(ctx.org_id, [t.id for t in rows])
            if as_json:
                for t in rows:
                    typer.echo(json.dumps(trace_json(t, feedback_of[t.id]), ensure_ascii=False))
                return
            table = Table("created", "model", "adapter", "tokens", "ms", "feedback", "reply")
            table.columns.insert(0, Column("trace", no_wrap=True, min_width=29))
            for t in rows:
                scores = [f"{f.score:g}" for f in feedback_of[t.id] if f.score is not None]
                labels = [f.label for f in feedback_of[t.id] if f.label]
                note = ", ".join(scores + labels) or ("yes" if feedback_of[t.id] else "-")
                reply = t.choices[0]["message"].get("content") if t.choices else ""
                table.add_row(
                    t.id, t.created_at.strftime("%m-%d %H:%M:%S"), t.model, (t.adapter_version_id or "base")[-8:],
                    f"{t.prompt_tokens}+{t.completion_tokens}", f"{t.latency_ms:.0f}", note, _preview(reply),
                )
            console.print(table)


@app.command("show")
def show(
    trace_id: str = typer.Argument(..., help="A trace id (tr_...) or completion id (chatcmpl-tr_...)."),
    org: str | None = OrgOpt,
) -> None:
    """Show one trace (messages, replies, parameters, feedback) as JSON."""
    from teachloop.serve.trace_views import trace_json
    from teachloop.store.repos.traces import Traces

    with errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as session:
        repo = Traces(session)
        row = repo.get(ctx.org_id, trace_id)
        console.print_json(json.dumps(trace_json(row, repo.feedback(ctx.org_id, [row.id])[row.id])))


@app.command("export")
def export(
    out: Path = typer.Argument(..., help="Output: a .jsonl file, or a folder for --format hf."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (OpenAI chat) or hf (Hugging Face dataset)."),
    corrections: bool = typer.Option(False, "--corrections", help="Use the newest corrected output from feedback."),
    model: str | None = ModelOpt, since: str | None = SinceOpt, until: str | None = UntilOpt,
    feedback: bool | None = FeedbackOpt, min_score: float | None = MinScoreOpt, max_score: float | None = MaxScoreOpt,
    label: str | None = LabelOpt, corrected: bool | None = CorrectedOpt, user: str | None = UserOpt,
    meta: list[str] | None = MetaOpt,
    limit: int = typer.Option(10_000, "--limit", min=1, max=10_000_000, help="At most this many (newest first)."),
    org: str | None = OrgOpt,
) -> None:
    """Export matching traces as training data."""
    from teachloop.serve.export import export_hf, export_jsonl

    with errors():
        if fmt not in ("jsonl", "hf"):
            raise InvalidInput(f"--format must be jsonl or hf, got {fmt!r}", param="format")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InvalidInput(f"{out} already exists; pick a new path", param="out")
        filt = build_filter(model=model, since=since, until=until, feedback=feedback, min_score=min_score,
                            max_score=max_score, label=label, corrected=corrected, user=user, meta=meta,
                            limit=min(limit, 10_000))
        filt = replace(filt, limit=limit)  # export pages through the store 500 at a time
        with StoreContext(org) as ctx:
            write = export_jsonl if fmt == "jsonl" else export_hf
            n = write(ctx.database, ctx.org_id, filt, out, use_corrections=corrections)
        console.print(f"exported {n} trace{'s' if n != 1 else ''} to {out} ({fmt})", highlight=False)


__all__ = ["app", "build_filter", "parse_when"]
