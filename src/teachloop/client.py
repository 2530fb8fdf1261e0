"""``teachloop.Client``: a synchronous, typed Python client of the teachloop REST API.

    from teachloop import Client

    with Client("http://127.0.0.1:8000", api_key="tl_...") as tl:
        run = tl.create_run({"name": "arith", "algorithm": "grpo", "steps": 20, "rl": {"env": "arithmetic"}})
        run = tl.wait_run(run.id)
        print(tl.run_metrics(run.id).data[-1].values)
        tl.deploy_run("arith", run.id)

Methods return the API's own pydantic models (``teachloop.core.api``; the
deployment and adapter methods: the API's JSON records); errors come back as
teachloop's exceptions (``NotFound``, ``InvalidInput`` with its ``param``,
``Conflict``, ...), rebuilt from the OpenAI-shaped error body. A request that
fails to connect, or answers 429 or 5xx, is retried with exponential backoff
(``retries`` times); every POST carries an ``Idempotency-Key`` (the same one on
each retry), so a retried run creation never makes a second run.
``update_deployment`` is a ``PATCH``: it sends only the fields given (``KEEP``,
their default, leaves one as it is; ``None`` clears it). ``api_key`` defaults
to ``$TEACHLOOP_API_KEY`` and ``base_url`` to ``$TEACHLOOP_URL``. Only httpx
and pydantic are imported (``publish_env`` of a folder imports teachloop's
catalog to archive it).
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel

from teachloop.core import errors
from teachloop.core.api import (
    CheckpointList,
    EnvCheck,
    EnvInfo,
    EnvList,
    EnvPublished,
    EnvVersion,
    EnvVersionList,
    EvalRequest,
    EvalResultList,
    Evaluation,
    EvaluationList,
    ModelList,
    Run,
    RunList,
    RunMetrics,
)
from teachloop.core.upstream import UpstreamSpec

M = TypeVar("M", bound=BaseModel)


class Keep(enum.Enum):
    """``update_deployment``'s default for a field: leave it as it is (``None`` clears it)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


def _upstream(spec: UpstreamSpec | dict[str, Any] | None) -> dict[str, Any] | None:
    """An upstream as the API takes it: the spec's fields, its key in clear (``SecretStr`` dumps as stars)."""
    if not isinstance(spec, UpstreamSpec):
        return spec
    return {**spec.model_dump(mode="json"), "api_key": spec.api_key.get_secret_value()}

_BY_STATUS: dict[int, type[errors.TeachloopError]] = {
    400: errors.InvalidInput, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
    409: errors.Conflict, 413: errors.PayloadTooLarge, 422: errors.InvalidConfig, 503: errors.ServiceUnavailable,
}


