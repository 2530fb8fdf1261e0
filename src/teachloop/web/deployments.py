"""Deployment pages: the list, one deployment's arms and revisions, changes behind a confirmation, arm forms.

- ``/deployments``: every deployment with its primary arm (adapter version or
  upstream), canary and split, and (member) a form that creates a deployment
  whose primary arm is an adapter or an upstream.
- ``/deployments/{name}``: each arm in force -- primary, canary, shadow -- as an
  adapter version or an upstream (base URL, model, ``api_key: set``, timeouts,
  retries), the shadow's share, the prices, and every revision (action, arms,
  who, when).
- ``/deployments/{name}/rollback`` (``?to_revision=N`` optional),
  ``/deployments/{name}/promote`` (the canary -- an adapter version or an
  upstream -- becomes the primary arm for everyone), ``/deployments/{name}/split`` (``?percent=N``, the canary's share):
  GET shows what will change and a confirm button; only the POST changes it.
- Arm forms (POST, then a redirect to the deployment's page):
  ``POST /deployments`` (create), ``/deployments/{name}/upstream`` (set or
  replace the primary arm by an upstream), ``/deployments/{name}/canary`` (an
  adapter or an upstream for ``percent`` % of users, 1-99),
  ``/deployments/{name}/canary/remove``, ``/deployments/{name}/shadow`` (an
  adapter or an upstream for ``percent`` % of requests, 1-99),
  ``/deployments/{name}/shadow/remove`` and ``/deployments/{name}/prices``
  (the whole price list, replaced). Each builds the same ``DeploymentCreate``
  / ``DeploymentPatch`` body ``/api/deployments`` takes and calls the same
  ``serve.deployments.create_deployment`` / ``update_deployment`` (so each
  upstream is probed, stored as a new row with its key encrypted, and the
  change resyncs this server). Bad input re-renders the page with the form's
  values, a message naming the field (``upstream.base_url``,
  ``canary.upstream.model``, ``shadow.percent``, ``prices.MODEL.prompt_per_1m``, ...) and the error's
  status, and writes nothing. An API key is write-only: it is never put back
  in a page, not even in the re-rendered form.

Rollback, promote and split go through ``store.Deployments`` exactly as
``/api/deployments`` does (rollback as ``POST /api/deployments/{name}/rollback``;
promote and split as a ``PATCH`` of arms the deployment already serves, so
there is nothing new to preload or probe) and then resync this server's
adapters, so the next request is served by the new state. An upstream canary is
promoted as its stored row (the same ``upstream_id`` becomes the primary arm):
the REST API has no promote, and its ``PATCH`` would need the key again to
store a new row, which the console never holds. Reading needs the viewer role, every
change member (the API's rule for ``/api/deployments``). Another
organisation's deployment is a 404 page like a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel, StringConstraints, ValidationError
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import Conflict, InvalidInput, TeachloopError
from teachloop.core.tenancy import Role
from teachloop.serve import deployments as service
from teachloop.serve.deployments import DeploymentCreate, DeploymentPatch
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.schema.deployments import AdapterVersion, Deployment, UpstreamEndpoint
from teachloop.web.auth import SignedIn, Viewer, app_deps, require, require_csrf, serving_of
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

#: the role every deployment change needs, here as in ``/api/deployments`` (``app.auth.Member``)
WRITE_ROLE = Role.MEMBER


@dataclass(frozen=True)
class StateView:
    """A deployment state with its arms named.

    ``adapter`` / ``canary`` / ``shadow``: adapter versions as ``name@N`` (None: the base model alone / no such
    arm); ``upstream`` / ``canary_upstream`` / ``shadow_upstream``: an upstream arm as ``MODEL at BASE_URL``.
    """

    base_model: str
    adapter: str | None
    canary: str | None
    canary_percent: int
    upstream: str | None = None
    canary_upstream: str | None = None
    shadow: str | None = None
    shadow_upstream: str | None = None
    shadow_percent: int = 0

    @property
    def primary(self) -> str:
        """The primary arm in words: ``upstream MODEL at BASE_URL``, the adapter ``name@N`` or ``base model``.

        The one description every page uses (deployments list, overview, loop page, revisions).
        """
        if self.upstream:
            return f"upstream {self.upstream}"
        return self.adapter or "base model"

    @property
    def canary_arm(self) -> str | None:
        """The canary in words (``name@N`` or ``upstream MODEL at BASE_URL``); None without a canary."""
        return self.canary or (f"upstream {self.canary_upstream}" if self.canary_upstream else None)

    @property
    def shadow_arm(self) -> str | None:
        """The shadow arm in words, like ``canary_arm``; None without one."""
        return self.shadow or (f"upstream {self.shadow_upstream}" if self.shadow_upstream else None)


def _ref(versions: dict[str, AdapterVersion], version_id: str | None) -> str | None:
    if version_id is None:
        return None
    found = versions.get(version_id)
    return found.ref if found is not None else version_id


def _label(upstreams: dict[str, UpstreamEndpoint], upstream_id: str | None) -> str | None:
    if upstream_id is None:
        return None
    found = upstreams.get(upstream_id)
    return f"{found.model} at {found.base_url}" if found is not None else upstream_id


def _state_view(session: Session, org_id: str, state: DeploymentState) -> StateView:
    ids = {i for i in (state.adapter_version_id, state.canary_version_id, state.shadow_version_id) if i}
    versions = AdapterVersions(session).by_ids(org_id, ids)
    up_ids = {i for i in (state.upstream_id, state.canary_upstream_id, state.shadow_upstream_id) if i}
    upstreams = Deployments(session).upstreams(org_id, up_ids)
    return StateView(state.base_model, _ref(versions, state.adapter_version_id),
                     _ref(versions, state.canary_version_id), state.canary_percent,
                     _label(upstreams, state.upstream_id), _label(upstreams, state.canary_upstream_id),
                     _ref(versions, state.shadow_version_id), _label(upstreams, state.shadow_upstream_id),
                     state.shadow_percent)


def primaries_at(session: Session, org_id: str, deployment_id: str, revisions: set[int]) -> dict[int, str]:
    """The primary arm in words (``StateView.primary``) at each of ``revisions`` of a deployment, from its
    append-only change rows (``Deployments.states_at``); a revision without a row is left out."""
    states = Deployments(session).states_at(org_id, deployment_id, revisions)
    return {revision: _state_view(session, org_id, state).primary for revision, state in states.items()}


def deployment_rows(session: Session, org_id: str) -> list[tuple[Deployment, StateView]]:
    """The organisation's deployments with their states named (shared with the overview)."""
    return [(d, _state_view(session, org_id, DeploymentState.of(d))) for d in Deployments(session).list(org_id)]


