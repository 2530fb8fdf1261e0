"""HTTP routers. ``PUBLIC`` routers need no key; every router in ``PROTECTED`` gets ``require_principal``."""

from fastapi import APIRouter

from teachloop.app.routes import meta
from teachloop.loop import rest as loop_rest
from teachloop.serve import openai_api, rest

PUBLIC: list[APIRouter] = [meta.public]
PROTECTED: list[APIRouter] = [meta.api, openai_api.router, rest.router, loop_rest.router]

__all__ = ["PROTECTED", "PUBLIC"]
