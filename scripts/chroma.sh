#!/usr/bin/env bash
# ChromaDB, schemathesis and the Standard Webhooks verifier for chatfleet: installed with
# pip into a virtual environment that is reused between runs ($CHATFLEET_VENV, default
# ~/.cache/chatfleet-venv), started on demand.
# Sourced by scripts/up and scripts/test.
set -euo pipefail

CHATFLEET_VENV="${CHATFLEET_VENV:-$HOME/.cache/chatfleet-venv}"

# Schemathesis (PyPI), the OpenAPI fuzzer the suite runs against a live ingress, pinned
# so a run's seed always generates the same cases.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis_installed() {
  ensure_chroma_installed
  if [ "$("$CHATFLEET_VENV/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $CHATFLEET_VENV (once)" >&2
    "$CHATFLEET_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
      || { echo "error: pip could not install schemathesis" >&2; return 1; }
  fi
  export CHATFLEET_SCHEMATHESIS="$CHATFLEET_VENV/bin/st"
}

# The Standard Webhooks project's reference verifier (PyPI), which the webhooks test runs
# against every delivery.
STANDARDWEBHOOKS_VERSION=1.3.0
ensure_standardwebhooks_installed() {
  ensure_chroma_installed
  if ! "$CHATFLEET_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('standardwebhooks') != '$STANDARDWEBHOOKS_VERSION')" 2>/dev/null; then
    echo "installing standardwebhooks $STANDARDWEBHOOKS_VERSION into $CHATFLEET_VENV (once)" >&2
    "$CHATFLEET_VENV/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION" \
      || { echo "error: pip could not install standardwebhooks" >&2; return 1; }
  fi
  export CHATFLEET_VENV_PYTHON="$CHATFLEET_VENV/bin/python"
}

ensure_chroma_installed() {
  if [ ! -x "$CHATFLEET_VENV/bin/chroma" ]; then
    echo "installing ChromaDB into $CHATFLEET_VENV (once; about a minute)" >&2
    python3 -m venv "$CHATFLEET_VENV" || { echo "error: cannot create a Python virtual environment" >&2; return 1; }
    "$CHATFLEET_VENV/bin/pip" install --quiet --disable-pip-version-check chromadb \
      || { echo "error: pip could not install chromadb" >&2; return 1; }
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_chroma PORT DATA_DIR: starts ChromaDB in the background, waits until it answers,
# and sets CHROMA_PID.
start_chroma() {
  local port=$1 dir=$2
  mkdir -p "$dir"
  ANONYMIZED_TELEMETRY=False "$CHATFLEET_VENV/bin/chroma" run --path "$dir" --host 127.0.0.1 --port "$port" \
    >"$dir/chroma.log" 2>&1 &
  CHROMA_PID=$!
  for _ in $(seq 1 60); do
    if curl -sf "http://127.0.0.1:$port/api/v2/heartbeat" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$CHROMA_PID" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "error: ChromaDB did not start on port $port; its log:" >&2
  tail -20 "$dir/chroma.log" >&2 || true
  return 1
}
