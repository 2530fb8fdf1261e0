"""``teachloop work``: the expert workforce from the terminal, on the local database.

``work create SPEC.json`` creates a project from a JSON ``ProjectCreate`` (name, task_type,
template, settings, source); ``work projects`` lists them with their progress; ``work items
PROJECT FILE.jsonl`` adds items (one ``ItemIn`` per line; a ``gold_answer`` makes a gold item);
``work expert EMAIL --skill S`` makes a member an expert; ``work experts`` lists them with their
quality; ``work agreement PROJECT`` prints alpha, kappas and the least agreed items; ``work dataset
PROJECT`` records the aggregated results as the next dataset version; ``work publish PROJECT``
publishes an authoring project's accepted tasks as an environment version (every publish-time check
runs; ``--name``, ``--version``); ``work release`` moves pay
whose review window closed to the experts' payable balances; ``work close-period PROJECT PERIOD``
posts the minimum-hourly-rate top-ups. Each takes ``--org`` (name or id; default: the only one).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from teachloop.cli._common import StoreContext, console, handle_errors

app = typer.Typer(help="The expert workforce: projects, items, experts, agreement, datasets and pay.",
                  no_args_is_help=True)

OrgOpt = typer.Option(None, "--org", help="Organisation name or id (default: the only one).")


def _read_json(path: Path) -> object:
    from teachloop.core.errors import InvalidInput

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path} does not exist", param="file") from None
    except json.JSONDecodeError as err:
        raise InvalidInput(f"{path} is not JSON: {err}", param="file") from None


@app.command("create")
def create(spec: Path = typer.Argument(..., help="A JSON file: {name, task_type, template, settings, source}."),
           org: str | None = OrgOpt) -> None:
    """Create a project (and its first items from its source)."""
    from teachloop.core.work import ProjectCreate
    from teachloop.work import projects

    with handle_errors(), StoreContext(org) as ctx:
        body = ProjectCreate.model_validate(_read_json(spec))
        with ctx.database.session() as s:
            out = projects.project_out(s, projects.create_project(s, ctx.org_id, body, actor="cli"))
    console.print(f"project [bold]{out.name}[/] ({out.id}): {out.task_type.value}, {out.items} items")


@app.command("projects")
def list_projects(org: str | None = OrgOpt) -> None:
    """List the organisation's projects with their progress."""
    from teachloop.work import projects

    with handle_errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        rows = [projects.project_out(s, p) for p in projects.list_projects(s, ctx.org_id)]
    table = Table("name", "type", "items", "gold", "complete", "quorum", "template")
    for p in rows:
        table.add_row(p.name, p.task_type.value, str(p.items), str(p.gold_items), str(p.complete_items),
                      str(p.settings.quorum), f"v{p.template_version}")
    console.print(table)


@app.command("items")
def add_items(project: str = typer.Argument(..., help="Project name or id."),
              file: Path = typer.Argument(..., help="JSONL: one item per line (prompt, reply, candidates, "
                                                    "suggestion, context, gold_answer)."),
              org: str | None = OrgOpt) -> None:
    """Add items to a project (all validated before any is written)."""
    from teachloop.core.errors import InvalidInput
    from teachloop.core.work import ItemIn
    from teachloop.work import projects

    with handle_errors(), StoreContext(org) as ctx:
        try:
            lines = [ln for ln in file.read_text().splitlines() if ln.strip()]
            items = [ItemIn.model_validate(json.loads(ln)) for ln in lines]
        except FileNotFoundError:
            raise InvalidInput(f"{file} does not exist", param="file") from None
        except (json.JSONDecodeError, ValueError) as err:
            raise InvalidInput(f"{file}: {err}", param="file") from None
        with ctx.database.session() as s:
            rows = projects.add_items(s, ctx.org_id, project, items, actor="cli")
    console.print(f"added {len(rows)} items ({sum(r.is_gold for r in rows)} gold)")


@app.command("expert")
def add_expert(email: str = typer.Argument(..., help="E-mail of a member of the organisation."),
               skill: list[str] = typer.Option([], "--skill", help="A skill (repeatable)."),
               handle: str = typer.Option("", "--handle", help="Display handle."),
               org: str | None = OrgOpt) -> None:
    """Make a member of the organisation an expert (or set their skills)."""
    from teachloop.core.errors import NotFound
    from teachloop.core.work import ExpertCreate
    from teachloop.store import Tenancy
    from teachloop.work import workforce

    with handle_errors(), StoreContext(org) as ctx, ctx.database.session() as s:
        user = Tenancy(s).find_user(email.strip().lower())
        if user is None:
            raise NotFound(f"no user {email!r}; invite them first", param="email")
        row = workforce.add_expert(s, ctx.org_id, ExpertCreate(user_id=user.id, handle=handle, skills=skill),
                                   actor="cli")
        console.print(f"expert {row.handle} ({user.id}): skills {', '.join(row.skills) or 'none'}")


