#!/usr/bin/env bash
# A headless browser for the tests of what a person looks at (report.html, browse.html):
# Debian's `chromium`, driven by Playwright from the test venv. Playwright's own browser
# download cannot work on machines without internet access; the system browser does.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium found: install Debian's 'chromium' package (or set TERMIGEN_CHROMIUM)" >&2
  exit 1
fi
echo "== installing chromium (headless browser tests)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }
command -v chromium >/dev/null
