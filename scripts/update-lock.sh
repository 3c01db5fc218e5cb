#!/usr/bin/env bash
# Moves the development lock (requirements/dev.lock) forward: resolves the package with its
# dev and heavy extras, plus the installer tools, to the newest releases that satisfy
# pyproject.toml and requirements/avoid.txt, for every platform and Python the package
# supports. Run it deliberately, then run .ci/run on the result before committing both.
#
#   scripts/update-lock.sh                    newest releases of everything
#   scripts/update-lock.sh --upgrade-package schemathesis
#                                             only that package (and what it needs) moves
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
    echo "update-lock: needs uv on PATH (pip install uv)" >&2
    exit 1
fi
args=("$@")
if [ "${#args[@]}" -eq 0 ]; then
    args=(--upgrade)
fi
uv pip compile pyproject.toml requirements/tools.in \
    --extra dev --extra heavy \
    --constraint requirements/avoid.txt \
    --universal --python-version 3.10 \
    --no-header --quiet \
    --output-file requirements/dev.lock \
    "${args[@]}"
{
    echo "# The development and test toolchain, locked. Made by scripts/update-lock.sh; do not edit."
    echo "# Used as constraints: pip install -c requirements/dev.lock -e '.[dev,heavy]'"
    cat requirements/dev.lock
} >requirements/dev.lock.new
mv requirements/dev.lock.new requirements/dev.lock
echo "requirements/dev.lock: $(grep -c '==' requirements/dev.lock) pins" >&2
