"""``/api/requests``: data requests (RFPs), their matches, and the proposals answering them.

- ``POST /api/requests`` (201): a buyer's request (``core.requests.RequestCreate``); a
  member key, or a key with the ``buyer`` role.
- ``GET /api/requests``: the caller's own requests and the open ``marketplace`` requests of
  other organisations, newest first. ``GET /api/requests/{request_id}``: one of those; a
  private or closed request of another organisation is 404, exactly like a missing one.
- ``GET /api/requests/{request_id}/matches``: published listings of other organisations that
  pass the request's hard filters, ranked by the similarity of the request text and the
  listing card (a real embedding model, loaded once per process, and only when some listing
  passes), with the excluded listings and why each cannot answer.
- ``POST /api/requests/{request_id}/proposals`` (201): propose a listing for an open request;
  a supplier proposes its own, a ``broker`` key another organisation's (with
  ``commission_bps``). ``GET /api/requests/{request_id}/proposals``: all of them for the buyer,
  the caller's own for anyone else.
- ``POST /api/requests/{request_id}/proposals/{proposal_id}/accept``: the buyer accepts one
  proposal (the others are declined, the request becomes ``matched``); retrying is a no-op.
- ``POST /api/requests/{request_id}/fulfil``: the buyer marks its request fulfilled by a listing.
- ``POST /api/requests/{request_id}/project`` (201): turn a request the caller can see into a
  labeling project of the caller's organisation (``work.projects.create_project`` with a
  ``request`` source: the request's spec becomes the template's instructions and the project
  records that it fulfils the request). This is the join of ``market`` and ``work``, which never
  import each other: only the app layer holds both.

Reads need a viewer key (or a ``buyer`` / ``broker`` key), writes a member key (or the
``buyer`` role to post and accept, the ``broker`` role to propose). The service is
``market.requests.DataRequests``; this module knows HTTP and the models only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, ConfigDict, Field

from teachloop.app import joins
from teachloop.app.auth import CurrentPrincipal, Deps, Member
from teachloop.app.routes.market import OrderCreate, OrderOut, order_out
from teachloop.core.errors import Forbidden
from teachloop.core.requests import (
    AcceptBody,
    DataRequestOut,
    MatchList,
    ProposalCreate,
    ProposalList,
    ProposalOut,
    RequestCreate,
    RequestList,
)
from teachloop.core.tenancy import Principal, Role
from teachloop.core.work import ProjectOut, ProjectSettings, TaskType, TemplateSpec
from teachloop.market.requests import DataRequests, order_for_proposal
from teachloop.work.projects import project_out

router = APIRouter(prefix="/api", tags=["requests"])


def _role_or(floor: Role, *extra: Role) -> Callable[[Principal], Principal]:
    """A dependency: the caller, whose role includes ``floor`` or is one of ``extra``; else 403."""

    def check(principal: CurrentPrincipal) -> Principal:
        if principal.role.at_least(floor) or principal.role in extra:
            return principal
        roles = " or ".join([f"the {floor.value} role or higher", *(f"the {r.value} role" for r in extra)])
        raise Forbidden(f"this call needs {roles}; this key has {principal.role.value}")

    return check


#: Reads: a viewer (or higher), buyer or broker key.
Reader = Annotated[Principal, Depends(_role_or(Role.VIEWER, Role.BUYER, Role.BROKER))]
#: Posting and accepting: a member (or higher) or buyer key.
Buyer = Annotated[Principal, Depends(_role_or(Role.MEMBER, Role.BUYER))]
#: Proposing: a member (or higher) or broker key.
Proposer = Annotated[Principal, Depends(_role_or(Role.MEMBER, Role.BROKER))]


@router.post("/requests", status_code=201, response_model=DataRequestOut)
def post_request(body: RequestCreate, principal: Buyer, deps: Deps) -> DataRequestOut:
    """Post a data request of the caller's organisation (open; ``marketplace`` requests are seen by others)."""
    with deps.database.session() as s:
        return DataRequests(s).post(principal.org_id, body, actor=principal.key_id)


@router.get("/requests", response_model=RequestList)
def list_requests(principal: Reader, deps: Deps) -> RequestList:
    """The organisation's requests and the open marketplace requests of others, newest first."""
    with deps.database.session(write=False) as s:
        return RequestList(data=DataRequests(s).list_requests(principal.org_id))


