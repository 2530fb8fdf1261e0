"""``teachloop deploy``: adapter versions and deployments (what each model name serves).

These commands talk to the database and blob store directly
(``TEACHLOOP_DATABASE_URL``, ``TEACHLOOP_BLOB_URL``), like ``teachloop admin``.
A running server reads deployments on every request, so a change applies to
the next request without a restart (and its adapter is preloaded within a
couple of seconds); requests already running finish on the version they started
with. The REST API (``/api/deployments``) does the same over HTTP.

``deploy create NAME --run RUN_ID`` serves a completed training run's final
adapter in one step.

``--upstream-url URL --upstream-model MODEL`` makes the primary arm an upstream
OpenAI-compatible endpoint (issue 17): its API key is read from the environment
variable ``--upstream-key-env`` names (default ``OPENAI_API_KEY``; never from
the command line, so it stays out of shell history), probed, and stored
encrypted with ``TEACHLOOP_UPSTREAM_KEY``. ``--price MODEL=PROMPT/COMPLETION``
(minor units per million tokens) prices a model's tokens.

An adapter reference (``--adapter``, ``--canary``) is ``NAME@N``, ``NAME`` (its
newest version), an ``av_...`` id, or a local PEFT folder, which is first
pushed as the next version of the adapter named like the deployment.

``--remote URL`` (or ``TEACHLOOP_URL``) runs ``create``, ``update``,
``rollback``, ``list``, ``history`` and ``adapters`` against a server's REST API
instead, with ``$TEACHLOOP_API_KEY`` (whose organisation it is), taking the same
options; an upstream's key is read here and sent to the server in the request
body, so use https. What the API cannot take is refused, naming the option,
before anything is sent: ``--org`` and a local folder as an adapter reference
(``deploy push`` has no remote mode). Remote ``update --canary-percent`` alone
re-sends the current canary with the new share (the API replaces a canary
whole), so it is refused when that canary is an upstream, whose key the server
never returns. Both modes print the deployment as the API shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from teachloop.cli._common import StoreContext, console, remote_client, remote_option
from teachloop.cli.admin import errors
from teachloop.core.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from teachloop.client import Client
    from teachloop.core.settings import Settings
    from teachloop.core.upstream import UpstreamSpec
    from teachloop.store import BlobStore
    from teachloop.store.schema import AdapterVersion

app = typer.Typer(help="Deployments: which base model and adapter version each model name serves.", no_args_is_help=True)

_ORG_HELP = "Organisation name or id (default: the only organisation; with --remote: the API key's)."
_REF_HELP = "NAME@N, NAME (newest version), an av_... id, or a PEFT folder to push first (not with --remote)."
ACTOR = "cli"


def _version(session: Session, blobs: BlobStore, org_id: str, ref: str, name: str, base: str) -> AdapterVersion:
    """The adapter version ``ref`` names; a folder is pushed as the next version of adapter ``name``."""
    from teachloop.catalog.adapters import publish_adapter
    from teachloop.store.repos.deployments import AdapterVersions

    folder = Path(ref).expanduser()
    if folder.is_dir():
        version, created = publish_adapter(
            session, blobs, org_id, name=name, folder=folder, base_model=base, actor=ACTOR
        )
        console.print(f"{'pushed' if created else 'already stored:'} adapter {version.ref} ({version.digest[:19]}…)",
                      highlight=False)
        return version
    return AdapterVersions(session).resolve(org_id, ref)


def _upstream_spec(url: str, model: str | None, key_env: str, timeout: float, retries: int) -> UpstreamSpec:
    """An upstream arm's configuration, its key read from ``$key_env``; errors name the field (never the key)."""
    import os

    from pydantic import ValidationError

    from teachloop.core.upstream import UpstreamSpec

    if not model:
        raise InvalidInput("--upstream-url needs --upstream-model", param="upstream.model")
    try:
        return UpstreamSpec(base_url=url, model=model, api_key=os.environ.get(key_env, ""),  # type: ignore[arg-type]
                            timeout_s=timeout, max_retries=retries)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        hint = f" (read from ${key_env})" if field == "api_key" else ""
        raise InvalidInput(f"upstream.{field}: {first['msg']}{hint}", param=f"upstream.{field}") from None


