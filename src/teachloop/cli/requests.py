"""``teachloop market request``: data requests (RFPs), their matches and proposals, from the terminal.

The same service as ``/api/requests`` (``market.requests.DataRequests``), on the local
database, acting for one organisation (``--org``):

- ``post TITLE --org ORG --description ... [--format --size --quality-bar --licence ... --budget
  --currency --deadline --private]``: a buyer's request (budget in the currency's units, e.g. 250.00);
- ``list --org ORG``: the organisation's requests and the open marketplace requests of others;
- ``show ID --org ORG``: one request; ``matches ID --org ORG``: listings passing the hard filters,
  ranked by text similarity (a real embedding model), and the excluded ones with why;
- ``propose ID LISTING --org ORG [--broker --commission-bps N --price P --note]``: a supplier
  proposes its own listing; with ``--broker`` the organisation acts as a broker and may propose
  another organisation's listing, earning ``--commission-bps`` on the resulting order;
- ``proposals ID --org ORG``: every proposal (the buyer) or the organisation's own;
- ``accept ID PROPOSAL --org ORG``: the buyer accepts one (the others are declined);
- ``order ID PROPOSAL OFFER --org ORG [--key K]``: the buyer buys an offer of the accepted
  proposal's listing; the proposal's broker is paid its commission.

Every refusal is the service's own message; nothing is written when a command fails.
"""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.table import Table

from teachloop.cli._common import console, handle_errors, open_database

app = typer.Typer(help="Data requests: post, list, match, propose (as a supplier or broker), accept and order.",
                  no_args_is_help=True)

OrgOpt = typer.Option(..., "--org", help="The organisation acting (name or id).")
AsJson = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _principal(session: object, org: str, role: str):  # type: ignore[no-untyped-def]
    """A principal of ``org`` acting from the terminal with ``role`` (the CLI has the database's own authority)."""
    from teachloop.core.tenancy import Principal, Role
    from teachloop.store import Tenancy

    return Principal(org_id=Tenancy(session).find_org(org).id, user_id=None, key_id="cli", role=Role(role))  # type: ignore[arg-type]


@app.command("post")
def post_cmd(
    title: str = typer.Argument(..., help="What the buyer wants, in a line."),
    org: str = OrgOpt,
    description: str = typer.Option(..., "--description", help="The task the data is for (matched by similarity)."),
    format: str | None = typer.Option(None, "--format", help="dataset, environment, sft, dpo, ... (a hard filter)."),
    size: int | None = typer.Option(None, "--size", help="Rows wanted."),
    quality_bar: float | None = typer.Option(None, "--quality-bar", help="E.g. the gold accuracy the data must reach "
                                                                         "(0-1)."),
    licence: list[str] = typer.Option([], "--licence", help="A licence term needed (repeatable): commercial, "
                                                            "derivatives, ..."),
    budget: str | None = typer.Option(None, "--budget", help="The budget in the currency's units, e.g. 250.00."),
    currency: str = typer.Option("USD", "--currency", help="ISO 4217 code."),
    deadline: datetime | None = typer.Option(None, "--deadline", help="ISO date or date-time."),
    private: bool = typer.Option(False, "--private", help="Seen by the organisation only (no marketplace matching)."),
) -> None:
    """Post a data request of the organisation."""
    from teachloop.core.money import to_minor
    from teachloop.core.requests import RequestCreate
    from teachloop.market.requests import DataRequests
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session() as session:
        body = RequestCreate(title=title, description=description, format=format, size=size, quality_bar=quality_bar,
                             licences=list(licence), currency=currency, deadline=deadline,
                             budget=to_minor(budget, currency, param="--budget") if budget is not None else None,
                             visibility="private" if private else "marketplace")
        out = DataRequests(session).post(Tenancy(session).find_org(org).id, body, actor="cli")
    console.print(f"request {out.id} ({out.status}): {out.title}", highlight=False, soft_wrap=True)