@dataclass(frozen=True)
class Failed:
    """A refused arm form: which form, the field it names, the message, and the values to show again (no key)."""

    form: str
    param: str
    message: str
    values: dict[str, Any]


def _list_page(request: Request, viewer: Viewer, *, status: int = 200, failed: Failed | None = None) -> Response:
    with app_deps(request).database.session(write=False) as session:
        rows = deployment_rows(session, viewer.principal.org_id)
    served = getattr(request.app.state, "serving", None)
    return page(request, "deployments.html", status=status, rows=rows, can_write=viewer.can(WRITE_ROLE),
                failed=failed, base_model=getattr(served, "base_model", None) or "")


@router.get("/deployments")
def deployment_list(request: Request, viewer: SignedIn) -> Response:
    """Every deployment of the organisation."""
    require(viewer, Role.VIEWER, "reading deployments")
    return _list_page(request, viewer)


def _detail(session: Session, org_id: str, name: str) -> dict[str, Any]:
    repo = Deployments(session)
    row = repo.get(org_id, name)
    history = [(c, _state_view(session, org_id, DeploymentState(**c.state))) for c in repo.history(org_id, name)]
    return {"deployment": row, "name": row.name, "revision": row.revision, "history": history,
            "state": _state_view(session, org_id, DeploymentState.of(row))}