def _upstream(session: Session, settings: Settings, org_id: str, spec: UpstreamSpec, check: bool) -> str:
    """Probe (with ``check``) and store an upstream arm, its key encrypted; its id."""
    from teachloop.serve.upstream import KeyBox, register_upstream

    keys = KeyBox(settings.upstream_key.get_secret_value())
    return register_upstream(session, keys, org_id, spec, actor=ACTOR, check=check).id


def _prices(prices: list[str]) -> dict[str, dict[str, int | str]]:
    """``MODEL=PROMPT/COMPLETION`` (minor units per million tokens) options as a deployment's prices."""
    out: dict[str, dict[str, int | str]] = {}
    for item in prices:
        model, _, pair = item.partition("=")
        prompt, _, completion = pair.partition("/")
        if not model or not prompt.isdigit() or not completion.isdigit():
            raise InvalidInput(f"--price takes MODEL=PROMPT/COMPLETION in minor units per million tokens, got {item!r}",
                               param="prices")
        out[model] = {"prompt_per_1m": int(prompt), "completion_per_1m": int(completion), "currency": "USD"}
    return out


@contextmanager
def _remote(url: str, org: str | None, **refs: str | None) -> Iterator[Client]:
    """A client of the server at ``url``, after refusing what the REST API cannot take: ``--org`` and local
    adapter folders (before anything is sent)."""
    if org is not None:
        raise InvalidInput("--org does not apply with --remote: the organisation is the API key's "
                           "($TEACHLOOP_API_KEY); drop --org", param="org")
    for option, ref in refs.items():
        if ref is not None and Path(ref).expanduser().is_dir():
            raise InvalidInput(f"--{option} {ref}: a local folder cannot be sent with --remote; push it into the "
                               "server's store with `teachloop deploy push` and pass NAME@N", param=option)
    with remote_client(url) as client:
        yield client


_UP_URL = "An upstream OpenAI-compatible base URL as the primary arm (e.g. https://api.openai.com/v1)."
_UP_KEY = "Environment variable holding the upstream's API key (never passed on the command line)."


