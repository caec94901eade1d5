#!/usr/bin/env bash
# The test command: sets up what the tests need (venv, Docker engine, base images, a small real
# model to serve on loopback) and runs the whole suite against real engines. Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# A real small model for tests/test_real_model.py (a separate venv, .venv-model; ~10 min the
# first time, seconds afterwards). CI must run those tests: a broken install fails them instead
# of skipping. TERMIGEN_SKIP_REAL_MODEL=1 skips the set-up (and lets those tests skip).
if [ "${TERMIGEN_SKIP_REAL_MODEL:-0}" != 1 ]; then
  TERMIGEN_TEST_MODEL_GGUF="$(bash scripts/setup-model.sh)"
  export TERMIGEN_TEST_MODEL_GGUF
  export TERMIGEN_REQUIRE_REAL_MODEL=1
fi
# The linter (configured in pyproject.toml) first: a lint error fails the tests too.
echo "== ruff check"
.venv/bin/ruff check --quiet .
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" = 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$code"