def _detail_page(request: Request, viewer: Viewer, name: str, *, done: str = "", status: int = 200,
                 failed: Failed | None = None) -> Response:
    database = app_deps(request).database
    with database.session(write=False) as session:
        context = _detail(session, viewer.principal.org_id, name)
    arms = service.get_deployment(database, viewer.principal.org_id, name)  # the record /api/deployments shows
    return page(request, "deployment.html", status=status, done=done, can_write=viewer.can(WRITE_ROLE), arms=arms,
                failed=failed, **context)


@router.get("/deployments/{name}")
def deployment_detail(request: Request, viewer: SignedIn, name: str, done: str = "") -> Response:
    """One deployment: its arms, prices and revisions, and the changes one can make."""
    require(viewer, Role.VIEWER, "reading deployments")
    return _detail_page(request, viewer, name, done=done)


# ---------------------------------------------------------------------------------------------- arm forms


def _number(raw: str, param: str, kind: type[int] | type[float]) -> int | float | None:
    """``raw`` as a number (None when blank); ``InvalidInput`` naming ``param`` otherwise."""
    if not raw.strip():
        return None
    try:
        return kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidInput(f"{param}: must be {what}, got {raw.strip()[:40]!r}", param=param) from None


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], body: dict[str, Any]) -> M:
    """``model`` of ``body`` as the REST route validates it; the first error as ``InvalidInput`` naming its field.

    The message is built from the error's location and text only: pydantic's ``input`` (an API key, say) is
    never part of it.
    """
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "input"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInput(f"{field}: {message}", param=field) from None


def _named(err: TeachloopError, prefix: str) -> tuple[str, str]:
    """(field, message) of a refused change, the field under ``prefix`` (the service says ``adapter``)."""
    param = err.param or prefix
    if prefix and param != prefix and not param.startswith(prefix + "."):
        param = f"{prefix}.{param}"
    message = err.message if err.message.startswith(param) else f"{param}: {err.message}"
    return param, message


def _refused(request: Request, viewer: Viewer, name: str | None, form: str, err: TeachloopError, prefix: str,
             values: dict[str, Any]) -> Response:
    """The page again, the form's values kept (never a key), with the error naming its field; nothing written."""
    param, message = _named(err, prefix)
    failed = Failed(form, param, message, {k: v for k, v in values.items() if k != "api_key"})
    if name is None:
        return _list_page(request, viewer, status=err.status, failed=failed)
    return _detail_page(request, viewer, name, status=err.status, failed=failed)


UrlField = Annotated[str, Form(max_length=2000)]
ShortField = Annotated[str, Form(max_length=300)]
KeyField = Annotated[str, Form(max_length=4000)]
NumberField = Annotated[str, Form(max_length=20)]
#: one value per row of the prices form (at most 100 rows, each value at most 300 characters)
PriceRows = Annotated[list[Annotated[str, StringConstraints(max_length=300)]], Form(max_length=100)]


@dataclass(frozen=True)
class UpstreamForm:
    """An upstream's fields as posted -- every form that sets an upstream arm takes these (the key is never kept).

    ``check_upstream``: probe the upstream before storing it (the form's checkbox).
    """

    base_url: str
    model: str
    api_key: str
    timeout_s: str
    connect_timeout_s: str
    max_retries: str
    check_upstream: bool

    def given(self) -> bool:
        """Whether any upstream field is filled in (a blank upstream part means "no upstream")."""
        return bool(self.base_url.strip() or self.model.strip() or self.api_key)

    def body(self, prefix: str) -> dict[str, Any]:
        """The ``upstream`` object of a REST body (blank limits keep their defaults).

        A limit that is not a number is ``InvalidInput`` naming ``{prefix}.{field}``.
        """
        body: dict[str, Any] = {"base_url": self.base_url, "model": self.model, "api_key": self.api_key}
        for field, raw, kind in (("timeout_s", self.timeout_s, float),
                                 ("connect_timeout_s", self.connect_timeout_s, float),
                                 ("max_retries", self.max_retries, int)):
            value = _number(raw, f"{prefix}.{field}", kind)
            if value is not None:
                body[field] = value
        return body

    def shown(self) -> dict[str, Any]:
        """What the form shows again when refused (everything but the key)."""
        return {"base_url": self.base_url, "model": self.model, "timeout_s": self.timeout_s,
                "connect_timeout_s": self.connect_timeout_s, "max_retries": self.max_retries,
                "check_upstream": self.check_upstream}


