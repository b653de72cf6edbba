#!/usr/bin/env bash
# Seed-compatible wrapper: restore_database.sh <timestamp>, the seed runbook's command.
# <timestamp> is the backup id (YYYYMMDD_HHMMSS, see `xiehe-backup list`).  Runs
# `xiehe-backup restore <id> --yes`: this script is the confirmation.  XIEHE_CLI as in
# backup_database.sh.
set -euo pipefail
PATH="/usr/local/bin:/usr/bin:/bin:$PATH"
if [ "$#" -ne 1 ] || ! [[ "$1" =~ ^[0-9]{8}_[0-9]{6}$ ]]; then
    echo "usage: $0 <timestamp>   e.g. $0 20250101_020000 (ids: xiehe-backup list)" >&2
    exit 2
fi
read -r -a cli <<<"${XIEHE_CLI:-xiehe-backup}"
exec "${cli[@]}" restore "$1" --yes
