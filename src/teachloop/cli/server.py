"""``teachloop up``, ``serve`` and ``worker``: the long-running processes.

- ``up``: everything on one machine -- check the configured model
  (``TEACHLOOP_MODEL``; an unknown one fails before anything is written), migrate
  the database, create the first organisation and key if there is none, pull the
  model if it is not cached, then serve the API (inference included) with an in-process worker.
- ``serve``: the API and inference only (the database must already be migrated).
- ``worker``: a worker only, for scaling out next to ``serve`` on PostgreSQL.

Inference (``/v1/chat/completions``) runs when the configured model
(``TEACHLOOP_MODEL``) is in the cache: the engine is loaded and the serving
scheduler and trace writer start with the server. Without the model, or with
``--no-inference``, the rest of the API runs and chat completions answer 503.

Log lines are text, or one JSON object per line with ``--log-format json``
(``TEACHLOOP_LOG_FORMAT``; ``core.logs``), every line of a chat request
carrying its ``trace_id``. These commands start threads and the server's event
loop; nothing below ``cli/`` does. Stop them with Ctrl+C or SIGTERM: the worker finishes its
current job's bookkeeping and the server drains.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from teachloop import __version__
from teachloop.cli._common import console, err_console, settings
from teachloop.cli.admin import errors
from teachloop.core.errors import ConfigurationError, NotFound
from teachloop.core.settings import Settings

if TYPE_CHECKING:  # heavy imports stay inside the commands
    from teachloop.app import AppDeps

app = typer.Typer()

_HOST_HELP = "Address to bind (default: $TEACHLOOP_HOST or 127.0.0.1)."
_PORT_HELP = "Port to listen on (default: $TEACHLOOP_PORT or 8000)."
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")  # what `models pull` accepts


_LOG_FORMAT_HELP = "Log lines: text, or json (one object per line, trace_id on a request's lines; "\
    "default: $TEACHLOOP_LOG_FORMAT or text)."


def _logging(config: Settings, log_format: str | None = None) -> Settings:
    """Configure the root logger (``core.logs``); returns ``config`` with ``--log-format`` applied."""
    from teachloop.core.logs import configure_logging

    if log_format is not None:
        if log_format not in ("text", "json"):
            raise ConfigurationError(f"--log-format must be text or json, got {log_format!r}", param="log_format")
        config = config.model_copy(update={"log_format": log_format})
    configure_logging(config.log_format)
    return config


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a one-line error saying what to change."""
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"port must be 1..65535, got {port}", param="port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {err.strerror or err}; pick another with --port or TEACHLOOP_PORT",
            param="port",
        ) from None
    return sock


def _check_model(config: Settings) -> None:
    """Fail now, before anything is written, when ``config.model`` can be neither found nor pulled.

    A cached name, an existing folder, a known name or a hub id ``org/name`` pass
    (the last two are pulled by ``_ensure_model``); an unknown name, a missing folder
    or a corrupt cache raise their one-line ``NotFound`` / ``ModelError``.
    """
    from teachloop.engine.models import KNOWN_MODELS, resolve_model

    try:
        resolve_model(config, config.model, download=False)
    except NotFound:
        if config.model in KNOWN_MODELS or _HUB_ID.fullmatch(config.model):
            return  # not cached yet: _ensure_model pulls it
        raise


def _ensure_model(config: Settings) -> None:
    """Make the configured model (``TEACHLOOP_MODEL``) ready: pull it first if it is not cached."""
    from teachloop.engine.models import resolve_model

    console.print(f"checking the model {config.model!r} (pulled on first run) ...", highlight=False, soft_wrap=True)
    path = resolve_model(config, config.model, progress=True)
    console.print(f"model ready at {path}", highlight=False, soft_wrap=True)


def _start_serving(deps: AppDeps, config: Settings, *, inference: bool) -> str:
    """Build and start ``deps.serving`` (with the engine when the model is there); returns the banner line."""
    from teachloop.core.errors import TeachloopError
    from teachloop.serve import Serving

    reason = "off (--no-inference)"
    if inference and config.engine != "torch":
        reason = f"off (TEACHLOOP_ENGINE={config.engine} cannot serve; the worker trains on it)"
    elif inference:
        try:
            from teachloop.engine.factory import model_path

            model_path(config, config.model, pull=False)
        except TeachloopError as err:
            reason = f"off ({err})"
        else:
            from teachloop.engine.factory import load_model

            console.print(f"loading {config.model!r} for inference ...", highlight=False, soft_wrap=True)
            from teachloop.serve import ServingConfig

            loaded = load_model(config, config.model, pull=False)
            engine: Any = loaded.engine  # the torch engine: it has the batching seam serving drives
            if hasattr(engine, "prefix"):  # the torch engine's prompt-prefix cache
                engine.prefix.max_bytes = config.prefix_cache_mb * 1024 * 1024
            deps.engine = engine
            deps.serving = Serving(
                deps.database, deps.blobs, engine=engine, renderer=loaded.renderer,
                base_model=config.model, config=ServingConfig(prefix_cache=config.prefix_cache_mb > 0),
            )
            deps.serving.start()
            limits = deps.serving.config
            return f"{config.model} on {engine.device} (batch up to {limits.max_rows} rows, traces on)"
    deps.serving = Serving(deps.database, deps.blobs)
    deps.serving.start()
    return reason


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _banner(deps: AppDeps, host: str, port: int, worker: str, inference: str) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    lines = [
        f"[bold]teachloop {__version__}[/] is serving at {url}",
        f"  console   {url}/  (sign in with a password or a link from `teachloop admin signin-link EMAIL`)",
        f"  health    {url}/healthz",
        f"  API       {url}/api/whoami  (header: Authorization: Bearer $TEACHLOOP_API_KEY)",
        f"  OpenAI    {url}/v1  (inference: {inference})",
        f"  worker    {worker}",
        f"  database  {deps.database.display_url}",
        f"  blobs     {deps.blobs.url}",
        "  API keys  `teachloop admin keys create` (first run: `teachloop admin init`)",
        "Press Ctrl+C to stop.",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _run_server(deps: AppDeps, host: str, port: int, *, worker: bool, inference: bool = True) -> None:
    """Serve ``deps`` on ``host:port`` (with an in-process worker thread if asked) until stopped."""
    import uvicorn

    from teachloop.app import job_handlers
    from teachloop.store import Worker
    from teachloop.web import create_console_app

    stop = threading.Event()
    thread: threading.Thread | None = None
    sock: socket.socket | None = None
    try:
        sock = _listen(host, port)
        serving = _start_serving(deps, deps.settings, inference=inference)
        described = "none in this process; start some with `teachloop worker`"
        if worker:
            handlers = job_handlers(deps)
            runner = Worker(deps.queue, handlers)
            thread = threading.Thread(
                target=runner.run_forever, args=(stop,), name="teachloop-worker", daemon=True
            )
            described = f"in-process ({runner.worker_id}; kinds: {', '.join(sorted(handlers))})"
        _banner(deps, host, port, described, serving)
        # json: uvicorn's own lines go through the root handler too, as JSON (its default config prints text)
        log_config = None if deps.settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
        server = uvicorn.Server(
            uvicorn.Config(create_console_app(deps), log_level="info", access_log=False, log_config=log_config)
        )
        if thread is not None:
            thread.start()
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal:
            # turn both into KeyboardInterrupt so the cleanup below runs and we exit 0.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        console.print("stopped", highlight=False)
    finally:
        stop.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=30)
        if sock is not None:
            sock.close()
        deps.close()


