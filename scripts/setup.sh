#!/usr/bin/env bash
# Create ./.venv and install mnv4-deploy with every backend, the test tools and the bench extra.
# Idempotent: a second run only re-checks the install. Used by quickstart.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

quiet_pip() {  # pip's log only when it fails (the full backend set is ~7 GB of wheels)
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2
    rm -f "$log"
    echo "setup failed: pip install $* (see above)" >&2
    exit 1
  fi
  rm -f "$log"
}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
quiet_pip pip==26.3
quiet_pip -c constraints.txt -e '.[all,test,bench,docs]'  # bench: 20 MB of trained weights + NNCF (~30 MB); docs: MkDocs
.venv/bin/python -c "import mnv4_deploy, mnv4_deploy.converters, torch, timm, onnxruntime" \
  || { echo "setup failed: the package does not import" >&2; exit 1; }
echo "mnv4-deploy installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