def upstream_form(
    base_url: UrlField = "",
    model: ShortField = "",
    api_key: KeyField = "",
    timeout_s: NumberField = "",
    connect_timeout_s: NumberField = "",
    max_retries: NumberField = "",
    check_upstream: ShortField = "",
) -> UpstreamForm:
    """The posted upstream fields (of the create, upstream, canary or shadow form)."""
    return UpstreamForm(base_url, model, api_key, timeout_s, connect_timeout_s, max_retries, bool(check_upstream))


UpstreamFields = Annotated[UpstreamForm, Depends(upstream_form)]


@router.post("/deployments")
def create_from_form(
    request: Request,
    viewer: SignedIn,
    upstream: UpstreamFields,
    name: ShortField = "",
    base_model: ShortField = "",
    adapter: ShortField = "",
) -> Response:
    """Create a deployment whose primary arm is an adapter or an upstream (``create_deployment``, as the API)."""
    require(viewer, WRITE_ROLE, "creating a deployment")
    values = {"name": name, "base_model": base_model, "adapter": adapter, **upstream.shown()}
    try:
        body: dict[str, Any] = {"name": name.strip(), "check_upstream": upstream.check_upstream}
        if base_model.strip():
            body["base_model"] = base_model.strip()
        if adapter.strip():
            body["adapter"] = adapter.strip()
        if upstream.given():
            body["upstream"] = upstream.body("upstream")
        if not body["name"]:
            raise InvalidInput("name: give the deployment a name (what clients pass as model)", param="name")
        created = service.create_deployment(serving_of(request), viewer.principal,
                                            _validated(DeploymentCreate, body))
    except TeachloopError as err:
        return _refused(request, viewer, None, "create", err, "", values)
    return RedirectResponse(f"/deployments/{quote(created['name'], safe='')}?done=created-{created['revision']}",
                            status_code=303)


def _patch(request: Request, viewer: Viewer, name: str, body: dict[str, Any]) -> Response:
    """``update_deployment`` with ``body`` (a ``PATCH /api/deployments/{name}`` body), then the deployment's page."""
    out = service.update_deployment(serving_of(request), viewer.principal, name, _validated(DeploymentPatch, body))
    return RedirectResponse(f"/deployments/{quote(name, safe='')}?done={next(iter(body))}-{out['revision']}",
                            status_code=303)


@router.post("/deployments/{name}/upstream")
def set_primary_upstream(request: Request, viewer: SignedIn, name: str, upstream: UpstreamFields) -> Response:
    """Set (or replace) the primary arm by an upstream: a PATCH with ``upstream``, probed first when checked."""
    require(viewer, WRITE_ROLE, "changing a deployment")
    try:
        return _patch(request, viewer, name, {"upstream": upstream.body("upstream"),
                                              "check_upstream": upstream.check_upstream})
    except TeachloopError as err:
        return _refused(request, viewer, name, "upstream", err, "", upstream.shown())


@dataclass(frozen=True)
class ArmForm:
    """The canary and shadow forms' fields: an adapter or an upstream, and a share."""

    percent: str
    adapter: str
    upstream: UpstreamForm

    def body(self, arm: str, what: str) -> dict[str, Any]:
        """The ``canary`` / ``shadow`` object of a PATCH body: an adapter or an upstream for ``percent`` % (1-99).

        ``arm`` is the body's field (``canary``, ``shadow``), ``what`` what the share is of (users, requests).
        """
        share = _number(self.percent, f"{arm}.percent", int)
        if share is None or not 1 <= share <= 99:
            raise InvalidInput(f"{arm}.percent: the {arm}'s share must be 1-99 % of {what}", param=f"{arm}.percent")
        adapter, has_upstream = self.adapter.strip(), self.upstream.given()
        if adapter and has_upstream:
            raise InvalidInput(f"{arm}.upstream: the {arm} is an adapter or an upstream, not both; clear one",
                               param=f"{arm}.upstream")
        if not adapter and not has_upstream:
            raise InvalidInput(f"{arm}.adapter: give the {arm} an adapter (NAME@N) or an upstream (base URL, model, "
                               "API key)", param=f"{arm}.adapter")
        if adapter:
            return {"percent": share, "adapter": adapter}
        return {"percent": share, "upstream": self.upstream.body(f"{arm}.upstream")}

    def shown(self) -> dict[str, Any]:
        """What the form shows again when refused (everything but the key)."""
        return {"percent": self.percent, "adapter": self.adapter, **self.upstream.shown()}


