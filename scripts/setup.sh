#!/usr/bin/env bash
# Create .venv and install teachloop with the given extras (default: none).
#
#   scripts/setup.sh            # runtime only      (used by `make up`)
#   scripts/setup.sh dev        # + test/lint tools  (used by `make test`)
#
# On a machine without an NVIDIA GPU the CPU build of torch==2.13.0 is installed
# *before* anything that depends on torch, so pip never pulls a multi-GB CUDA build.
# Re-running is cheap: a stamp records what was installed for which pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
fi
PIP=("$VENV/bin/python" -m pip)

stamp="$VENV/.teachloop-$(sha256sum pyproject.toml | cut -c1-16)-${EXTRAS:-base}"
if [ -f "$stamp" ]; then
  exit 0
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch==2.13.0 (CUDA build)"
    "${PIP[@]}" install -q torch==2.13.0
  else
    # Prefer a CPU build that pip can already see (a local wheel or mirror); else the CPU index.
    url=$("${PIP[@]}" install --dry-run --quiet --no-deps --report - torch==2.13.0 2>/dev/null \
          | "$VENV/bin/python" -c 'import json,sys,urllib.parse as u; r=json.load(sys.stdin)["install"]; print(u.unquote(r[0]["download_info"]["url"]) if r else "")' || true)
    if [[ "$url" == *"+cpu"* ]]; then
      echo "setup: no GPU, installing CPU torch==2.13.0 from $url"
      "${PIP[@]}" install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
    else
      echo "setup: no GPU, installing CPU torch==2.13.0 from the PyTorch CPU index"
      "${PIP[@]}" install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi

spec="."
if [ -n "$EXTRAS" ]; then spec=".[$EXTRAS]"; fi
"${PIP[@]}" install -q -e "$spec" 2>&1 | grep -vE "is ignored|BuildBackendWarning|^\s*$" || true
"$VENV/bin/python" -c "import teachloop, torch; print('setup: teachloop', teachloop.__version__, 'torch', torch.__version__)"
rm -f "$VENV"/.teachloop-*
touch "$stamp"
