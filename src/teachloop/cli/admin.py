"""``teachloop admin``: first-run setup, organisations and API keys (operator commands).

These commands talk to the database directly (``TEACHLOOP_DATABASE_URL``), not
to a running server, so they work before the server is up and on any machine
that can reach the database. A key's secret is printed exactly once, when it
is created; afterwards only its prefix is shown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.panel import Panel
from rich.table import Table

from teachloop.cli._common import console, handle_errors, pick_org, settings
from teachloop.core.errors import InvalidInput

if TYPE_CHECKING:  # the store (SQLAlchemy) is imported inside commands, keeping --help fast
    from sqlalchemy.orm import Session

    from teachloop.store import Database, Tenancy
    from teachloop.store.repos.sessions import NewLink
    from teachloop.store.schema import Organisation

app = typer.Typer(
    help="Operator commands: first-run setup, organisations and API keys.",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="Create, list, check and revoke API keys.", no_args_is_help=True)
orgs_app = typer.Typer(help="List organisations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(orgs_app, name="orgs")

_ORG_HELP = "Organisation name or id (default: the only organisation)."


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """``handle_errors()``, with the message shown literally.

    ``_common.fail`` prints with rich markup on, which would swallow the
    ``[postgres]`` of "pip install 'teachloop[postgres]'"; escaping here keeps it.
    """
    with handle_errors():  # _common.fail escapes rich markup itself
        yield


def show_new_key(
    secret: str, org_name: str, owner: str | None, role: str, *, base_url: str | None = None
) -> None:
    """Print a newly created key once, in a panel, with how to use it."""
    console.print(
        Panel(
            secret,
            title=f"API key for organisation {org_name!r}",
            subtitle=f"{role}{f' · {owner}' if owner else ' · service key'}",
            expand=False,
        )
    )
    console.print("This key is shown once; teachloop keeps only its hash. Use it with:", highlight=False)
    console.print(f"  export TEACHLOOP_API_KEY={secret}", soft_wrap=True, highlight=False)
    if base_url:
        console.print(
            f'  curl -H "Authorization: Bearer $TEACHLOOP_API_KEY" {base_url}/api/whoami',
            soft_wrap=True,
            highlight=False,
        )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def _open(migrated: bool = True) -> Database:
    """The configured database (checked to be migrated unless ``migrated=False``)."""
    from teachloop.store import Database

    db = Database.connect(settings().database_url)
    if migrated:
        try:
            db.require_migrated()
        except BaseException:
            db.close()
            raise
    return db


def _pick_org(tenancy: Tenancy, ref: str | None) -> Organisation:
    return pick_org(tenancy, ref)  # type: ignore[no-any-return]


@app.command()
def init(
    org: str | None = typer.Option(
        None, "--org", help="Organisation to create (default: 'default'); a new name creates another one."
    ),
    email: str | None = typer.Option(
        None, "--email", help="E-mail of the owner to create (default: owner@localhost)."
    ),
) -> None:
    """Create and migrate the database, a first organisation, its owner and an API key.

    Safe to run again: with an organisation already there (or --org naming an
    existing one) it creates nothing and says so.
    """
    from teachloop.store import bootstrap

    with errors():
        db = _open(migrated=False)
        try:
            revision = db.migrate()
            with db.session() as session:
                result = bootstrap(session, org, email)
        finally:
            db.close()
        console.print(f"database {db.display_url} is at migration {revision}", highlight=False)
        if result.key is None:
            console.print(
                f"teachloop is already initialised: organisation {result.org.name!r} ({result.org.id}) exists, "
                "so no organisation or key was created.\n"
                f"Create a key with `teachloop admin keys create --org {result.org.name}`, or another "
                "organisation with `teachloop admin init --org NEW-NAME`.",
                highlight=False,
            )
            return
        console.print(
            f"created organisation {result.org.name!r} ({result.org.id}) owned by {result.owner.email}",
            highlight=False,
        )
        show_new_key(result.key.secret, result.org.name, result.owner.email, "owner")


@keys_app.command("create")
def keys_create(
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    email: str | None = typer.Option(
        None, "--email", help="The member the key acts as (default: the organisation's first owner)."
    ),
    role: str | None = typer.Option(
        None,
        "--role",
        help="owner, admin, member, viewer, expert, buyer or broker (default: the member's role).",
    ),
    name: str = typer.Option("cli", "--name", help="A label to recognise the key by."),
    service: bool = typer.Option(
        False, "--service", help="A service key, tied to no user (default role: member)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the key (for scripts)."),
) -> None:
    """Create an API key and print it once."""
    from teachloop.store import ApiKeys, Tenancy

    with errors():
        if service and email:
            raise InvalidInput("--service keys belong to no user; drop --email", param="email")
        db = _open()
        try:
            with db.session() as session:
                tenancy = Tenancy(session)
                chosen = _pick_org(tenancy, org)
                user = None
                if not service:
                    if email:
                        user = tenancy.find_user(email)
                        if user is None:
                            raise InvalidInput(f"no user with e-mail {email!r}", param="email")
                    else:
                        user = tenancy.first_owner(chosen.id)
                    member_role = tenancy.get_membership(chosen.id, user.id).role
                else:
                    member_role = "member"
                created = ApiKeys(session).create_key(
                    chosen.id, user.id if user else None, role or member_role, name, actor="cli"
                )
        finally:
            db.close()
        if quiet:
            typer.echo(created.secret)
            return
        show_new_key(created.secret, chosen.name, user.email if user else None, created.key.role)


@keys_app.command("operator")
def keys_operator(
    name: str = typer.Option("operator", "--name", help="A label to recognise the key by (e.g. prometheus)."),
    org: str | None = typer.Option(
        None, "--org", help="Organisation to file the key under (default: the only organisation); "
        "the key reads none of its data."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the key (for scripts)."),
) -> None:
    """Create a platform operator key: server-wide /metrics and /api/operator/stats, no organisation's data."""
    from teachloop.store import ApiKeys, Tenancy

    with errors():
        db = _open()
        try:
            with db.session() as session:
                chosen = _pick_org(Tenancy(session), org)
                created = ApiKeys(session).create_operator_key(chosen.id, name, actor="cli")
        finally:
            db.close()
        if quiet:
            typer.echo(created.secret)
            return
        show_new_key(created.secret, chosen.name, None, created.key.role)
        console.print(
            "It reads server-wide figures only: GET /metrics (Prometheus: send it as a bearer token) and "
            "GET /api/operator/stats.",
            highlight=False,
        )