def arm_form(upstream: UpstreamFields, percent: NumberField = "", adapter: ShortField = "") -> ArmForm:
    """The posted canary or shadow form."""
    return ArmForm(percent, adapter, upstream)


ArmFields = Annotated[ArmForm, Depends(arm_form)]


def _set_arm(request: Request, viewer: Viewer, name: str, arm: str, unit: str, form: ArmForm) -> Response:
    require(viewer, WRITE_ROLE, "changing a deployment")
    try:
        return _patch(request, viewer, name, {arm: form.body(arm, unit), "check_upstream": form.upstream.check_upstream})
    except TeachloopError as err:
        return _refused(request, viewer, name, arm, err, arm, form.shown())


def _remove_arm(request: Request, viewer: Viewer, name: str, arm: str) -> Response:
    require(viewer, WRITE_ROLE, "changing a deployment")
    try:
        return _patch(request, viewer, name, {arm: None})
    except TeachloopError as err:
        return _refused(request, viewer, name, arm, err, arm, {})


@router.post("/deployments/{name}/canary")
def set_canary(request: Request, viewer: SignedIn, name: str, form: ArmFields) -> Response:
    """Set (or replace) the canary: an adapter or an upstream for ``percent`` % (1-99) of users."""
    return _set_arm(request, viewer, name, "canary", "users", form)


@router.post("/deployments/{name}/canary/remove")
def remove_canary(request: Request, viewer: SignedIn, name: str) -> Response:
    """End the canary (a PATCH with ``canary: null``): everyone gets the primary arm."""
    return _remove_arm(request, viewer, name, "canary")


@router.post("/deployments/{name}/shadow")
def set_shadow(request: Request, viewer: SignedIn, name: str, form: ArmFields) -> Response:
    """Set the shadow arm: an adapter or an upstream for ``percent`` % (1-99) of requests."""
    return _set_arm(request, viewer, name, "shadow", "requests", form)


@router.post("/deployments/{name}/shadow/remove")
def remove_shadow(request: Request, viewer: SignedIn, name: str) -> Response:
    """End the shadow arm (a PATCH with ``shadow: null``)."""
    return _remove_arm(request, viewer, name, "shadow")


@router.post("/deployments/{name}/prices")
def set_prices(
    request: Request,
    viewer: SignedIn,
    name: str,
    price_model: PriceRows = [],  # noqa: B006 -- FastAPI copies defaults
    price_prompt: PriceRows = [],  # noqa: B006
    price_completion: PriceRows = [],  # noqa: B006
    price_currency: PriceRows = [],  # noqa: B006
) -> Response:
    """Replace the deployment's prices: one row per model id (a row whose model id is blank is dropped)."""
    require(viewer, WRITE_ROLE, "changing a deployment")
    rows = [(m.strip(), p, c, (cur.strip() or "USD"))
            for m, p, c, cur in zip(price_model, price_prompt, price_completion, price_currency, strict=False)]
    values = {"prices": [{"model": m, "prompt": p, "completion": c, "currency": cur} for m, p, c, cur in rows]}
    try:
        prices: dict[str, Any] = {}
        for model, prompt, completion, currency in rows:
            if not model:  # a cleared row drops that price
                continue
            if model in prices:
                raise InvalidInput(f"prices.{model}: priced twice (rows of one model id)", param=f"prices.{model}")
            field = f"prices.{model}"
            prices[model] = {"prompt_per_1m": _number(prompt, f"{field}.prompt_per_1m", int),
                             "completion_per_1m": _number(completion, f"{field}.completion_per_1m", int),
                             "currency": currency}
            for key in ("prompt_per_1m", "completion_per_1m"):
                if prices[model][key] is None:
                    raise InvalidInput(f"{field}.{key}: required (minor units per 1,000,000 tokens)",
                                       param=f"{field}.{key}")
        return _patch(request, viewer, name, {"prices": prices})
    except TeachloopError as err:
        return _refused(request, viewer, name, "prices", err, "", values)


