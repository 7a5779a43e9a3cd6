#!/usr/bin/env bash
# The test command (README, .ci/run): sets up .venv, checks the committed configs are current,
# builds the quick-profile models if missing, then runs every test against a real tritonserver.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash deploy/setup.sh
PY=.venv/bin/python
$PY -m export.repository --check
$PY -m export.reference --check
$PY -m export.build --profile quick
$PY -m pytest -ra "$@"
echo "tests finished in $(( $(date +%s) - start )) s"