@keys_app.command("list")
def keys_list(
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    active: bool = typer.Option(False, "--active", help="Hide revoked keys."),
) -> None:
    """List an organisation's API keys (never their secrets)."""
    from sqlalchemy import select

    from teachloop.store import ApiKeys, Tenancy
    from teachloop.store.schema import User

    with errors():
        db = _open()
        try:
            with db.session(write=False) as session:
                chosen = _pick_org(Tenancy(session), org)
                keys = ApiKeys(session).list(chosen.id, include_revoked=not active)
                users = session.scalars(
                    select(User).where(User.id.in_({k.user_id for k in keys if k.user_id}))
                )
                emails = {u.id: u.email for u in users}
        finally:
            db.close()
        table = Table(title=f"API keys of {chosen.name} ({chosen.id})", box=box.SIMPLE_HEAD)
        for column in ("id", "name", "user", "role", "created", "last used", "status"):
            table.add_column(column, no_wrap=column == "id", overflow="fold")
        for key in keys:
            table.add_row(
                key.id,
                key.name,
                emails.get(key.user_id or "", "(service)"),
                key.role,
                _when(key.created_at),
                _when(key.last_used_at),
                "[red]revoked[/]" if key.revoked_at else "active",
            )
        console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(
        ..., help="Id of the key (key_...), as shown by `teachloop admin keys list`."
    ),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Revoke an API key; requests with it fail from now on."""
    from teachloop.store import ApiKeys, Tenancy

    with errors():
        db = _open()
        try:
            with db.session() as session:
                chosen = _pick_org(Tenancy(session), org)
                keys = ApiKeys(session)
                was_revoked = keys.get(chosen.id, key_id).revoked_at
                key = keys.revoke(chosen.id, key_id, actor="cli")
        finally:
            db.close()
        if was_revoked is not None:
            console.print(
                f"key {key.id} ({key.name!r}) was already revoked on {_when(was_revoked)}", highlight=False
            )
        else:
            console.print(f"revoked key {key.id} ({key.name!r}) of {chosen.name}", highlight=False)


@keys_app.command("check")
def keys_check(
    key: str | None = typer.Argument(
        None, help="The key to check (default: $TEACHLOOP_API_KEY).", show_default=False
    ),
) -> None:
    """Check that an API key works and show whom it stands for."""
    from teachloop.store import ApiKeys, Tenancy
    from teachloop.store.schema import User

    with errors():
        secret = key or os.environ.get("TEACHLOOP_API_KEY")
        db = _open()
        try:
            with db.session() as session:
                principal = ApiKeys(session).authenticate(secret)
                org_name = Tenancy(session).get_org(principal.org_id).name
                user = session.get(User, principal.user_id) if principal.user_id else None
        finally:
            db.close()
        who = user.email if user else "service key"
        console.print(
            f"ok: key {principal.key_id} acts as {who} ({principal.role.value}) in {org_name!r} ({principal.org_id})",
            highlight=False,
        )


@orgs_app.command("list")
def orgs_list() -> None:
    """List every organisation with its member and active-key counts."""
    from teachloop.store import Tenancy

    with errors():
        db = _open()
        try:
            with db.session(write=False) as session:
                summaries = Tenancy(session).summarise_orgs()
        finally:
            db.close()
        table = Table(title="organisations", box=box.SIMPLE_HEAD)
        for column in ("id", "name", "members", "keys", "created"):
            table.add_column(
                column, no_wrap=column == "id", justify="right" if column in ("members", "keys") else "left"
            )
        for item in summaries:
            table.add_row(
                item.org.id,
                item.org.name,
                str(item.members),
                str(item.active_keys),
                _when(item.org.created_at),
            )
        console.print(table)


def new_signin_link(session: Session, org: Organisation, email: str, *, minutes: int = 60) -> NewLink:
    """A single-use console sign-in link for the member ``email`` of ``org`` (in a caller-owned session)."""
    from datetime import timedelta

    from teachloop.store.repos.sessions import SigninLinks

    if not 1 <= minutes <= 7 * 24 * 60:
        raise InvalidInput(f"--minutes must be 1-{7 * 24 * 60}, got {minutes}", param="minutes")
    return SigninLinks(session).create_signin(org.id, email, actor="cli", ttl=timedelta(minutes=minutes))


def show_signin_link(link: NewLink, email: str, base_url: str) -> None:
    """Print a sign-in link once, with what it does."""
    url = f"{base_url.rstrip('/')}/signin/link/{link.token}"
    console.print(f"Console sign-in link for {email} (works once, until {link.info.expires_at:%Y-%m-%d %H:%M} UTC):",
                  highlight=False)
    console.print(f"  {url}", soft_wrap=True, highlight=False)


@app.command("signin-link")
def signin_link(
    email: str = typer.Argument(..., help="E-mail of the member to sign in."),
    org: str | None = typer.Option(None, "--org", help=_ORG_HELP),
    base_url: str | None = typer.Option(
        None, "--base-url", help="The console's address (default: http://$TEACHLOOP_HOST:$TEACHLOOP_PORT)."
    ),
    minutes: int = typer.Option(60, "--minutes", help="How long the link works (it works once)."),
) -> None:
    """Print a single-use link that signs a member in to the web console (then they can set a password)."""
    from teachloop.store import Tenancy

    with errors():
        config = settings()
        db = _open()
        try:
            with db.session() as session:
                chosen = _pick_org(Tenancy(session), org)
                link = new_signin_link(session, chosen, email, minutes=minutes)
        finally:
            db.close()
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        show_signin_link(link, link.info.email, base_url or f"http://{host}:{config.port}")


__all__ = ["app", "errors", "new_signin_link", "show_new_key", "show_signin_link", "signin_link"]