def _when(iso: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromisoformat(iso).strftime(fmt)


def _arm(adapter: dict[str, Any] | None, upstream: dict[str, Any] | None, empty: str) -> str:
    if upstream is not None:
        return f"upstream {upstream['model']} at {upstream['base_url']}"
    return adapter["ref"] if adapter is not None else empty


def _table(records: list[dict[str, Any]]) -> None:
    """Deployments as the API shows them (``serve.deployments.deployment_json``), local or remote alike."""
    table = Table("name", "base model", "adapter", "canary", "revision", "updated")
    for d in records:
        canary = d.get("canary")
        second = f"{_arm(canary['adapter'], canary.get('upstream'), '?')} @ {canary['percent']}%" if canary else "-"
        table.add_row(d["name"], d["base_model"], _arm(d["adapter"], d.get("upstream"), "(base)"), second,
                      str(d["revision"]), _when(d["updated_at"]))
    console.print(table)


def _show(ctx: StoreContext, *names: str) -> None:
    """The table of the committed deployments ``names`` (all of them without names)."""
    from teachloop.serve.deployments import get_deployment, list_deployments

    if names:
        _table([get_deployment(ctx.database, ctx.org_id, name) for name in names])
    else:
        _table(list_deployments(ctx.database, ctx.org_id))


@app.command("push")
def push(
    name: str = typer.Argument(..., help="Adapter name (versions are numbered 1, 2, ... per name)."),
    folder: Path = typer.Argument(..., help="A PEFT adapter folder (adapter_config.json + weights)."),
    base: str | None = typer.Option(None, "--base", help="Base model it was trained on (default: TEACHLOOP_MODEL)."),
    run: str | None = typer.Option(None, "--run", help="Id of the training run that made it."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Store a PEFT folder as the next version of an adapter (same content: the existing version)."""
    from teachloop.catalog.adapters import publish_adapter

    with errors(), StoreContext(org) as ctx:
        with ctx.database.session() as session:
            version, created = publish_adapter(
                session, ctx.blobs, ctx.org_id, name=name, folder=folder, base_model=base or ctx.settings.model,
                source_run_id=run, actor=ACTOR,
            )
        state = "stored" if created else "already stored as"
        console.print(f"{state} adapter {version.ref} ({version.id}, {version.digest})", highlight=False)


@app.command("adapters")
def adapters(
    name: str | None = typer.Argument(None, help="Only versions of this adapter."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """List adapter versions."""
    with errors():
        if remote:
            with _remote(remote, org) as client:
                rows = client.adapters(name)
        else:
            from teachloop.serve.deployments import list_adapters

            with StoreContext(org) as ctx:
                rows = list_adapters(ctx.database, ctx.org_id, name)
        table = Table("adapter", "id", "digest", "base model", "run", "created")
        for v in rows:
            table.add_row(v["ref"], v["id"], v["digest"][:19] + "…", v["base_model"], v["source_run_id"] or "-",
                          _when(v["created_at"]))
        console.print(table)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="The deployment name clients pass as `model`."),
    base: str | None = typer.Option(None, "--base", help="Base model id (default: TEACHLOOP_MODEL; with --remote: "
                                    "the server's)."),
    adapter: str | None = typer.Option(None, "--adapter", help=f"Adapter to serve: {_REF_HELP} (default: none)."),
    canary: str | None = typer.Option(None, "--canary", help=f"Canary adapter: {_REF_HELP}"),
    canary_percent: int = typer.Option(0, "--canary-percent", min=0, max=100, help="Share of users on the canary."),
    run: str | None = typer.Option(None, "--run", help="Serve a completed training run's final adapter (published "
                                   "as the next version of the adapter named like the deployment)."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
    upstream_url: str | None = typer.Option(None, "--upstream-url", help=_UP_URL),
    upstream_model: str | None = typer.Option(None, "--upstream-model", help="The model to ask upstream."),
    upstream_key_env: str = typer.Option("OPENAI_API_KEY", "--upstream-key-env", help=_UP_KEY),
    upstream_timeout: float = typer.Option(60.0, "--upstream-timeout", help="Seconds to the first byte (and between)."),
    upstream_retries: int = typer.Option(2, "--upstream-retries", min=0, max=5, help="Retries of a failed call."),
    check: bool = typer.Option(True, "--check/--no-check", help="Probe the upstream's model first."),
    price: list[str] = typer.Option([], "--price", help="MODEL=PROMPT/COMPLETION, minor units per 1M tokens."),
) -> None:
    """Create a deployment (``--run RUN_ID`` deploys a training run's adapter in one step)."""
    from teachloop.store.repos.deployments import Deployments, DeploymentState

    with errors():
        if canary_percent and canary is None:
            raise InvalidInput("--canary-percent needs --canary", param="canary_percent")
        if run is not None and adapter is not None:
            raise InvalidInput("give --adapter or --run, not both", param="run")
        if upstream_url is not None and (adapter is not None or run is not None):
            raise InvalidInput("the primary arm is an adapter (or run) or an upstream, not both", param="upstream")
        prices = _prices(price)
        spec = (_upstream_spec(upstream_url, upstream_model, upstream_key_env, upstream_timeout, upstream_retries)
                if upstream_url is not None else None)
        if remote:
            with _remote(remote, org, adapter=adapter, canary=canary) as client:
                out = client.create_deployment(name, base_model=base, adapter=adapter, run=run, canary=canary,
                                               canary_percent=canary_percent, upstream=spec, prices=prices or None,
                                               check_upstream=check)
            if run is not None:
                console.print(f"serving adapter {out['adapter']['ref']} from run {run}", highlight=False)
            _table([out])
            return
        with StoreContext(org) as ctx:
            with ctx.database.session() as session:
                base_model = base or ctx.settings.model
                org_id, blobs = ctx.org_id, ctx.blobs
                primary = _version(session, blobs, org_id, adapter, name, base_model) if adapter else None
                if run is not None:
                    from teachloop.catalog.adapters import publish_run_adapter

                    if Deployments(session).find(org_id, name) is not None:
                        raise Conflict(f"deployment {name!r} already exists; use `deploy update`", param="name")
                    primary, created = publish_run_adapter(session, blobs, org_id, run, name=name, actor=ACTOR)
                    base_model = base or primary.base_model
                    console.print(f"{'published' if created else 'already stored:'} adapter {primary.ref} from run "
                                  f"{run}", highlight=False)
                second = _version(session, blobs, org_id, canary, name, base_model) if canary else None
                state = DeploymentState(base_model, primary.id if primary else None, second.id if second else None,
                                        canary_percent if second else 0, prices=prices)
                if spec is not None:
                    state = replace(state, upstream_id=_upstream(session, ctx.settings, org_id, spec, check))
                Deployments(session).create(org_id, name, state, actor=ACTOR)
            _show(ctx, name)


@app.command("update")
def update(
    name: str = typer.Argument(..., help="The deployment to change."),
    adapter: str | None = typer.Option(None, "--adapter", help=f"New adapter: {_REF_HELP} `base` serves no adapter."),
    canary: str | None = typer.Option(None, "--canary", help=f"New canary: {_REF_HELP} `none` ends the canary."),
    canary_percent: int | None = typer.Option(None, "--canary-percent", min=0, max=100, help="Share on the canary."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
    upstream_url: str | None = typer.Option(None, "--upstream-url", help=_UP_URL + " Replaces the adapter."),
    upstream_model: str | None = typer.Option(None, "--upstream-model", help="The model to ask upstream."),
    upstream_key_env: str = typer.Option("OPENAI_API_KEY", "--upstream-key-env", help=_UP_KEY),
    upstream_timeout: float = typer.Option(60.0, "--upstream-timeout", help="Seconds to the first byte (and between)."),
    upstream_retries: int = typer.Option(2, "--upstream-retries", min=0, max=5, help="Retries of a failed call."),
    check: bool = typer.Option(True, "--check/--no-check", help="Probe the upstream's model first."),
) -> None:
    """Change a deployment's adapter (or upstream) and/or canary (applies to the next request; no restart)."""
    from teachloop.store.repos.deployments import Deployments, DeploymentState

    with errors():
        if upstream_url is not None and adapter is not None:
            raise InvalidInput("give --adapter or --upstream-url, not both", param="upstream")
        if adapter is None and canary is None and canary_percent is None and upstream_url is None:
            raise InvalidInput("nothing to change: pass --adapter, --canary and/or --canary-percent", param="adapter")
        if canary == "none" and canary_percent is not None:
            raise InvalidInput("--canary none ends the canary; drop --canary-percent", param="canary_percent")
        spec = (_upstream_spec(upstream_url, upstream_model, upstream_key_env, upstream_timeout, upstream_retries)
                if upstream_url is not None else None)
        if remote:
            with _remote(remote, org, adapter=adapter, canary=canary) as client:
                _update_remote(client, name, adapter=adapter, canary=canary, canary_percent=canary_percent,
                               spec=spec, check=check)
            return
        with StoreContext(org) as ctx:
            with ctx.database.session() as session:
                org_id, blobs = ctx.org_id, ctx.blobs
                repo = Deployments(session)
                state = DeploymentState.of(repo.get(org_id, name))
                if adapter is not None:
                    version = None if adapter == "base" else _version(session, blobs, org_id, adapter, name,
                                                                      state.base_model)
                    state = replace(state, adapter_version_id=version.id if version else None, upstream_id=None)
                if spec is not None:
                    state = replace(state, adapter_version_id=None,
                                    upstream_id=_upstream(session, ctx.settings, org_id, spec, check))
                if canary is not None:
                    if canary == "none":
                        state = replace(state, canary_version_id=None, canary_upstream_id=None, canary_percent=0)
                    else:
                        version = _version(session, blobs, org_id, canary, name, state.base_model)
                        state = replace(state, canary_version_id=version.id, canary_upstream_id=None)
                if canary_percent is not None:
                    if state.canary_version_id is None and state.canary_upstream_id is None:
                        raise InvalidInput(f"--canary-percent: deployment {name!r} has no canary; pass --canary too",
                                           param="canary_percent")
                    state = replace(state, canary_percent=canary_percent)
                _, changed = repo.update(org_id, name, state, actor=ACTOR)
            if not changed:
                console.print(f"deployment {name!r} already serves that; nothing changed", highlight=False)
            _show(ctx, name)


def _update_remote(client: Client, name: str, *, adapter: str | None, canary: str | None,
                   canary_percent: int | None, spec: UpstreamSpec | None, check: bool) -> None:
    """``deploy update`` through ``PATCH /api/deployments/{name}`` (the canary re-sent whole, see the docstring)."""
    current = client.deployment(name)
    changes: dict[str, Any] = {}
    if adapter is not None:
        changes["adapter"] = None if adapter == "base" else adapter
    if spec is not None:
        changes["upstream"] = spec
    if canary == "none":
        changes["canary"] = None
    elif canary is not None or canary_percent is not None:
        held = current["canary"]
        if canary is None:
            if held is None:
                raise InvalidInput(f"--canary-percent: deployment {name!r} has no canary; pass --canary too",
                                   param="canary_percent")
            if held["adapter"] is None:
                raise InvalidInput(f"--canary-percent: the canary of {name!r} is an upstream, which the API only "
                                   "replaces whole (with its key); pass --canary REF or use PATCH",
                                   param="canary_percent")
            canary = held["adapter"]["id"]
        changes["canary"] = canary
        changes["canary_percent"] = canary_percent if canary_percent is not None else (held or {}).get("percent", 0)
    out = client.update_deployment(name, check_upstream=check, **changes)
    if out["revision"] == current["revision"]:
        console.print(f"deployment {name!r} already serves that; nothing changed", highlight=False)
    _table([out])


@app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="The deployment to roll back."),
    to: int | None = typer.Option(None, "--to", min=1, help="Revision to restore (default: the previous state)."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """Restore the state before the current one (or revision --to) as a new revision."""
    from teachloop.store.repos.deployments import Deployments

    with errors():
        if remote:
            with _remote(remote, org) as client:
                _table([client.rollback_deployment(name, to)])
            return
        with StoreContext(org) as ctx:
            with ctx.database.session() as session:
                Deployments(session).rollback(ctx.org_id, name, to_revision=to, actor=ACTOR)
            _show(ctx, name)


@app.command("list")
def list_(
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """List deployments."""
    with errors():
        if remote:
            with _remote(remote, org) as client:
                _table(client.deployments())
            return
        with StoreContext(org) as ctx:
            _show(ctx)


@app.command("history")
def history(
    name: str = typer.Argument(..., help="The deployment."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    remote: str | None = remote_option(),
) -> None:
    """Every change of a deployment, newest first."""
    with errors():
        if remote:
            with _remote(remote, org) as client:
                changes = client.deployment_history(name)
                refs = {v["id"]: v["ref"] for v in client.adapters()}
        else:
            from teachloop.serve.deployments import deployment_history
            from teachloop.store.repos.deployments import AdapterVersions

            with StoreContext(org) as ctx:
                changes = deployment_history(ctx.database, ctx.org_id, name)
                ids = {i for c in changes for k in ("adapter_version_id", "canary_version_id") if (i := c["state"].get(k))}
                with ctx.database.session(write=False) as session:
                    refs = {i: v.ref for i, v in AdapterVersions(session).by_ids(ctx.org_id, ids).items()}
        table = Table("revision", "action", "adapter", "canary", "actor", "at")
        for c in changes:
            state = c["state"]
            primary, second = state.get("adapter_version_id"), state.get("canary_version_id")
            action = c["action"] + (f" to r{c['restored_from']}" if c["restored_from"] else "")
            arm = refs.get(primary, primary) if primary else "upstream" if state.get("upstream_id") else "(base)"
            table.add_row(
                str(c["revision"]), action, arm,
                f"{refs.get(second, second)} @ {state.get('canary_percent')}%" if second else "-",
                c["actor"], _when(c["at"], "%Y-%m-%d %H:%M:%S"),
            )
        console.print(table)


__all__ = ["app"]
