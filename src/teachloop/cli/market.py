"""``teachloop market``: the marketplace's money, read from the local database.

``market balance`` lists ledger accounts with what each holds (on its normal side)
and the trial balance per currency, for one organisation (``--org``) or the whole
ledger. ``market balance --check`` proves the invariants from the postings: the trial
balance is zero per currency, every entry balances, every cached balance equals the
sum of its postings, no non-negative account holds less than zero. It prints ``ok``
and exits 0, or names each broken invariant and exits 1. ``--json`` prints the
accounts or the report as JSON instead of a table. ``market buy OFFER_ID --org ORG [--key K]``
buys an offer from the organisation's prepaid balance; the same key answers the same order.
``market list KIND REF --org ORG --title T [--publish]`` lists a version the organisation
owns; ``market offer LISTING --org ORG --amount 49.99 [--pricing --currency --use]`` offers a
published listing (refused past its computed licence). ``market request ...`` (``cli/requests.py``)
posts data requests, matches, proposes (as a supplier or a broker), accepts and orders.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from teachloop.cli import requests
from teachloop.cli._common import console, handle_errors, open_database

app = typer.Typer(help="The marketplace: listings, offers, orders, payouts, invoices, data requests, and the "
                       "ledger's balances and checks.", no_args_is_help=True)
app.add_typer(requests.app, name="request")

OrgOpt = typer.Option(None, "--org", help="Organisation name or id (default: the whole ledger).")


@app.command("balance")
def balance(
    check: bool = typer.Option(
        False,
        "--check",
        help="Prove the invariants (trial balance zero, cached = derived balances); exit 1 if not.",
    ),
    org: str | None = OrgOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show ledger balances, or with --check prove that the books balance."""
    from teachloop.core.money import format_minor
    from teachloop.ledger import Accounts, Ledger
    from teachloop.store import Tenancy
    from teachloop.store.schema import LedgerAccount

    with handle_errors(), open_database() as database, database.session(write=False) as session:
        org_id = Tenancy(session).find_org(org).id if org else None
        ledger = Ledger(session)
        if check:
            report = ledger.check(org_id)
        else:
            rows = (
                Accounts(session).list(org_id)
                if org_id
                else [
                    Accounts(session).get(r.org_id, r.id)
                    for r in session.query(LedgerAccount).order_by(
                        LedgerAccount.org_id, LedgerAccount.name
                    )
                ]
            )
            trial = ledger.trial_balance(org_id)
    if check:
        if as_json:
            console.print_json(json.dumps({**report.model_dump(mode="json"), "ok": report.ok}))
        elif report.ok:
            currencies = ", ".join(sorted(report.trial_balance)) or "no currency yet"
            console.print(
                f"[green]ok[/]: trial balance zero ({currencies}); {report.accounts} accounts, "
                f"{report.entries} entries, {report.postings} postings checked"
            )
        else:
            for problem in report.problems:
                console.print(f"[bold red]problem:[/] {problem}", highlight=False, soft_wrap=True)
        if not report.ok:
            raise typer.Exit(1)
        return
    if as_json:
        payload = {
            "accounts": [a.model_dump(mode="json") | {"held": a.held} for a in rows],
            "trial_balance": trial,
        }
        console.print_json(json.dumps(payload))
        return
    table = Table("organisation", "account", "kind", "holds", "non-negative", title="ledger accounts")
    for acc in rows:
        table.add_row(
            acc.org_id,
            acc.name,
            acc.kind.value,
            format_minor(acc.held, acc.currency),
            "yes" if acc.non_negative else "",
        )
    console.print(table)
    for currency, total in sorted(trial.items()):
        console.print(f"trial balance {currency}: {format_minor(total, currency)}")


@app.command("listings")
def listings_cmd(
    org: str = typer.Option(..., "--org", help="Organisation name or id."),
    mine: bool = typer.Option(False, "--mine", help="The organisation's own listings (drafts too)."),
) -> None:
    """List published listings (the catalogue), or the organisation's own with --mine."""
    from teachloop.market.listings import list_listings
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session(write=False) as session:
        rows = list_listings(session, Tenancy(session).find_org(org).id, mine=mine)
    table = Table("id", "kind", "version", "title", "status", "licence", title="listings")
    for lst in rows:
        table.add_row(lst.id, lst.kind.value, lst.resource_ref, lst.title, lst.status.value,
                      str(lst.licence.get("summary", "")))
    console.print(table)


@app.command("list")
def list_cmd(
    kind: str = typer.Argument(..., help="dataset, environment or adapter."),
    ref: str = typer.Argument(..., help="The version to sell, one the organisation owns (NAME@N for a dataset, "
                                        "NAME@VERSION for an environment, NAME@N for an adapter)."),
    org: str = typer.Option(..., "--org", help="The selling organisation (name or id)."),
    title: str = typer.Option(..., "--title", help="The listing's title in the catalogue."),
    description: str = typer.Option("", "--description", help="What it is and what it is for."),
    publish: bool = typer.Option(False, "--publish", help="Publish at once: compute the card, licence and Croissant "
                                                          "metadata and pin the content digest."),
) -> None:
    """Create a listing of a version the organisation owns (a draft; --publish publishes it)."""
    from teachloop.market.listings import create_listing, publish_listing
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session() as session:
        org_id = Tenancy(session).find_org(org).id
        listing = create_listing(session, org_id, kind=kind, ref=ref, title=title, description=description)
        if publish:
            listing = publish_listing(session, org_id, listing.id)
    console.print(f"listing {listing.id} ({listing.status.value}): {listing.kind.value} {listing.resource_ref}; "
                  f"licence {listing.licence.get('summary', 'computed at publication')}", highlight=False,
                  soft_wrap=True)


