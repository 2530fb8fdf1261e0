"""The public surface of ``teachloop.store`` and ``teachloop.app``: declared, importable, sorted."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["teachloop.store", "teachloop.store.repos", "teachloop.store.schema", "teachloop.app"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_declared_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), n)), "keep __all__ sorted"
    for attr in exported:
        assert getattr(module, attr, None) is not None, f"{name}.{attr}"


def test_the_contract_later_layers_build_on() -> None:
    import teachloop.app as app
    import teachloop.store as store

    assert {"Database", "BlobStore", "JobQueue", "Worker", "ApiKeys", "Tenancy", "AuditLog"} <= set(store.__all__)
    assert {"AppDeps", "create_app", "require_principal", "CurrentPrincipal", "job_handlers"} <= set(app.__all__)
