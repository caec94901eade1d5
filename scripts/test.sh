#!/usr/bin/env bash
# The test command: sets up what the tests need (venv, Docker engine, base images, a small real
# model to serve on loopback) and runs the whole suite against real engines. Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Ray (the `ray` extra, ~250 MB) for the two-node cluster tests of run.engine: ray.
if [ ! -f .venv/.termigen-ray ] || [ pyproject.toml -nt .venv/.termigen-ray ]; then
  echo "== installing the ray extra into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,ray]"
  touch .venv/.termigen-ray
fi
export TERMIGEN_REQUIRE_RAY=1
# A real small model for tests/test_real_model.py (a separate venv, .venv-model; ~10 min the
# first time, seconds afterwards). CI must run those tests: a broken install fails them instead
# of skipping. TERMIGEN_SKIP_REAL_MODEL=1 skips the set-up (and lets those tests skip).
if [ "${TERMIGEN_SKIP_REAL_MODEL:-0}" != 1 ]; then
  TERMIGEN_TEST_MODEL_GGUF="$(bash scripts/setup-model.sh)"
  export TERMIGEN_TEST_MODEL_GGUF
  export TERMIGEN_REQUIRE_REAL_MODEL=1
fi
# A real headless browser for the report/browser tests; CI must run them, not skip them.
bash scripts/setup-browser.sh
export TERMIGEN_REQUIRE_BROWSER=1
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
