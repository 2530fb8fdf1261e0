"""``teachloop market``: the marketplace's money, read from the local database.

``market balance`` lists ledger accounts with what each holds (on its normal side)
and the trial balance per currency, for one organisation (``--org``) or the whole
ledger. ``market balance --check`` proves the invariants from the postings: the trial
balance is zero per currency, every entry balances, every cached balance equals the
sum of its postings, no non-negative account holds less than zero. It prints ``ok``
and exits 0, or names each broken invariant and exits 1. ``--json`` prints the
accounts or the report as JSON instead of a table.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from teachloop.cli._common import console, handle_errors, settings

app = typer.Typer(help="The marketplace's money: balances and ledger checks.", no_args_is_help=True)

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
    from teachloop.store import Database, Tenancy
    from teachloop.store.schema import LedgerAccount

    with handle_errors():
        database = Database.connect(settings().database_url)
        try:
            database.require_migrated()
            with database.session(write=False) as session:
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
        finally:
            database.close()
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


__all__ = ["app"]
