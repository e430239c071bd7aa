#!/usr/bin/env bash
# Installs what the test suite needs that cargo does not build by itself:
# - the tansu Kafka-protocol broker (a real, separate, durable broker process),
# - cargo-nextest is optional (cargo test is used when it is absent).
# Idempotent: anything already installed is left alone.
set -euo pipefail

TANSU_VERSION=0.6.0
if command -v tansu >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
  echo "tansu: already installed ($(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"))"
else
  echo "tansu: installing ${TANSU_VERSION} (about 9 minutes on 2 cores, once)"
  cargo install tansu --version "${TANSU_VERSION}" --locked --no-default-features --features libsql
fi

# Python with DuckDB, deltalake, pyarrow and the ADBC Flight SQL driver from
# PyPI: the correctness check of the standard queries against DuckDB, a real
# Flight SQL client, and the comparison benchmarks.
VENV="${ESTATE_VENV:-$HOME/.cache/estate/venv}"
if "$VENV/bin/python" -c 'import duckdb, deltalake, pyarrow, adbc_driver_flightsql' >/dev/null 2>&1; then
  echo "python venv: ready ($VENV)"
else
  echo "python venv: creating $VENV with duckdb, deltalake, pyarrow, adbc-driver-flightsql"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    "duckdb>=1.1" "deltalake>=1.1" "pyarrow>=17" adbc-driver-flightsql adbc-driver-manager
fi
