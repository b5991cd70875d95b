# Sourced by scripts/demo and scripts/test: make .venv (once) and install fleetpilot into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "fleetpilot needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
SPEC="."
[ -n "${EXTRAS:-}" ] && SPEC=".[${EXTRAS}]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$SPEC"
