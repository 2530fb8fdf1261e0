"""HTTP routers. ``PUBLIC`` routers need no key; every router in ``PROTECTED`` gets ``require_principal``."""

from fastapi import APIRouter

from teachloop.app.routes import completions as completions_api
from teachloop.app.routes import envs, evals, meta, metrics, models, runs
from teachloop.app.routes import responses as responses_api
from teachloop.loop import rest as loop_rest
from teachloop.serve import openai_api, rest

PUBLIC: list[APIRouter] = [meta.public]
PROTECTED: list[APIRouter] = [meta.api, openai_api.router, rest.router, loop_rest.router, metrics.router,
                              responses_api.router, completions_api.router,
                              runs.router, envs.router, evals.router, models.router]

__all__ = ["PROTECTED", "PUBLIC"]
