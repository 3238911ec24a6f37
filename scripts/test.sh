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
# two workers, one test file each at a time (a file's tests share its exports); the slowest tests
# are listed at the end of the run
.venv/bin/python -m pytest -q -n "${LORAGEN_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
