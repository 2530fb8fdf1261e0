"""``teachloop env``: write, check, evaluate and publish RL environments.

Local commands (``new``, ``check``, ``eval`` without storing) need no database.
Hub commands (``publish``, ``list``, ``info NAME@VERSION``, ``yank``) and stored
eval results use the configured database and blob store (``teachloop admin
init`` first) -- or, with ``--remote URL`` (``$TEACHLOOP_URL``), a teachloop
server through ``teachloop.Client`` (``list``, ``info``, ``publish``, ``yank``;
``eval --remote`` queues the evaluation on the server's worker and waits for
it). Publishing and yanking are ``catalog.environments``', the same functions
``POST /api/envs`` calls. Every environment that is evaluated or published is
resolved to a digest, printed and recorded, never to a floating "latest". Heavy
imports (SQLAlchemy, the engine, environments) happen inside commands, so
``--help`` is fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from teachloop.cli._common import (
    StoreContext,
    connect_database,
    console,
    err_console,
    handle_errors,
    pick_org,
    remote_client,
    remote_option,
    settings,
)
from teachloop.core.errors import ConfigurationError, InvalidInput, ServiceUnavailable, TeachloopError

if TYPE_CHECKING:
    from teachloop.core.rl import ChatCompleter
    from teachloop.envs import CheckReport, Environment, EvalReport
    from teachloop.store import BlobStore

app = typer.Typer(help="Write, check, evaluate and publish RL environments.", no_args_is_help=True)

_ORG_HELP = "Organisation name or id (default: the only organisation)."
ACTOR = "cli"


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """``handle_errors()`` with messages shown literally (no rich markup)."""
    with handle_errors():  # _common.fail escapes rich markup itself
        yield


# -- resolution ------------------------------------------------------------------------------------


def _is_hub_ref(ref: str) -> bool:
    from teachloop.catalog.envref import is_hub_ref

    return is_hub_ref(ref)


#: An environment ready to run and what pins it (``train.envref.ResolvedEnv``: env, ref, name, version, digest).
Resolved = Any


def local_digest(ref: str, env: Environment) -> str:
    """The content digest of a local environment the user named (see ``train.envref.local_digest``)."""
    from teachloop.catalog.envref import local_digest as digest

    return digest(ref, env, trusted=True)


def resolve(ref: str, org: str | None, **kwargs: Any) -> Resolved:
    """A local reference (name, path, rg:, vf:, module:attr) or a published NAME@VERSION, pinned by digest.

    The reference is the local user's own, so it is trusted (paths and ``module:attr`` load). A yanked
    version is refused, as training refuses it (``env info``/``env check`` still inspect it).
    """
    from teachloop.catalog.envref import is_hub_ref, resolve_env

    if not is_hub_ref(ref):
        return resolve_env(ref, trusted=True, **kwargs)
    with hub(org) as h:
        return resolve_env(ref, trusted=True, session=h.session, blobs=h.blobs, org_id=h.org_id,
                           cache=settings().home / "envs", **kwargs)


def _fetch_published(ref: str, org: str | None) -> Path:
    """The verified package folder of the published version ``ref`` names."""
    from teachloop.catalog.envref import fetch_package
    from teachloop.store.repos.environments import EnvironmentRegistry

    with hub(org) as h:
        row = EnvironmentRegistry(h.session).resolve(h.org_id, ref)
        folder = fetch_package(h.blobs, row.blob_key, row.digest, settings().home / "envs")
        if row.yanked:
            err_console.print(f"[yellow]warning:[/] {escape(row.ref)} is yanked: {escape(row.yank_reason or '')}")
    return folder


# -- the store --------------------------------------------------------------------------------------


@dataclass
class Hub:
    """An open write session on the configured database, the blob store and the chosen organisation."""

    session: Any
    blobs: BlobStore
    org_id: str
    org_name: str


@contextlib.contextmanager
def hub(org: str | None) -> Iterator[Hub]:
    """The hub for one command: commits when the block succeeds, rolls back otherwise."""
    from teachloop.store import BlobStore, Tenancy

    cfg = settings()
    db = connect_database()
    try:
        with db.session() as session:
            chosen = pick_org(Tenancy(session), org)
            yield Hub(session, BlobStore(cfg.blob_url), chosen.id, chosen.name)
    finally:
        db.close()


def archive(root: Path) -> bytes:
    """A reproducible .tar.gz of a package folder (``catalog.environments.archive``)."""
    from teachloop.catalog.environments import archive as archive_package

    return archive_package(root)


# -- rendering --------------------------------------------------------------------------------------


def _print_check(report: CheckReport) -> None:
    table = Table(title=f"env check {report.target}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    colour = {"pass": "green", "fail": "red", "skip": "dim"}
    for r in report.results:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", escape(r.message))
    console.print(table)


def _print_eval(report: EvalReport, digest: str) -> None:
    ci = "n/a (one task)" if report.ci_low is None else f"[{report.ci_low:.3f}, {report.ci_high:.3f}]"
    console.print(f"[bold]{escape(report.env)}[/] ({digest[:19]}…) on {escape(report.model)}: mean reward "
                  f"[bold]{report.mean:.3f}[/], 95% CI {ci}  ({report.n_tasks} tasks × {report.group_size}, "
                  f"{report.seconds:.1f}s)", highlight=False, soft_wrap=True)
    console.print(f"[dim]interval: {report.ci_method}[/]", highlight=False)
    if report.failures:
        table = Table(title=f"failed episodes: {sum(report.failure_counts.values())}", title_justify="left")
        for col in ("task", "kind", "count", "message"):
            table.add_column(col, overflow="fold")
        for f in report.failures[:50]:
            table.add_row(f.task_id, f.kind, str(f.count), escape(f.message[:300]))
        console.print(table)


# -- commands ---------------------------------------------------------------------------------------


@app.command("new")
def new(
    name: str = typer.Argument(..., help="Environment name: lower case letters, digits, '-' or '_'."),
    directory: Path | None = typer.Option(None, "--dir", help="Where to create the package (default: ./NAME)."),
) -> None:
    """Scaffold an environment package: pyproject with the entry point, the env module, a test."""
    with errors():
        from teachloop.envs import scaffold

        root = scaffold(name, directory)
        console.print(f"[green]created[/] {root}: edit src/{name.replace('-', '_')}/env.py, then "
                      f"`teachloop env check {root}`", highlight=False)


@app.command("check")
def check(
    target: str = typer.Argument(..., help="A package folder, an environment name, rg:..., vf:... or a grader JSON."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tasks checked."),
    n: int = typer.Option(8, "-n", help="Tasks to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Run the publish-time checks and name each one that fails (exit status 1 if any does)."""
    with errors():
        from teachloop.envs import check_environment

        if _is_hub_ref(target):  # re-check a published version: its archive, fetched and verified
            target = str(_fetch_published(target, org))
        report = asyncio.run(check_environment(target, n_tasks=n, seed=seed))
        if as_json:
            typer.echo(json.dumps(report.to_dict()))
        else:
            _print_check(report)
        if not report.ok:
            err_console.print(f"[bold red]failed:[/] {', '.join(r.name for r in report.failed)}", highlight=False)
            raise typer.Exit(1)


