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

    store_names = {"Database", "BlobStore", "JobQueue", "Worker", "ApiKeys", "Tenancy", "AuditLog"}
    app_names = {"AppDeps", "create_app", "require_principal", "CurrentPrincipal", "job_handlers"}
    assert store_names <= set(store.__all__)
    assert app_names <= set(app.__all__)