@app.command()
def up(
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP, show_default=False),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP, show_default=False),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not run a worker in this process."),
    skip_model: bool = typer.Option(
        False,
        "--skip-model",
        envvar="TEACHLOOP_SKIP_MODEL_PULL",
        help="Do not check or pull the configured model ($TEACHLOOP_MODEL).",
    ),
    no_inference: bool = typer.Option(False, "--no-inference", help="Do not load the model; /v1 answers 503."),
    log_format: str | None = typer.Option(None, "--log-format", help=_LOG_FORMAT_HELP, show_default=False),
) -> None:
    """Start teachloop on this machine: database, first key, model, API and worker."""
    from teachloop.app import AppDeps
    from teachloop.cli.admin import new_signin_link, show_new_key, show_signin_link
    from teachloop.store import BlobStore, Database, bootstrap

    with errors():
        config = _logging(settings(), log_format)
        host, port = host or config.host, port or config.port
        _listen(host, port).close()  # fail before the model pull, not after it
        if not skip_model:
            _check_model(config)  # an unknown TEACHLOOP_MODEL fails before the database is touched
        database = Database.connect(config.database_url)
        try:
            database.migrate()
            with database.session() as session:
                first = bootstrap(session)
                # the first owner signs in to the console with a single-use link until they set a password
                link = new_signin_link(session, first.org, first.owner.email) if (
                    first.key is not None or not first.owner.password_hash) else None
            if first.key is not None:
                console.print(f"first run: created organisation {first.org.name!r}", highlight=False)
                show_new_key(first.key.secret, first.org.name, first.owner.email, "owner")
            if link is not None:
                show_signin_link(link, first.owner.email, _base_url(host, port))
            if not skip_model:
                _ensure_model(config)
            deps = AppDeps(config, database, BlobStore(config.blob_url))
        except BaseException:
            database.close()
            raise
        _run_server(deps, host, port, worker=not no_worker, inference=not no_inference)


@app.command()
def serve(
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP, show_default=False),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP, show_default=False),
    no_inference: bool = typer.Option(False, "--no-inference", help="Do not load the model; /v1 answers 503."),
    log_format: str | None = typer.Option(None, "--log-format", help=_LOG_FORMAT_HELP, show_default=False),
) -> None:
    """Serve the API and inference (no worker, no migrations: run `teachloop up` or `teachloop admin init` first)."""
    from teachloop.app import AppDeps

    with errors():
        config = _logging(settings(), log_format)
        deps = AppDeps.from_settings(config)
        _run_server(deps, host or config.host, port or config.port, worker=False, inference=not no_inference)


@app.command()
def worker(
    worker_id: str | None = typer.Option(
        None, "--id", help="Name of this worker in job leases (default: host:pid:random)."
    ),
    poll_interval: float = typer.Option(
        1.0, "--poll-interval", min=0.01, help="Seconds between polls when idle."
    ),
    lease_seconds: float = typer.Option(
        60.0, "--lease", min=1.0, help="Seconds a job stays leased without a heartbeat."
    ),
) -> None:
    """Run a worker only: claims and runs background jobs (several may run against PostgreSQL)."""
    from teachloop.app import AppDeps, job_handlers
    from teachloop.store import Worker

    with errors():
        deps = AppDeps.from_settings(_logging(settings()))
        stop = threading.Event()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            err_console.print(
                f"{signal.Signals(signum).name}: stopping after the current job (again to abort)"
            )
            stop.set()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        handlers = job_handlers(deps)
        runner = Worker(deps.queue, handlers, worker_id, poll_interval, lease_seconds=lease_seconds)
        console.print(
            f"worker {runner.worker_id} on {deps.database.display_url} (kinds: {', '.join(sorted(handlers))})",
            highlight=False,
        )
        try:
            runner.run_forever(stop)
        finally:
            deps.close()


__all__ = ["app"]