def _engine_completer(model: str | None, adapter: str | None) -> ChatCompleter:
    try:
        from teachloop.engine import EngineCompleter, load_engine
        from teachloop.render import renderer_for
    except ImportError as err:
        raise ConfigurationError(f"the engine is not available here ({err}); pass --base-url URL") from None
    engine = load_engine(settings(), model)
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        raise ConfigurationError("the configured engine has no tokenizer (TEACHLOOP_ENGINE=fake?); pass --base-url URL")
    name = None
    if adapter:
        if not Path(adapter).is_dir():
            raise InvalidInput(f"--adapter must be a saved adapter folder, got {adapter!r}", param="adapter")
        name = engine.load_adapter("eval", Path(adapter)).name
    return EngineCompleter(engine, renderer_for(tokenizer), adapter=name)


@app.command("eval")
def eval_(
    target: str = typer.Argument(..., help="NAME[@VERSION], a package folder, rg:..., vf:... or a grader JSON."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model: the engine's base model, or the name sent to --base-url."),
    adapter: str | None = typer.Option(None, "--adapter", "-a", help="A saved LoRA adapter folder (engine only); "
                                       "with --remote, an adapter version on the server (NAME@N or NAME)."),
    n: int = typer.Option(50, "-n", min=1, help="Tasks to run."),
    group_size: int = typer.Option(1, "--group-size", "-g", min=1, help="Episodes per task."),
    base_url: str | None = typer.Option(None, "--base-url", help="An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
    api_key: str | None = typer.Option(None, "--api-key", envvar=["TEACHLOOP_API_KEY", "OPENAI_API_KEY"],
                                       help="Bearer key for --base-url.", show_envvar=True),
    seed: int = typer.Option(0, "--seed", help="Task seed."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Default: the environment's."),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds per episode."),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="Task groups run at once."),
    judge_base_url: str | None = typer.Option(None, "--judge-base-url", help="Endpoint for model graders in grader JSON."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="Judge model name for --judge-base-url."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    output: Path | None = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    store: bool = typer.Option(True, "--store/--no-store", help="Store the result in the database (if initialised)."),
    remote: str | None = remote_option(),
) -> None:
    """Run N tasks against the engine or an endpoint; print mean reward with a 95% CI and failures; store it.

    When more than half of the episodes fail to get a reply (model errors, timeouts), nothing is stored and
    the exit status is 1: that measures the endpoint, not the environment. With --remote the server's worker
    runs it against the server's engine (TARGET must be a name, NAME@VERSION, rg: or vf:, never a path)
    and stores the result there; this waits for it.
    """
    with errors():
        if remote:
            local_only = {"--base-url": base_url, "--judge-base-url": judge_base_url, "--judge-model": judge_model,
                          "--no-store": None if store else True}
            for flag, value in local_only.items():
                if value is not None:
                    raise InvalidInput(f"{flag} applies to a local evaluation; drop it or --remote (the server's "
                                       "worker uses its own engine and stores the result)",
                                       param=flag.removeprefix("--").replace("-", "_"))
            _eval_remote(remote, target, model=model, adapter=adapter, n=n, group_size=group_size, seed=seed,
                         max_tokens=max_tokens, temperature=temperature, timeout=timeout, output=output)
            return
        from teachloop.envs import OpenAICompleter, evaluate

        if adapter and base_url:
            raise InvalidInput("--adapter loads a LoRA adapter into the local engine; it cannot be combined with "
                               "--base-url (pick the adapter through the endpoint's --model instead)", param="adapter")
        kwargs: dict[str, Any] = {}
        if judge_base_url:
            kwargs["judge"] = OpenAICompleter(judge_base_url, judge_model or "judge", api_key=api_key)
        resolved = resolve(target, org, **kwargs)
        env = resolved.env
        model_name = model or settings().model
        completer = (OpenAICompleter(base_url, model_name, api_key=api_key) if base_url
                     else _engine_completer(model, adapter))
        params = env.sampling.model_copy(update={"temperature": temperature,
                                                  **({"max_tokens": max_tokens} if max_tokens else {})})
        label = f"{base_url} {model_name}" if base_url else model_name + (f" + {adapter}" if adapter else "")
        with console.status(f"running {n} × {group_size} episodes of {resolved.ref}…"):
            report = asyncio.run(evaluate(env, completer, n=n, group_size=group_size, seed=seed, params=params,
                                          timeout_s=timeout, max_concurrent_groups=concurrency,
                                          label=resolved.ref, model=label))
        report = report.model_copy(update={"metadata": {**report.metadata, "env_digest": resolved.digest}})
        _print_eval(report, resolved.digest)
        if output:
            output.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
        unreachable = unreachable_reason(report)
        if unreachable:
            raise ServiceUnavailable(f"not stored: {unreachable}")
        if store:
            _store_eval(resolved, report, org)


def _eval_remote(url: str, target: str, *, output: Path | None, timeout: float, **options: Any) -> None:
    """Queue the evaluation on the server at ``url``, wait for it, print (and with ``output`` write) the result."""
    from pydantic import ValidationError

    with remote_client(url) as client:
        request = {k: v for k, v in options.items() if v is not None}
        try:
            started = client.start_eval(target, **request)
        except ValidationError as err:  # checked here, before anything is sent
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "env"
            raise InvalidInput(f"{where}: {first['msg']}", param=where) from None
        with console.status(f"evaluation {started.id} of {target} queued on {url}…"):
            done = client.wait_eval(started.id, timeout_s=max(timeout * options["n"], 600.0))
    if output:
        output.write_text(json.dumps(done.model_dump(mode="json"), indent=2))
    if done.status != "succeeded" or done.result is None:
        raise TeachloopError(f"evaluation {done.id} {done.status}: {done.error or 'no result'}")
    r = done.result
    ci = "n/a (one task)" if r.ci_low is None or r.ci_high is None else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
    ref = f"{r.env_name}@{r.env_version}" if r.env_version else r.env_name
    console.print(f"[bold]{escape(ref)}[/] ({r.env_digest[:19]}…) on {escape(r.model)}: mean reward "
                  f"[bold]{r.mean:.3f}[/], 95% CI {ci}  ({r.n_tasks} tasks, {r.n_episodes} episodes)",
                  highlight=False, soft_wrap=True)
    console.print(f"[dim]stored as {r.id} on {escape(url)} (evaluation {done.id})[/]", highlight=False)


#: Failure kinds that say the model never answered (the endpoint or engine, not the environment).
NO_REPLY_KINDS = ("model", "timeout")


def unreachable_reason(report: EvalReport) -> str | None:
    """Why ``report`` measures a broken model/endpoint rather than the environment (None when it does not):
    more than half of its episodes failed with kind model or timeout."""
    failed = sum(report.failure_counts.get(k, 0) for k in NO_REPLY_KINDS)
    if report.n_episodes == 0 or failed * 2 <= report.n_episodes:
        return None
    first = next((f for f in report.failures if f.kind in NO_REPLY_KINDS), None)
    example = f"; e.g. {first.kind}: {first.message[:200]}" if first else ""
    return (f"{failed} of {report.n_episodes} episodes got no reply from the model (kinds "
            f"{', '.join(NO_REPLY_KINDS)}){example}; is the endpoint or engine up?")


def _store_eval(resolved: Resolved, report: EvalReport, org: str | None) -> None:
    from teachloop.store.repos.environments import EnvironmentRegistry

    try:
        with hub(org) as h:
            row = EnvironmentRegistry(h.session).record_eval(
                h.org_id, env_name=resolved.ref if resolved.version is None else resolved.name,
                env_version=resolved.version, env_digest=resolved.digest, model=report.model,
                report=report.model_dump(mode="json"), actor=ACTOR)
            console.print(f"[dim]stored as {row.id} in organisation {escape(h.org_name)}[/]", highlight=False)
    except (ConfigurationError, ServiceUnavailable) as err:
        err_console.print(f"[yellow]not stored:[/] {escape(err.message)}", highlight=False)


@app.command("publish")
def publish(
    path: Path = typer.Argument(Path("."), help="The package folder (default: here)."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """Check, archive and store an immutable version (semver + content hash) owned by your organisation.

    With --remote the package is archived here and checked and stored by the server (``POST /api/envs``).
    """
    with errors():
        from teachloop.catalog.environments import ChecksFailed, publish_package, require_package

        require_package(path, param="path")
        if remote:
            with remote_client(remote) as client:
                out = client.publish_env(path)
            _print_published(out.version.ref, out.version.digest, out.created, remote)
            return
        with StoreContext(org) as store:
            try:
                result = asyncio.run(publish_package(store.database, store.blobs, store.org_id, path, actor=ACTOR))
            except ChecksFailed as err:
                if err.report is not None:
                    _print_check(err.report)
                raise
            _print_published(result.version.ref, result.version.digest, result.created, store.org_name)


def _print_published(ref: str, digest: str, created: bool, where: str) -> None:
    if created:
        console.print(f"[green]published[/] {ref} ({digest}) in {escape(where)}", highlight=False)
    else:
        console.print(f"already published: {ref} with the same content ({digest}); nothing changed", highlight=False)


@app.command("list")
def list_(
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of tables."),
    remote: str | None = remote_option(),
) -> None:
    """List installed environments and your organisation's published versions (with --remote: the server's)."""
    with errors():
        published: list[Any] = []
        note = ""
        local: dict[str, Any]
        if remote:
            with remote_client(remote) as client:
                listed = client.list_envs()
            local, published = {e.name: e for e in listed.installed}, list(listed.published)
        else:
            from teachloop.envs import available

            local = dict(available())
            try:
                from teachloop.store.repos.environments import EnvironmentRegistry

                with hub(org) as h:
                    published = EnvironmentRegistry(h.session).versions(h.org_id)
            except (ConfigurationError, ServiceUnavailable) as err:
                note = err.message
        if as_json:
            for e in local.values():
                typer.echo(json.dumps({"name": e.name, "source": e.source, "version": e.version, "target": e.target}))
            for r in published:
                typer.echo(json.dumps({"name": r.name, "version": r.version, "digest": r.digest, "yanked": r.yanked}))
            return
        table = Table(title="installed environments" + (f" on {remote}" if remote else ""), title_justify="left")
        for col in ("name", "version", "source", "target"):
            table.add_column(col, overflow="fold")
        for e in local.values():
            table.add_row(e.name, e.version or "", e.source, e.target)
        console.print(table)
        if note:
            console.print(f"[dim]published versions not shown: {escape(note)}[/]", highlight=False)
            return
        table = Table(title="published versions", title_justify="left")
        for col in ("name", "version", "digest", "status", "published"):
            table.add_column(col, overflow="fold")
        for r in published:
            status = "[red]yanked[/]" if r.yanked else "[green]live[/]"
            table.add_row(r.name, r.version, r.digest[:19] + "…", status, r.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table if published else "[dim]no published versions[/]")


@app.command("info")
def info(
    ref: str = typer.Argument(..., help="NAME[@VERSION] (published) or a local reference."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """Show an environment: its manifest, digest and publish-time checks, and a sample task (locally)."""
    with errors():
        if remote:
            with remote_client(remote) as client:
                console.print_json(client.env_info(ref).model_dump_json())
            return
        if _is_hub_ref(ref):
            from teachloop.store.repos.environments import EnvironmentRegistry

            with hub(org) as h:
                row = EnvironmentRegistry(h.session).resolve(h.org_id, ref)
                facts = {"ref": row.ref, "digest": row.digest, "yanked": row.yanked, "yank_reason": row.yank_reason,
                         "published_by": row.published_by, "created_at": row.created_at.isoformat(),
                         "manifest": row.manifest, "checks": row.checks}
                evals = [{"model": e.model, "mean": e.mean, "ci": [e.ci_low, e.ci_high], "n_tasks": e.n_tasks,
                          "at": e.created_at.isoformat()}
                         for e in EnvironmentRegistry(h.session).evals(h.org_id, row.name, limit=5)
                         if e.env_digest == row.digest]
            console.print_json(json.dumps({**facts, "recent_evals": evals}))
            return
        resolved = resolve(ref, org)
        task = resolved.env.take(1)
        facts = {**resolved.env.describe(), "ref": ref, "digest": resolved.digest,
                 "sample_task": task[0].model_dump(mode="json") if task else None}
        console.print_json(json.dumps(facts, default=str))


@app.command("yank")
def yank(
    ref: str = typer.Argument(..., help="NAME@VERSION to yank."),
    reason: str | None = typer.Option(None, "--reason", help="Why (shown to anyone who resolves it)."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """Yank a published version: training and eval refuse it (even named exactly); info and check still inspect it."""
    with errors():
        if remote:
            with remote_client(remote) as client:
                out = client.yank_env(ref, reason)
            console.print(f"[yellow]yanked[/] {out.ref} ({out.digest}) on {escape(remote)}", highlight=False)
            return
        from teachloop.catalog.environments import yank_version

        with StoreContext(org) as store:
            row = yank_version(store.database, store.org_id, ref, reason=reason, actor=ACTOR)
        console.print(f"[yellow]yanked[/] {row.ref} ({row.digest})", highlight=False)


__all__ = ["NO_REPLY_KINDS", "app", "archive", "local_digest", "resolve", "unreachable_reason"]