@app.command("experts")
def list_experts(org: str | None = OrgOpt) -> None:
    """List the experts with their gold accuracy and status."""
    from teachloop.work import review, workforce

    with handle_errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        rows = [(e, review.quality(s, ctx.org_id, e.user_id)) for e in workforce.list_experts(s, ctx.org_id)]
    table = Table("handle", "gold", "wilson lower", "accepted", "rejected", "status")
    table.add_column("user", no_wrap=True, min_width=30)  # ids are copied from here: never cut
    for e, q in rows:
        wl = "-" if q.wilson_lower is None else f"{q.wilson_lower:.2f}"
        table.add_row(e.handle, f"{q.gold_correct}/{q.gold_answers}", wl, str(q.accepted),
                      str(q.rejected), q.status + (f": {q.pause_reason}" if q.pause_reason else ""), e.user_id)
    console.print(table)


@app.command("agreement")
def agreement(project: str = typer.Argument(..., help="Project name or id."), org: str | None = OrgOpt) -> None:
    """Print Krippendorff's alpha, the pairwise kappas and the least agreed items."""
    from teachloop.work import results

    with handle_errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        out = results.agreement(s, ctx.org_id, project)
    alpha = "n/a" if out.alpha is None else f"{out.alpha:.3f}"
    console.print(f"Krippendorff's alpha ({out.level}): {alpha}; {len(out.items)} items")
    for k in out.kappas:
        console.print(f"  kappa {k.expert_a} / {k.expert_b}: {'n/a' if k.kappa is None else f'{k.kappa:.3f}'} "
                      f"over {k.items} items")
    for item in sorted(out.items, key=lambda i: i.confidence)[:10]:
        console.print(f"  {item.item_id}: {item.label!r} confidence {item.confidence:.2f}")


@app.command("dataset")
def dataset(project: str = typer.Argument(..., help="Project name or id."), org: str | None = OrgOpt) -> None:
    """Record the project's aggregated results as the next version of its dataset."""
    from teachloop.work import results

    with handle_errors(), StoreContext(org) as ctx:
        out = results.build_dataset(ctx.database, ctx.blobs, ctx.org_id, project, actor="cli")
    if out.dataset is None:
        console.print(f"no result reached the confidence threshold ({out.skipped_low_confidence} below it)")
    else:
        console.print(f"{out.dataset}: {out.rows} {out.kind} rows ({'new' if out.created else 'unchanged'}); "
                      f"{out.skipped_low_confidence} results below the confidence threshold")


@app.command("publish")
def publish_env(project: str = typer.Argument(..., help="An authoring project's name or id."),
                name: str | None = typer.Option(None, "--name", help="Environment name (default <project>-tasks)."),
                version: str | None = typer.Option(None, "--version", help="Semver (default: the next minor)."),
                org: str | None = OrgOpt) -> None:
    """Publish the accepted authored tasks as an environment version through the environment hub."""
    import asyncio

    from teachloop.core.work import EnvPublish
    from teachloop.work.publish import publish_environment

    with handle_errors(), StoreContext(org) as ctx:
        body = EnvPublish(name=name, version=version)
        out = asyncio.run(publish_environment(ctx.database, ctx.blobs, ctx.org_id, project, body, actor="cli"))
    state = "published" if out.created else "unchanged, already published"
    console.print(f"{out.environment} ({state}): {out.tasks} tasks by {len(out.contributors)} experts, "
                  f"{out.skipped} answers left out; checks passed: {', '.join(out.checks)}")


@app.command("release")
def release(org: str | None = OrgOpt) -> None:
    """Move the pay of answers whose review window closed to the experts' payable balances."""
    from teachloop.work import pay

    with handle_errors(), StoreContext(org) as ctx, ctx.database.session() as s:
        done = pay.release_due(s, ctx.org_id)
    console.print(f"released the pay of {len(done)} answers")


@app.command("close-period")
def close_period(project: str = typer.Argument(..., help="Project name or id."),
                 period: str = typer.Argument(..., help="A name for the period, e.g. 2026-12-W1."),
                 org: str | None = OrgOpt) -> None:
    """Close a pay period now: top experts up to the project's minimum hourly rate."""
    from teachloop.core.money import format_minor
    from teachloop.work import pay, projects

    with handle_errors(), StoreContext(org) as ctx, ctx.database.session() as s:
        row = projects.get_project(s, ctx.org_id, project)
        closed = pay.close_period(s, ctx.org_id, row, period, actor="cli")
        currency = projects.settings_of(row).currency
        topups = dict(closed.topups)
    console.print(f"period {period} closed; {len(topups)} top-ups")
    for user, amount in sorted(topups.items()):
        console.print(f"  {user}: {format_minor(int(amount), currency)}")


__all__ = ["app"]