class ApiError(errors.TeachloopError):
    """An error answer with a status teachloop has no class for (e.g. 500); ``http_status`` is the answer's."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 500, code: str = "error") -> None:
        super().__init__(message, param=param)
        self.http_status = status
        self.error_code = code


def _error(response: httpx.Response) -> errors.TeachloopError:
    try:
        body = response.json()["error"]
        message, param, code = str(body.get("message")), body.get("param"), str(body.get("code"))
    except (ValueError, KeyError, TypeError, AttributeError):
        message, param, code = response.text[:500] or response.reason_phrase, None, "error"
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        return ApiError(message, param=param, status=response.status_code, code=code)
    return cls(message, param=param)


class Client:
    """The teachloop REST API (see the module docstring)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, backoff_s: float = 0.5, transport: httpx.BaseTransport | None = None) -> None:
        url = base_url or os.environ.get("TEACHLOOP_URL")
        if not url:
            raise errors.ConfigurationError("give base_url or set TEACHLOOP_URL (e.g. http://127.0.0.1:8000)",
                                            param="base_url")
        key = api_key or os.environ.get("TEACHLOOP_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    # ---------------------------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                idempotency_key: str | None = None, files: dict[str, tuple[str, bytes, str]] | None = None) -> Any:
        """Send one request (retried as the module docstring says); the decoded JSON body, or raise.

        ``files`` sends a multipart body: field -> (filename, bytes, content type).
        """
        headers = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=json, params=query, headers=headers, files=files)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError) as err:
                if attempt == self.retries:
                    raise errors.ServiceUnavailable(f"cannot reach {self._http.base_url}: {err}") from None
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code not in (429, 500, 502, 503, 504) or attempt == self.retries:
                    raise _error(response)
                wait = response.headers.get("retry-after")
                if wait and wait.isdigit():
                    time.sleep(min(float(wait), 30.0))
                    continue
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, model: type[M], path: str, **params: Any) -> M:
        return model.model_validate(self.request("GET", path, params=params))

    def _post(self, model: type[M], path: str, body: Any = None, *, idempotency_key: str | None = None) -> M:
        return model.model_validate(self.request("POST", path, json=body, idempotency_key=idempotency_key))

    # ---------------------------------------------------------------------------------------------- runs
    def create_run(self, config: dict[str, Any], *, idempotency_key: str | None = None) -> Run:
        """Queue a training run (a worker runs it); ``InvalidConfig`` (422) names a bad field."""
        return self._post(Run, "/api/runs", {"config": config}, idempotency_key=idempotency_key)

    def list_runs(self, limit: int = 50) -> RunList:
        """Training runs, newest first."""
        return self._get(RunList, "/api/runs", limit=limit)

    def get_run(self, run_id: str) -> Run:
        """One run."""
        return self._get(Run, f"/api/runs/{run_id}")

    def run_metrics(self, run_id: str, phase: str | None = None) -> RunMetrics:
        """A run's metrics in step order (``phase``: train or eval)."""
        return self._get(RunMetrics, f"/api/runs/{run_id}/metrics", phase=phase)

    def run_checkpoints(self, run_id: str) -> CheckpointList:
        """A run's checkpoints."""
        return self._get(CheckpointList, f"/api/runs/{run_id}/checkpoints")

    def cancel_run(self, run_id: str) -> Run:
        """Cancel a queued run, or stop a running one at its next step."""
        return self._post(Run, f"/api/runs/{run_id}/cancel")

    def resume_run(self, run_id: str) -> Run:
        """Queue a failed or cancelled run again from its last checkpoint."""
        return self._post(Run, f"/api/runs/{run_id}/resume")

    def wait_run(self, run_id: str, *, timeout_s: float = 3600.0, poll_s: float = 1.0) -> Run:
        """Poll until the run completed, failed or was cancelled; the final record (``TimeoutError`` after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.get_run(run_id)
            if run.status in ("completed", "failed", "cancelled"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    # ---------------------------------------------------------------------------------------------- deployments
    def create_deployment(
        self, name: str, *, base_model: str | None = None, adapter: str | None = None, run: str | None = None,
        canary: str | None = None, canary_percent: int = 0, upstream: UpstreamSpec | dict[str, Any] | None = None,
        prices: dict[str, dict[str, Any]] | None = None, check_upstream: bool = True,
    ) -> dict[str, Any]:
        """Create deployment ``name``: a base model (default: the server's) and an adapter, run or upstream.

        ``adapter`` and ``canary`` are ``NAME@N``, ``NAME`` (newest version) or an ``av_...`` id; ``run``
        publishes a completed run's final adapter as adapter ``name`` and serves it; ``upstream`` (its key
        included) makes an OpenAI-compatible endpoint the primary arm; ``prices`` maps model ids to
        ``{"prompt_per_1m", "completion_per_1m", "currency"}``. The deployment as the API shows it.
        """
        if canary_percent and canary is None:
            raise errors.InvalidInput("canary_percent needs canary", param="canary_percent")
        body: dict[str, Any] = {"name": name, "base_model": base_model, "adapter": adapter, "run": run,
                                "upstream": _upstream(upstream), "prices": prices}
        body = {k: v for k, v in body.items() if v is not None}
        if canary is not None:
            body["canary"] = {"adapter": canary, "percent": canary_percent}
        if not check_upstream:
            body["check_upstream"] = False
        return dict(self.request("POST", "/api/deployments", json=body))

    def update_deployment(
        self, name: str, *, adapter: str | Keep | None = KEEP, canary: str | Keep | None = KEEP,
        canary_percent: int | None = None, upstream: UpstreamSpec | dict[str, Any] | Keep | None = KEEP,
        prices: dict[str, dict[str, Any]] | Keep | None = KEEP, check_upstream: bool = True,
    ) -> dict[str, Any]:
        """Change what deployment ``name`` serves; a field left as ``KEEP`` keeps its value (``PATCH``).

        ``adapter=None`` serves the base model alone, ``canary=None`` ends the canary, ``upstream=None``
        goes back from an upstream to the adapter. A canary is replaced whole: ``canary`` (a reference)
        needs ``canary_percent``. The deployment's ``revision`` grows only when its state changed.
        """
        if canary_percent is not None and not isinstance(canary, str):
            raise errors.InvalidInput("canary_percent needs canary (the adapter reference it applies to)",
                                      param="canary_percent")
        if isinstance(canary, str) and canary_percent is None:
            raise errors.InvalidInput("canary needs canary_percent (a canary is replaced whole)",
                                      param="canary_percent")
        fields = {"adapter": adapter, "upstream": upstream if upstream is KEEP else _upstream(upstream),
                  "prices": prices,
                  "canary": {"adapter": canary, "percent": canary_percent} if isinstance(canary, str) else canary}
        body: dict[str, Any] = {k: v for k, v in fields.items() if v is not KEEP}
        if not check_upstream:
            body["check_upstream"] = False
        return dict(self.request("PATCH", f"/api/deployments/{name}", json=body))

    def rollback_deployment(self, name: str, to_revision: int | None = None) -> dict[str, Any]:
        """Restore the state before the current one (or revision ``to_revision``'s) as a new revision."""
        body = {"to_revision": to_revision} if to_revision is not None else None
        return dict(self.request("POST", f"/api/deployments/{name}/rollback", json=body))

    def deploy_run(self, name: str, run_id: str) -> dict[str, Any]:
        """Create deployment ``name`` serving the final adapter of a completed run (published as adapter ``name``)."""
        return self.create_deployment(name, run=run_id)

    def deployments(self) -> list[dict[str, Any]]:
        """The organisation's deployments."""
        return list(self.request("GET", "/api/deployments")["data"])

    def deployment(self, name: str) -> dict[str, Any]:
        """One deployment (``NotFound`` when the organisation has none of that name)."""
        return dict(self.request("GET", f"/api/deployments/{name}"))

    def deployment_history(self, name: str) -> list[dict[str, Any]]:
        """Every change of deployment ``name``, newest first."""
        return list(self.request("GET", f"/api/deployments/{name}/history")["data"])

    def adapters(self, name: str | None = None) -> list[dict[str, Any]]:
        """The organisation's adapter versions (of ``name``), newest first per name."""
        return list(self.request("GET", "/api/adapters", params={"name": name})["data"])

    # ---------------------------------------------------------------------------------------------- environments
    def list_envs(self) -> EnvList:
        """Installed environments and the organisation's published versions."""
        return self._get(EnvList, "/api/envs")

    def env_info(self, ref: str) -> EnvInfo:
        """One environment (NAME, NAME@VERSION, rg:..., vf:...)."""
        return self._get(EnvInfo, f"/api/envs/{ref}")

    def env_versions(self, name: str) -> EnvVersionList:
        """Published versions of ``name``."""
        return self._get(EnvVersionList, f"/api/envs/{name}/versions")

    def env_evals(self, name: str, limit: int = 50) -> EvalResultList:
        """Stored evaluation results of ``name``."""
        return self._get(EvalResultList, f"/api/envs/{name}/evals", limit=limit)

    def check_env(self, ref: str) -> EnvCheck:
        """Run the environment checks on the server."""
        return self._post(EnvCheck, f"/api/envs/{ref}/check")

    def yank_env(self, ref: str, reason: str | None = None) -> EnvVersion:
        """Yank a published NAME@VERSION."""
        return self._post(EnvVersion, f"/api/envs/{ref}/yank", {"reason": reason})

    def env_checks(self, ref: str) -> EnvCheck:
        """The checks a published version passed when it was published."""
        return self._get(EnvCheck, f"/api/envs/{ref}/checks")

    def publish_env(self, package: str | Path | bytes, *, filename: str | None = None) -> EnvPublished:
        """Check and publish an environment package on the server (``teachloop env publish``).

        ``package``: the package folder (archived here exactly as ``teachloop env publish`` archives it),
        a ``.tar.gz`` or ``.zip`` file of it, or such an archive's bytes. A failing check is ``InvalidInput``
        naming each one; the same version with other content is ``Conflict``.
        """
        if isinstance(package, bytes):
            data, name = package, filename or "package.tar.gz"
        else:
            path = Path(package)
            if path.is_dir():
                from teachloop.catalog.environments import archive

                data, name = archive(path), filename or f"{path.resolve().name}.tar.gz"
            else:
                try:
                    data = path.read_bytes()
                except OSError as err:
                    raise errors.InvalidInput(f"cannot read {path}: {err}", param="package") from None
                name = filename or path.name
        kind = "application/zip" if name.lower().endswith(".zip") else "application/gzip"
        return EnvPublished.model_validate(self.request("POST", "/api/envs", files={"package": (name, data, kind)}))

    # ---------------------------------------------------------------------------------------------- evaluations
    def start_eval(self, env: str, **options: Any) -> Evaluation:
        """Queue an evaluation (options: the fields of ``EvalRequest``: model, adapter, run, n, ...)."""
        body = EvalRequest(env=env, **options).model_dump(exclude_defaults=True)
        return self._post(Evaluation, "/api/evals", {"env": env, **body})

    def list_evals(self, limit: int = 50) -> EvaluationList:
        """Evaluations started over the API, newest first."""
        return self._get(EvaluationList, "/api/evals", limit=limit)

    def get_eval(self, eval_id: str) -> Evaluation:
        """One evaluation."""
        return self._get(Evaluation, f"/api/evals/{eval_id}")

    def wait_eval(self, eval_id: str, *, timeout_s: float = 3600.0, poll_s: float = 1.0) -> Evaluation:
        """Poll until the evaluation succeeded, failed or was cancelled; the final record (``TimeoutError`` after)."""
        deadline = time.monotonic() + timeout_s
        while True:
            evaluation = self.get_eval(eval_id)
            if evaluation.status in ("succeeded", "failed", "cancelled"):
                return evaluation
            if time.monotonic() > deadline:
                raise TimeoutError(f"evaluation {eval_id} is still {evaluation.status} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    # ---------------------------------------------------------------------------------------------- models
    def list_models(self) -> ModelList:
        """The server's cached base models."""
        return self._get(ModelList, "/api/models")


__all__ = ["KEEP", "ApiError", "Client", "Keep"]
