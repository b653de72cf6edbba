#!/usr/bin/env bash
# The test command: prepares the machine, lints, and runs every test with real services.
# Lint and tests both run; the command fails if either fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash ops/ensure_services.sh || exit 1
ruff check workers producers tests bench
lint=$?
python3 -m pytest "$@"
tests=$?
[ "$lint" -eq 0 ] || echo "ruff check failed" >&2
exit $(( tests != 0 ? tests : lint ))
