#!/usr/bin/env bash
# The whole test suite:  bash scripts/test.sh [pytest args]  (uses ./.venv when scripts/setup.sh made one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
exec "$PY" -m pytest -q "$@"
