"""``teachloop data``: import, list, show, export and grant dataset snapshots (immutable, with row-level lineage).

- ``import FILE --name N --license SPDX`` -- a JSONL file as the next
  version of dataset ``N`` owned by the organisation (``--format openai``:
  chat rows, prompt rows with an ``answer``, or OpenAI preference pairs;
  ``dpo``: TRL pairs). Every row's lineage says ``import`` and the license.
  ``--kind labels`` imports expert labels: every row carries ``expert_id``,
  recorded as the row's expert (the loop's ``labels`` source reads them).
  A bad row is refused with its line and field named; nothing is written.
- ``grant NAME --to ORG --license SPDX [--version N]`` lets another
  organisation use the dataset (a loop source ``ORG/NAME[@N]``);
  ``grants [NAME]`` lists them, ``revoke GRANT_ID`` ends one.
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

app = typer.Typer(help="Dataset snapshots: import, list, show, export (OpenAI JSONL, DPO pairs, Hugging Face), "
                       "grant to another organisation.", no_args_is_help=True)

_ORG_HELP = "Organisation name or id (default: the only organisation)."
ACTOR = "cli"


@app.command("list")
def list_cmd(
    name: str = typer.Option(None, "--name", help="Only versions of this dataset."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per snapshot."),
) -> None:
    """Dataset snapshots, newest first."""
    from teachloop.catalog.export import dataset_json
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
    from teachloop.catalog.export import dataset_json, row_json
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
    from teachloop.catalog.export import export_dataset

    with errors(), StoreContext(org) as ctx:
        n = export_dataset(ctx.database, ctx.org_id, ref, out, fmt=fmt, split=split, with_lineage=lineage)
    console.print(f"wrote {n} rows of {ref} to {out} ({fmt})", highlight=False)


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="JSONL file, one row per line."),
    name: str = typer.Option(..., "--name", help="Dataset name (a new version when it exists)."),
    license: str = typer.Option(..., "--license", help="SPDX id (e.g. CC-BY-4.0) or LicenseRef-... of the rows."),
    fmt: str = typer.Option("openai", "--format", help="openai | dpo"),
    kind: str = typer.Option("rows", "--kind", help="rows (owned data) | labels (expert labels: expert_id per row)"),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Import a JSONL file as an immutable snapshot the organisation owns (or as expert labels)."""
    from teachloop.catalog.imports import import_dataset, read_jsonl
    from teachloop.core.errors import InvalidInput
    from teachloop.core.files import bytes_digest

    with errors():
        try:
            data = file.read_bytes()
        except OSError as err:
            raise InvalidInput(f"cannot read {file}: {err.strerror or err}", param="file") from None
        records = read_jsonl(data)
        with StoreContext(org) as ctx:
            dataset, created = import_dataset(ctx.database, ctx.blobs, ctx.org_id, records, name=name,
                                              license=license, fmt=fmt, kind=kind, filename=file.name,
                                              raw_digest=bytes_digest(data), actor=ACTOR)
    what = "imported" if created else "already recorded as"
    console.print(f"{what} {dataset.ref}: {dataset.row_count} {dataset.kind} rows ({dataset.origin}), license "
                  f"{', '.join(dataset.licenses)}, digest {dataset.digest}", highlight=False)


@app.command("grant")
def grant_cmd(
    name: str = typer.Argument(..., help="Dataset name (of this organisation)."),
    to: str = typer.Option(..., "--to", help="The organisation (name or id) allowed to use it."),
    license: str = typer.Option(..., "--license", help="SPDX id or LicenseRef-... it is used under."),
    version: int = typer.Option(None, "--version", min=1, help="Only this version (default: every version)."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Let another organisation use a dataset (its loops name it OWNER/NAME[@N])."""
    from teachloop.catalog.imports import check_license
    from teachloop.store import Tenancy
    from teachloop.store.repos.datasets import Datasets

    with errors(), StoreContext(org) as ctx, ctx.database.session() as s:
        grantee = Tenancy(s).find_org(to)
        row = Datasets(s).grant(ctx.org_id, name, grantee.id, license=check_license(license), version=version,
                                actor=ACTOR)
        out = f"granted {row.id}: {grantee.name} may use {ctx.org_name}/{name}" \
              f"{'' if version is None else f'@{version}'} under {row.license}"
    console.print(out, highlight=False)


@app.command("grants")
def grants_cmd(
    name: str = typer.Argument(None, help="Only grants of this dataset."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per grant."),
) -> None:
    """The grants this organisation gave."""
    from teachloop.catalog.export import grant_json
    from teachloop.store.repos.datasets import Datasets

    with errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        rows = [grant_json(g) for g in Datasets(s).grants(ctx.org_id, name)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table()
    for col in ("id", "dataset", "version", "grantee", "license", "created", "revoked"):
        table.add_column(col, overflow="fold")
    for g in rows:
        table.add_row(g["id"], g["dataset"], str(g["version"] or "all"), g["grantee_org_id"], g["license"],
                      g["created_at"][:16], (g["revoked_at"] or "")[:16])
    console.print(table)


@app.command("revoke")
def revoke_cmd(
    grant_id: str = typer.Argument(..., help="The grant's id (dsg_...)."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """End a grant (the grantee's loops that name the dataset pause at their next tick)."""
    from teachloop.store.repos.datasets import Datasets

    with errors(), StoreContext(org) as ctx, ctx.database.session() as s:
        row = Datasets(s).revoke(ctx.org_id, grant_id, actor=ACTOR)
        out = f"revoked {row.id} ({row.dataset_name})"
    console.print(out, highlight=False)


__all__ = ["app"]
