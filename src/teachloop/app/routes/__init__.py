"""HTTP routers. ``PUBLIC`` routers need no key; every router in ``PROTECTED`` gets ``require_principal``."""

from fastapi import APIRouter

from teachloop.app.routes import meta

PUBLIC: list[APIRouter] = [meta.public]
PROTECTED: list[APIRouter] = [meta.api]

__all__ = ["PROTECTED", "PUBLIC"]
