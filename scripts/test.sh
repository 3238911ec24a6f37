#!/usr/bin/env bash
# Set up everything from scratch (idempotent) and run every test: the Android core's Kotlin tests
# (kotlinc from npm, JUnit 4 from Debian, JDK 17), then the Python suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
bash android_demo/core/run-tests.sh
.venv/bin/python -m pytest -q "$@"
