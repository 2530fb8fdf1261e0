"""``/api/billing``: the operator's price table, an organisation's usage, invoices and quotas.

Platform operator only (an operator key; every organisation role gets 403):

- ``GET /api/billing/prices``, ``PUT /api/billing/prices`` (``core.billing.PriceSet``: one price,
  replacing the one for the same meter and scope), ``DELETE /api/billing/prices?meter=&scope=``
  (204; 404 when there is no such price).
- ``POST /api/billing/orgs/{org_id}/invoices`` (``InvoiceRun``): invoice one organisation's
  closed month once -- 201 with the new invoice (and its ledger entry), 200 with the stored
  one (``replayed``) when that month was invoiced before.
- ``PUT /api/billing/orgs/{org_id}/quotas`` (``core.billing.QuotaSet``): set one quota of an
  organisation (``limit: null`` removes it); answers the organisation's quotas.

The caller's own organisation (a viewer key or higher):

- ``GET /api/billing/usage?period=YYYY-MM`` (default: this month): metered usage and its price.
- ``GET /api/billing/invoices``: the organisation's invoices, newest period first.
- ``GET /api/billing/quotas``: its quotas, with what is used now and when each resets.

Past a quota, work is refused with 429 naming the quota and a ``Retry-After`` header (that
is enforced where the work is admitted: ``market.quotas``). The services are
``market.billing.Billing`` and ``market.quotas.Quotas``; this module knows HTTP and the models only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from teachloop.app.auth import Deps, Operator, Viewer
from teachloop.core.billing import (
    Invoice,
    InvoiceList,
    Meter,
    Price,
    PriceList,
    PriceSet,
    QuotaList,
    QuotaSet,
    Usage,
    period_of,
)
from teachloop.market.billing import Billing
from teachloop.market.quotas import Quotas
from teachloop.store.repos.tenancy import Tenancy

router = APIRouter(prefix="/api/billing", tags=["billing"])


class InvoiceRun(BaseModel):
    """Body of ``POST /api/billing/orgs/{org_id}/invoices``: the closed month to invoice."""

    model_config = ConfigDict(extra="forbid")

    period: str = Field(description="A closed calendar month in UTC, 'YYYY-MM' (e.g. '2026-11').")


@router.get("/prices", response_model=PriceList)
def list_prices(principal: Operator, deps: Deps) -> PriceList:
    """The price table, by meter and scope."""
    with deps.database.session(write=False) as s:
        return PriceList(data=Billing(s).prices())


@router.put("/prices", response_model=Price)
def set_price(body: PriceSet, principal: Operator, deps: Deps) -> Price:
    """Set one price (replacing the one for the same meter and scope); 409 in a second currency."""
    with deps.database.session() as s:
        return Billing(s).set_price(body.meter, body.scope, body.price, body.currency, actor=principal.key_id)


@router.delete("/prices", status_code=204, response_class=Response)
def delete_price(principal: Operator, deps: Deps, meter: Annotated[Meter, Query(description="The price's meter.")],
                 scope: Annotated[str, Query(max_length=320, description="'*', 'deployment:<id>' or "
                                                                        "'base_model:<name>'.")] = "*") -> Response:
    """Remove one price; 404 when there is none."""
    with deps.database.session() as s:
        Billing(s).delete_price(meter, scope)
    return Response(status_code=204)


@router.post("/orgs/{org_id}/invoices", status_code=201, response_model=Invoice)
def run_invoice(org_id: str, body: InvoiceRun, principal: Operator, deps: Deps, response: Response) -> Invoice:
    """Invoice the organisation's closed month once; 200 with the stored invoice (``replayed``) on a repeat."""
    with deps.database.session() as s:
        Tenancy(s).get_org(org_id)  # 404 naming org_id for an unknown organisation
        invoice = Billing(s).invoice(org_id, body.period)
    if invoice.replayed:
        response.status_code = 200
    return invoice


@router.put("/orgs/{org_id}/quotas", response_model=QuotaList)
def set_quota(org_id: str, body: QuotaSet, principal: Operator, deps: Deps) -> QuotaList:
    """Set one quota of the organisation (``limit: null`` removes it); its quotas now."""
    with deps.database.session() as s:
        quotas = Quotas(s)
        quotas.set(org_id, body.name, body.limit, actor=principal.key_id)
        return QuotaList(org_id=org_id, data=quotas.status(org_id))


@router.get("/usage", response_model=Usage)
def usage(principal: Viewer, deps: Deps,
          period: Annotated[str | None, Query(max_length=7, description="'YYYY-MM'; this month when left out.")]
          = None) -> Usage:
    """The organisation's metered usage in a month and what it costs."""
    with deps.database.session(write=False) as s:
        return Billing(s).usage(principal.org_id, period or period_of(datetime.now(UTC)))


@router.get("/invoices", response_model=InvoiceList)
def list_invoices(principal: Viewer, deps: Deps) -> InvoiceList:
    """The organisation's invoices, newest period first."""
    with deps.database.session(write=False) as s:
        return InvoiceList(data=Billing(s).invoices(principal.org_id))


@router.get("/quotas", response_model=QuotaList)
def own_quotas(principal: Viewer, deps: Deps) -> QuotaList:
    """The organisation's quotas, what is used of each now and when it resets."""
    with deps.database.session(write=False) as s:
        return QuotaList(org_id=principal.org_id, data=Quotas(s).status(principal.org_id))


__all__ = ["InvoiceRun", "router"]
