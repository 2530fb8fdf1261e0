#!/usr/bin/env bash
# Create .venv and install teachloop with the given extras (default: none).
#
#   scripts/setup.sh            # runtime only      (used by `make up`)
#   scripts/setup.sh dev        # + test/lint tools  (used by `make test`)
#
# On a machine without an NVIDIA GPU the CPU build of torch==2.13.0 is installed
# *before* anything that depends on torch, so pip never pulls a multi-GB CUDA build.
# Re-running is cheap: a stamp records what was installed for which pyproject.toml.
# The stamp is written only once every step succeeded; any failed install stops the
# script with a one-line "setup: error: ..." on stderr and a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV=.venv

die() {
  echo "setup: error: $*" >&2
  exit 1
}

# Run pip, hide its known noise, and return pip's own exit status (a filter in a
# pipeline would otherwise decide it: grep exits 1 when it filtered every line).
pip_quiet() {
  local log rc=0
  log=$(mktemp)
  "$VENV/bin/python" -m pip "$@" >"$log" 2>&1 || rc=$?
  grep -vE "is ignored|BuildBackendWarning|^[[:space:]]*$" "$log" >&2 || true
  rm -f "$log"
  return "$rc"
}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || die "could not create $VENV with $PY (set PYTHON to a Python >= 3.11 that has venv)"
  # An old pip still works (e.g. offline), so a failed upgrade is only a warning.
  pip_quiet install -q --upgrade pip || echo "setup: warning: could not upgrade pip; continuing with the one venv installed" >&2
fi

stamp="$VENV/.teachloop-$(sha256sum pyproject.toml | cut -c1-16)-${EXTRAS:-base}"
if [ -f "$stamp" ]; then
  exit 0
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch==2.13.0 (CUDA build)"
    pip_quiet install -q torch==2.13.0 \
      || die "could not install torch==2.13.0 (CUDA build); see pip's output above, fix it and re-run scripts/setup.sh"
  else
    # Prefer a CPU build that pip can already see (a local wheel or mirror); else the CPU index.
    # This probe may fail (offline, no mirror): then the CPU index is tried below.
    url=$("$VENV/bin/python" -m pip install --dry-run --quiet --no-deps --report - torch==2.13.0 2>/dev/null \
          | "$VENV/bin/python" -c 'import json,sys,urllib.parse as u; r=json.load(sys.stdin)["install"]; print(u.unquote(r[0]["download_info"]["url"]) if r else "")' 2>/dev/null || true)
    if [[ "$url" == *"+cpu"* ]]; then
      echo "setup: no GPU, installing CPU torch==2.13.0 from $url"
      pip_quiet install -q torch==2.13.0 \
        || die "could not install CPU torch==2.13.0 from $url; see pip's output above, fix it and re-run scripts/setup.sh"
    else
      echo "setup: no GPU, installing CPU torch==2.13.0 from the PyTorch CPU index"
      pip_quiet install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
        || die "could not install CPU torch==2.13.0 from https://download.pytorch.org/whl/cpu; see pip's output above, check the network (or put a +cpu wheel where pip finds it) and re-run scripts/setup.sh"
    fi
  fi
fi

spec="."
if [ -n "$EXTRAS" ]; then spec=".[$EXTRAS]"; fi
pip_quiet install -q -e "$spec" \
  || die "could not install teachloop ('pip install -e $spec'); see pip's output above, fix it and re-run scripts/setup.sh"
case ",$EXTRAS," in *,dev,*)
  # tests/integration/test_tinker_cookbook.py: the cookbook's recipes against our server. 0.5.8 pins
  # transformers<=5.5.4 (its code runs on ours) and 0.6.1 needs a tml-renderers we cannot get, so --no-deps.
  pip_quiet install -q --no-deps tinker-cookbook==0.5.8 tml-renderers==0.2.1 chz blobfile lxml pycryptodomex \
    pyrage termcolor pylatexenc \
    || echo "setup: warning: could not install tinker-cookbook; tests/integration/test_tinker_cookbook.py will skip" >&2;;
esac
"$VENV/bin/python" -c "import teachloop, torch; print('setup: teachloop', teachloop.__version__, 'torch', torch.__version__)" \
  || die "teachloop or torch does not import after the install; see the traceback above"
rm -f "$VENV"/.teachloop-*
touch "$stamp"