@app.command("offer")
def offer_cmd(
    listing: str = typer.Argument(..., help="A published listing of the organisation (lst_...)."),
    org: str = typer.Option(..., "--org", help="The selling organisation (name or id)."),
    pricing: str = typer.Option("licence", "--pricing", help="licence (one price), row (per row), training_use "
                                                              "or env_run (billed from the meter)."),
    amount: str = typer.Option(..., "--amount", help="The price in the currency's units, e.g. 49.99 (no fraction "
                                                     "of a minor unit)."),
    currency: str = typer.Option("USD", "--currency", help="ISO 4217 code."),
    use: str = typer.Option("commercial", "--use", help="commercial, non-commercial or research: refused when the "
                                                        "listing's computed licence allows less."),
    derivatives: bool = typer.Option(False, "--derivatives", help="Also grant derivative datasets."),
) -> None:
    """Offer a published listing at a price; an offer beyond its computed licence is refused, naming the sources."""
    from teachloop.core.money import format_minor, to_minor
    from teachloop.market.offers import create_offer
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session() as session:
        minor = to_minor(amount, currency, param="--amount")
        offer = create_offer(session, Tenancy(session).find_org(org).id, listing, pricing=pricing, amount=minor,
                             currency=currency, use=use, derivatives=derivatives)
    console.print(f"offer {offer.id}: {format_minor(offer.amount, offer.currency)} per {offer.pricing.value}, "
                  f"{offer.use} use", highlight=False, soft_wrap=True)


@app.command("payouts")
def payouts_cmd(
    run: bool = typer.Option(False, "--run", help="Release matured earnings and pay every payable account out."),
    batch: str = typer.Option("", "--batch", help="Batch name (idempotency: rerunning a batch pays nothing twice)."),
    org: str | None = OrgOpt,
) -> None:
    """List royalty payables; with --run, release matured earnings and run a payout batch (test provider)."""
    from teachloop.core.money import format_minor
    from teachloop.ledger import Payouts, TestProvider
    from teachloop.market.royalties import payable_accounts, release_and_pay
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database:
        with database.session(write=False) as session:
            org_id = Tenancy(session).find_org(org).id if org else None
        if run:
            from teachloop.store.schema.base import utc_now

            settled, paid = release_and_pay(database, Payouts(database, TestProvider()),
                                            batch or utc_now().strftime("%Y%m%d"), org_id=org_id)
        with database.session(write=False) as session:
            rows = [(a.org_id, a.name, -a.balance, a.currency) for a in payable_accounts(session, org_id)]
    if run:
        console.print(f"released {len(settled)} order(s); {len(paid)} payout(s): "
                      + ", ".join(f"{p.destination} {format_minor(p.amount.amount, p.amount.currency)} {p.status}"
                                  for p in paid))
    table = Table("organisation", "account", "payable", title="royalty payables")
    for org_row, name, held, currency in rows:
        table.add_row(org_row, name, format_minor(held, currency))
    console.print(table)


@app.command("buy")
def buy_cmd(
    offer: str = typer.Argument(..., help="The offer to buy (off_...)."),
    org: str = typer.Option(..., "--org", help="The buying organisation (name or id)."),
    key: str | None = typer.Option(None, "--key", help="Idempotency key: rerunning with it answers the same order "
                                                       "(default: a new key)."),
) -> None:
    """Buy an offer from the organisation's prepaid balance (once per --key)."""
    from teachloop.core.ids import new_id
    from teachloop.core.money import format_minor
    from teachloop.market.orders import buy
    from teachloop.store import Tenancy

    with handle_errors(), open_database() as database, database.session() as session:
        order = buy(session, Tenancy(session).find_org(org).id, offer, key or new_id("buy"))
    note = " (already bought with this key)" if order.replayed else ""
    console.print(f"order {order.id}{note}: {format_minor(order.amount, order.currency)}; entitlement "
                  f"{order.entitlement_id}; key {order.key}", highlight=False, soft_wrap=True)


@app.command("invoices")
def invoices_cmd(
    period: str | None = typer.Option(None, "--period", help="Month YYYY-MM to invoice (default: the last closed one)."),
    org: str | None = OrgOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Invoice each organisation's metered usage for a closed month (once: re-running posts nothing)."""
    from datetime import UTC, datetime

    from teachloop.core.billing import previous_period
    from teachloop.core.money import format_minor
    from teachloop.market.billing import Billing
    from teachloop.store import Tenancy
    from teachloop.store.schema import Organisation

    with handle_errors(), open_database() as database:
        month = period or previous_period(datetime.now(UTC))
        with database.session() as session:
            org_ids = [Tenancy(session).find_org(org).id] if org else [
                o.id for o in session.query(Organisation).order_by(Organisation.name)]
        invoices = []
        for org_id in org_ids:
            with database.session() as session:
                invoices.append(Billing(session).invoice(org_id, month))
    if as_json:
        console.print_json(json.dumps([inv.model_dump(mode="json") for inv in invoices]))
        return
    table = Table("organisation", "period", "total", "ledger entry", "", title=f"invoices {month}")
    for inv in invoices:
        total = format_minor(inv.total, inv.currency) if inv.currency else "nothing due"
        table.add_row(inv.org_id, inv.period, total, inv.entry_id or "", "already invoiced" if inv.replayed else "new")
    console.print(table)


__all__ = ["app"]