@router.get("/requests/{request_id}", response_model=DataRequestOut)
def get_request(request_id: str, principal: Reader, deps: Deps) -> DataRequestOut:
    """One request the organisation can see (404 otherwise)."""
    with deps.database.session(write=False) as s:
        return DataRequests(s).get(principal.org_id, request_id)


@router.get("/requests/{request_id}/matches", response_model=MatchList)
def request_matches(request_id: str, principal: Reader, deps: Deps) -> MatchList:
    """Listings that pass the request's hard filters, best match first, and the excluded ones with why."""
    with deps.database.session(write=False) as s:
        return DataRequests(s).matches(principal.org_id, request_id)


@router.post("/requests/{request_id}/proposals", status_code=201, response_model=ProposalOut)
def propose(request_id: str, body: ProposalCreate, principal: Proposer, deps: Deps) -> ProposalOut:
    """Propose a listing for an open request (a broker key may propose another organisation's listing)."""
    with deps.database.session() as s:
        return DataRequests(s).propose(principal, request_id, body)


@router.get("/requests/{request_id}/proposals", response_model=ProposalList)
def list_proposals(request_id: str, principal: Reader, deps: Deps) -> ProposalList:
    """The request's proposals: every one for the buyer, the caller's own for anyone else."""
    with deps.database.session(write=False) as s:
        return ProposalList(data=DataRequests(s).proposals(principal.org_id, request_id))


@router.post("/requests/{request_id}/proposals/{proposal_id}/accept", response_model=ProposalOut)
def accept_proposal(request_id: str, proposal_id: str, body: AcceptBody, principal: Buyer,
                    deps: Deps) -> ProposalOut:
    """The buyer accepts one proposal: the others are declined and the request becomes ``matched``."""
    with deps.database.session() as s:
        return DataRequests(s).accept(principal.org_id, request_id, proposal_id, body.order_ref)


@router.post("/requests/{request_id}/proposals/{proposal_id}/order", status_code=201, response_model=OrderOut,
             responses={200: {"model": OrderOut, "description": "The first order of a repeated idempotency key."}})
def order_proposal(
    request_id: str, proposal_id: str, body: OrderCreate, principal: Buyer, deps: Deps, response: Response,
    idempotency_key: str = Header(alias="Idempotency-Key", description="Makes a retried order safe: the same key "
                                  "and body return the first order; another body is 409."),
) -> OrderOut:
    """Buy an offer of the listing an accepted proposal named; the proposal's broker earns its commission."""
    with deps.database.session() as s:
        order = order_for_proposal(s, principal.org_id, request_id, proposal_id, body.offer, idempotency_key,
                                   actor=principal.key_id)
    if order.replayed:
        response.status_code = 200
    return order_out(order)


class FulfilBody(BaseModel):
    """Body of ``POST /api/requests/{id}/fulfil``."""

    model_config = ConfigDict(extra="forbid")

    listing_id: str = Field(max_length=40, description="The listing that fulfils the request.")


class RequestProject(BaseModel):
    """Body of ``POST /api/requests/{id}/project``: the labeling project to make from the request."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="The project's name in the organisation.")
    task_type: TaskType
    template: TemplateSpec = Field(default_factory=TemplateSpec, description="Added to the request's own text.")
    settings: ProjectSettings = Field(default_factory=ProjectSettings)


@router.post("/requests/{request_id}/fulfil", response_model=DataRequestOut)
def fulfil_request(request_id: str, body: FulfilBody, principal: Buyer, deps: Deps) -> DataRequestOut:
    """The buyer marks its request fulfilled by a listing (its own, or a published one)."""
    with deps.database.session() as s:
        return DataRequests(s).fulfil(principal.org_id, request_id, body.listing_id)


@router.post("/requests/{request_id}/project", status_code=201, response_model=ProjectOut)
def project_from_request(request_id: str, body: RequestProject, principal: Member, deps: Deps) -> ProjectOut:
    """A labeling project of the caller's organisation made from a request it can see (its spec is the template)."""
    with deps.database.session() as s:
        row = joins.project_from_request(s, principal.org_id, request_id, name=body.name, task_type=body.task_type,
                                         template=body.template, settings=body.settings, actor=principal.key_id)
        return project_out(s, row)


__all__ = ["Buyer", "FulfilBody", "Proposer", "Reader", "RequestProject", "router"]
