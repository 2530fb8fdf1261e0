"""``teachloop data``: list, show and export dataset snapshots (immutable, with row-level lineage).

- ``list`` -- snapshots, newest first (``--name`` for one dataset's versions).
- ``show REF`` -- the record (digest, rows per split, licenses, how it was
  made) and its first rows with their lineage (trace, expert, environment
  version, license).
- ``export REF OUT`` -- ``--format openai`` (OpenAI chat JSONL; preference
  pairs in OpenAI's preference shape), ``dpo`` (TRL preference pairs JSONL)
  or ``hf`` (a Hugging Face ``DatasetDict`` saved with ``save_to_disk``, one
  split per snapshot split, lineage columns kept); ``--split`` and
  ``--lineage`` (a ``metadata`` object per JSONL row).

``REF`` is ``NAME@N``, ``NAME`` (newest version) or a ``ds_...`` id.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from teachloop.cli._common import StoreContext, console
from teachloop.cli.admin import errors

app = typer.Typer(help="Dataset snapshots: list, show, export (OpenAI JSONL, DPO pairs, Hugging Face).",
                  no_args_is_help=True)

_ORG_HELP = "Organisation name or id (default: the only organisation)."


@app.command("list")
def list_cmd(
    name: str = typer.Option(None, "--name", help="Only versions of this dataset."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per snapshot."),
) -> None:
    """Dataset snapshots, newest first."""
    from teachloop.loop.export import dataset_json
    from teachloop.store.repos.datasets import Datasets

    with errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        rows = [dataset_json(d) for d in Datasets(s).list(ctx.org_id, name, limit=limit)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table()
    table.add_column("ref", no_wrap=True)
    for col in ("kind", "rows", "train", "holdout", "digest", "licenses", "created"):
        table.add_column(col, overflow="fold")
    for d in rows:
        table.add_row(d["ref"], d["kind"], str(d["rows"]), str(d["splits"].get("train", 0)),
                      str(d["splits"].get("holdout", 0)), d["digest"][:19] + "…", ", ".join(d["licenses"]),
                      d["created_at"][:16])
    console.print(table)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME@N, NAME or ds_..."),
    rows: int = typer.Option(5, "--rows", min=0, help="Rows to print."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the record and the rows as JSON."),
) -> None:
    """A snapshot's record and its first rows with their lineage."""
    from teachloop.loop.export import dataset_json, row_json
    from teachloop.store.repos.datasets import Datasets

    with errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        repo = Datasets(s)
        dataset = repo.resolve(ctx.org_id, ref)
        record = dataset_json(dataset)
        shown = [row_json(r) for r in repo.rows(ctx.org_id, dataset.id)[:rows]]
    if as_json:
        typer.echo(json.dumps({"dataset": record, "rows": shown}))
        return
    console.print(f"[bold]{record['ref']}[/] ({record['id']})  {record['kind']}  {record['rows']} rows "
                  f"{record['splits']}  digest {record['digest']}", highlight=False)
    console.print(f"  licenses: {', '.join(record['licenses'])}; made by {record['created_by']} at "
                  f"{record['created_at']}; source {json.dumps(record['source'])}", highlight=False, soft_wrap=True)
    for r in shown:
        lin = {k: v for k, v in r["lineage"].items() if v is not None}
        console.print(f"  [{r['position']}] {r['split']}  {json.dumps(r['content'], ensure_ascii=False)[:300]}",
                      highlight=False, soft_wrap=True)
        console.print(f"      lineage {json.dumps(lin)}", highlight=False, soft_wrap=True)


@app.command("export")
def export(
    ref: str = typer.Argument(..., help="NAME@N, NAME or ds_..."),
    out: Path = typer.Argument(..., help="Output file (openai, dpo) or folder (hf)."),
    fmt: str = typer.Option("openai", "--format", help="openai | dpo | hf"),
    split: str = typer.Option(None, "--split", help="train or holdout (default: both)."),
    lineage: bool = typer.Option(False, "--lineage", help="Add each row's lineage as `metadata` (JSONL)."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Write a snapshot as OpenAI chat JSONL, DPO pairs JSONL or a Hugging Face dataset."""
    from teachloop.loop.export import export_dataset

    with errors(), StoreContext(org) as ctx:
        n = export_dataset(ctx.database, ctx.org_id, ref, out, fmt=fmt, split=split, with_lineage=lineage)
    console.print(f"wrote {n} rows of {ref} to {out} ({fmt})", highlight=False)


__all__ = ["app"]