@app.command("list")
def list_cmd(org: str = OrgOpt, as_json: bool = AsJson) -> None:
    """The organisation's requests and the open marketplace requests of others, newest first."""
    from teachloop.market.requests import DataRequests
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session(write=False) as session:
        rows = DataRequests(session).list_requests(Tenancy(session).find_org(org).id)
    if as_json:
        console.print_json(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    table = Table("id", "title", "format", "licences", "budget", "status", title="data requests")
    for r in rows:
        table.add_row(r.id, r.title, r.format or "", ", ".join(r.licences),
                      "" if r.budget is None else f"{r.budget} {r.currency} (minor units)", r.status)
    console.print(table)


@app.command("show")
def show_cmd(request_id: str = typer.Argument(..., help="dreq_..."), org: str = OrgOpt) -> None:
    """One request the organisation can see (as JSON)."""
    from teachloop.market.requests import DataRequests
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session(write=False) as session:
        out = DataRequests(session).get(Tenancy(session).find_org(org).id, request_id)
    console.print_json(out.model_dump_json())


@app.command("matches")
def matches_cmd(request_id: str = typer.Argument(..., help="dreq_..."), org: str = OrgOpt,
                as_json: bool = AsJson) -> None:
    """Listings that pass the request's hard filters, best match first, and the excluded ones with why."""
    from teachloop.market.requests import DataRequests
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session(write=False) as session:
        found = DataRequests(session).matches(Tenancy(session).find_org(org).id, request_id)
    if as_json:
        console.print_json(found.model_dump_json())
        return
    table = Table("listing", "supplier", "title", "score", title=f"matches of {request_id}")
    for m in found.data:
        table.add_row(m.listing_id, m.supplier_org_id, m.title, f"{m.score:.3f}")
    console.print(table)
    for listing, why in found.excluded.items():
        console.print(f"excluded {listing}: {why}", highlight=False, soft_wrap=True)


@app.command("propose")
def propose_cmd(
    request_id: str = typer.Argument(..., help="dreq_..."),
    listing: str = typer.Argument(..., help="The listing proposed (lst_...)."),
    org: str = OrgOpt,
    broker: bool = typer.Option(False, "--broker", help="Act as a broker: propose another organisation's listing."),
    commission_bps: int = typer.Option(0, "--commission-bps", help="A broker's commission on the order (basis "
                                                                   "points, at most 5000)."),
    price: int | None = typer.Option(None, "--price", help="Proposed price in minor units of the request's currency."),
    note: str = typer.Option("", "--note", help="A note to the buyer."),
) -> None:
    """Propose a listing for an open request (a supplier its own; --broker another organisation's)."""
    from teachloop.core.requests import ProposalCreate
    from teachloop.market.requests import DataRequests

    with handle_errors(), open_database() as database, database.session() as session:
        principal = _principal(session, org, "broker" if broker else "member")
        body = ProposalCreate(listing_id=listing, price=price, note=note, commission_bps=commission_bps)
        out = DataRequests(session).propose(principal, request_id, body)
    console.print(f"proposal {out.id} ({out.status.value}) of {out.listing_id}", highlight=False, soft_wrap=True)


@app.command("proposals")
def proposals_cmd(request_id: str = typer.Argument(..., help="dreq_..."), org: str = OrgOpt,
                  as_json: bool = AsJson) -> None:
    """The request's proposals: every one for the buyer, the organisation's own for anyone else."""
    from teachloop.market.requests import DataRequests
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session(write=False) as session:
        rows = DataRequests(session).proposals(Tenancy(session).find_org(org).id, request_id)
    if as_json:
        console.print_json(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    table = Table("id", "listing", "status", "commission (bps)", title=f"proposals of {request_id}")
    for p in rows:
        table.add_row(p.id, p.listing_id, p.status.value, str(p.commission_bps))
    console.print(table)


@app.command("accept")
def accept_cmd(request_id: str = typer.Argument(..., help="dreq_..."),
               proposal: str = typer.Argument(..., help="The proposal to accept (prop_...)."),
               org: str = OrgOpt) -> None:
    """The buyer accepts one proposal: the others are declined and the request becomes matched."""
    from teachloop.market.requests import DataRequests
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session() as session:
        out = DataRequests(session).accept(Tenancy(session).find_org(org).id, request_id, proposal)
    console.print(f"proposal {out.id} {out.status.value}", highlight=False)


@app.command("order")
def order_cmd(
    request_id: str = typer.Argument(..., help="dreq_..."),
    proposal: str = typer.Argument(..., help="The accepted proposal (prop_...)."),
    offer: str = typer.Argument(..., help="An offer of the proposal's listing (off_...)."),
    org: str = OrgOpt,
    key: str | None = typer.Option(None, "--key", help="Idempotency key (default: a new one)."),
) -> None:
    """Buy an offer of an accepted proposal's listing; the proposal's broker earns its commission."""
    from teachloop.core.ids import new_id
    from teachloop.core.money import format_minor
    from teachloop.market.requests import order_for_proposal
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session() as session:
        order = order_for_proposal(session, Tenancy(session).find_org(org).id, request_id, proposal, offer,
                                   key or new_id("buy"), actor="cli")
    console.print(f"order {order.id}: {format_minor(order.amount, order.currency)}; entitlement "
                  f"{order.entitlement_id}", highlight=False, soft_wrap=True)
