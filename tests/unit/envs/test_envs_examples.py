"""The example environments under examples/environments pass every publish-time check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from teachloop.envs import check_environment

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "environments"


@pytest.mark.parametrize("name", ["capital-lookup", "capitals.json"])
def test_example_passes_env_check(name: str) -> None:
    report = asyncio.run(check_environment(str(EXAMPLES / name), offline=False))
    assert report.ok, report.to_dict()
    assert [r.name for r in report.results if r.status == "skip"] in (["imports_offline"],
                                                                       ["imports_offline", "manifest"])