# ---------------------------------------------------------------------------------------------- confirmed changes


def _change(session: Session, viewer: Viewer, name: str, action: str, to_revision: int | None,
            percent: int | None) -> tuple[Deployment, str]:
    """Make ``action`` in ``session`` (the confirmation page runs it in a read session, which never persists)."""
    org, actor = viewer.principal.org_id, viewer.principal.key_id
    repo = Deployments(session)
    if action == "rollback":
        row = repo.rollback(org, name, to_revision=to_revision, actor=actor)
        restored = repo.history(org, name)[0].restored_from
        return row, f"restore the state of revision {restored}"
    current = DeploymentState.of(repo.get(org, name))
    if current.canary_version_id is None and current.canary_upstream_id is None:
        raise Conflict(f"deployment {name!r} has no canary to {'promote' if action == 'promote' else 'split'}",
                       param="canary")
    if action == "promote":  # the canary arm, adapter or upstream, becomes the primary one (issue 17)
        state = replace(current, adapter_version_id=current.canary_version_id, upstream_id=current.canary_upstream_id,
                        canary_version_id=None, canary_upstream_id=None, canary_percent=0)
        what = "upstream" if current.canary_upstream_id else "version"
        sentence = f"serve the canary {what} to everyone and end the canary"
    else:
        if percent is None or not 1 <= percent <= 99:
            raise InvalidInput("the canary's share must be 1-99 %", param="percent")
        state = replace(current, canary_percent=percent)  # keeps an upstream arm, the shadow and prices (issue 17)
        sentence = f"serve the canary to {percent} % of users"
    row, _ = repo.update(org, name, state, actor=actor)
    return row, sentence


_ACTIONS = {"rollback": "Roll back", "promote": "Promote the canary", "split": "Change the canary split"}


def _action(action: str) -> str:
    if action not in _ACTIONS:
        raise InvalidInput(f"unknown change {action!r}", param="action")
    return action


@router.get("/deployments/{name}/{action}")
def confirm_change(
    request: Request, viewer: SignedIn, name: str, action: str, to_revision: str = "", percent: str = ""
) -> Response:
    """What the change would do, and the button that does it."""
    require(viewer, Role.MEMBER, "changing a deployment")
    action = _action(action)
    revision = _int(to_revision, "to_revision")
    share = _int(percent, "percent")
    with app_deps(request).database.session(write=False) as session:
        context = _detail(session, viewer.principal.org_id, name)
        row, sentence = _change(session, viewer, name, action, revision, share)  # a dry run: rolled back
        after = _state_view(session, viewer.principal.org_id, DeploymentState.of(row))
    return page(request, "confirm_deployment.html", action=action, title=_ACTIONS[action], sentence=sentence,
                after=after, to_revision=revision, percent=share, **context)


def _int(raw: str, param: str) -> int | None:
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{param} must be a whole number, got {raw!r}", param=param) from None


@router.post("/deployments/{name}/{action}")
def apply_change(
    request: Request,
    viewer: SignedIn,
    name: str,
    action: str,
    to_revision: Annotated[str, Form(max_length=12)] = "",
    percent: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    """Make the confirmed change, then resync this server's adapters."""
    require(viewer, Role.MEMBER, "changing a deployment")
    action = _action(action)
    revision = _int(to_revision, "to_revision")
    share = _int(percent, "percent")
    with app_deps(request).database.session() as session:
        row, _ = _change(session, viewer, name, action, revision, share)
        revision_now = row.revision
    serving_of(request).sync_adapters()
    return RedirectResponse(f"/deployments/{name}?done={action}-{revision_now}", status_code=303)


__all__ = ["StateView", "deployment_rows", "primaries_at", "router"]
