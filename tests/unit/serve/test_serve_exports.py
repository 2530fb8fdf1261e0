"""The declared public surface of ``teachloop.serve``, and that importing it leaves torch unimported."""

from __future__ import annotations

import subprocess
import sys

import teachloop.serve as serve


def test_all_is_declared_sorted_and_importable() -> None:
    exported = list(serve.__all__)
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), n))
    for name in exported:
        assert getattr(serve, name, None) is not None, name
    contract = {"Serving", "ServingConfig", "Scheduler", "TraceWriter", "AdapterPool", "publish_adapter",
                "export_jsonl", "export_hf", "ModelNotFound"}
    assert contract <= set(exported)


def test_importing_serve_does_not_import_torch() -> None:
    code = "import sys, teachloop.serve, teachloop.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
