#!/usr/bin/env bash
# Creates .venv and installs the project with every extra. Idempotent; used by the demo and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# curl and jq: examples/curl_infer.sh and its test (Debian packages; installed when missing and root)
if ! command -v curl >/dev/null || ! command -v jq >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq curl jq >/dev/null
  else
    echo "warning: curl and jq are needed by examples/curl_infer.sh and its test; install them" >&2
  fi
fi
# chromium: tests/test_browser.py drives Debian's browser through playwright (no `playwright install`: no download)
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
      || echo "warning: apt-get could not install chromium; tests/test_browser.py will be skipped" >&2
  else
    echo "warning: chromium is needed by tests/test_browser.py (skipped without it); install Debian's chromium" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # CPU torch first: the local 2.13.0 CPU wheel is used when present; a GPU host may install its own torch.
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q "torch>=2.2"
  .venv/bin/python -m pip install -q -e '.[all]'
  touch "$stamp"
fi
