"""HTTP routers. ``PUBLIC`` routers need no key; every router in ``PROTECTED`` gets ``require_principal``."""

from fastapi import APIRouter

from teachloop.app.routes import (
    billing,
    datasets,
    deployments,
    envs,
    evals,
    loops,
    market,
    meta,
    metrics,
    models,
    openai,
    requests,
    runs,
    tinker,
    traces,
    work,
)
from teachloop.app.routes import completions as completions_api
from teachloop.app.routes import responses as responses_api

PUBLIC: list[APIRouter] = [meta.public]
PROTECTED: list[APIRouter] = [meta.api, openai.router, responses_api.router, completions_api.router, deployments.router,
                              traces.router, metrics.router, loops.router, datasets.router, runs.router, envs.router,
                              evals.router, models.router, market.router, requests.router,
                              billing.router, tinker.router, work.router]

__all__ = ["PROTECTED", "PUBLIC"]
