#!/usr/bin/env bash
# Seed-compatible wrapper: the seed plan's crontab line
#   0 2 * * * /path/to/XieHe-System/scripts/backup_database.sh
# keeps working.  No arguments: a full backup (MySQL, Redis, volumes as configured), waiting
# until it is verified and published; the exit code is the CLI's (0 only then).
#   XIEHE_CLI  how to reach the CLI, e.g. "docker compose -f /srv/xiehe/docker-compose.yml
#              exec -T backup-worker xiehe-backup" when it runs in the stack (default:
#              xiehe-backup on PATH)
set -euo pipefail
PATH="/usr/local/bin:/usr/bin:/bin:$PATH"  # cron's PATH is minimal
if [ "$#" -gt 0 ]; then
    echo "usage: $0   (no arguments: full backup; see xiehe-backup backup --help)" >&2
    exit 2
fi
read -r -a cli <<<"${XIEHE_CLI:-xiehe-backup}"
exec "${cli[@]}" backup --reason "${XIEHE_BACKUP_REASON:-cron}"
