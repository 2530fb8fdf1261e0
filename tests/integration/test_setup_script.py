"""scripts/setup.sh: a failed install stops the script and leaves no "done" stamp.

Each test runs the real script in a throw-away project folder with its own ``.venv``
(created without pip; a ``.pth`` file lends it this checkout's pip and setuptools, never
this checkout's site-packages), offline (``PIP_NO_INDEX``), so nothing is downloaded and
``/work/main/.venv`` is never touched. A stand-in ``torch`` package decides whether the
torch step runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "teachloop"
version = "0.0.1"
dependencies = [{deps}]

[tool.setuptools.packages.find]
where = ["src"]
"""


def _project(tmp_path: Path, *, deps: str = "", fake_torch: bool) -> Path:
    """A minimal project folder with scripts/setup.sh and a pip-less venv lent pip + setuptools."""
    root = tmp_path / "proj"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SETUP, root / "scripts" / "setup.sh")
    (root / "pyproject.toml").write_text(PYPROJECT.format(deps=deps))
    pkg = root / "src" / "teachloop"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.0.1"\n')

    shim = tmp_path / "shim"
    shim.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    lent = ["pip", "setuptools", "_distutils_hack"]
    lent += [p.name for p in site.glob("*.dist-info") if p.name.split("-")[0] in ("pip", "setuptools")]
    for name in lent:  # setuptools finds its own commands through its dist-info's entry points
        (shim / name).symlink_to(site / name)
    if fake_torch:
        (shim / "torch").mkdir()
        (shim / "torch" / "__init__.py").write_text('__version__ = "0.0-stand-in"\n')

    venv = root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # The path, then what setuptools' own distutils-precedence.pth does.
    Path(venv_site, "teachloop-test-shim.pth").write_text(
        f"{shim}\nimport _distutils_hack; _distutils_hack.add_shim()\n"
    )
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's inverted spelling: build with the venv's setuptools
    }
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh"), *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def _stamps(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".venv").glob(".teachloop-*"))


@pytest.mark.slow
def test_a_failed_package_install_stops_without_a_stamp(tmp_path: Path) -> None:
    root = _project(tmp_path, deps='"teachloop-no-such-dependency==9.9"', fake_torch=True)
    done = _run(root)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "setup: error: could not install teachloop" in done.stderr
    assert _stamps(root) == []


@pytest.mark.slow
def test_a_failed_torch_install_stops_before_the_package(tmp_path: Path) -> None:
    root = _project(tmp_path, fake_torch=False)
    done = _run(root)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "setup: error: could not install" in done.stderr and "torch==2.13.0" in done.stderr
    assert "could not install teachloop" not in done.stderr  # stopped at torch, before the package
    assert _stamps(root) == []


@pytest.mark.slow
def test_a_successful_install_writes_the_stamp_and_reruns_cheaply(tmp_path: Path) -> None:
    root = _project(tmp_path, fake_torch=True)
    done = _run(root, "dev")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "setup: teachloop 0.0.1 torch 0.0-stand-in" in done.stdout
    assert len(_stamps(root)) == 1 and _stamps(root)[0].endswith("-dev")
    again = _run(root, "dev")
    assert again.returncode == 0 and again.stdout == ""  # the stamp short-circuits the rerun
