#!/usr/bin/env bash
# The test command: prepares the machine, lints, and runs every test with real services.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/ensure_services.sh
ruff check workers producers tests bench
python3 -m pytest "$@"
