#!/bin/sh
# Flower for xiehe-backup, behind basic auth read from a secret.
#   XIEHE_FLOWER_BASIC_AUTH_FILE  file holding user:password[,user2:password2] (Docker secret)
#   XIEHE_FLOWER_PORT (5555), XIEHE_FLOWER_ADDRESS (0.0.0.0), XIEHE_FLOWER_DB (state file)
# Secrets never go on argv (visible in ps): Flower reads FLOWER_BASIC_AUTH from the
# environment, and the broker URL comes from XIEHE_BROKER_URL(_FILE) through workers.celery.
set -eu
if [ -n "${XIEHE_FLOWER_BASIC_AUTH_FILE:-}" ]; then
    FLOWER_BASIC_AUTH="$(cat "$XIEHE_FLOWER_BASIC_AUTH_FILE")"
fi
: "${FLOWER_BASIC_AUTH:?set XIEHE_FLOWER_BASIC_AUTH_FILE (user:password): Flower never runs without auth}"
export FLOWER_BASIC_AUTH
db="${XIEHE_FLOWER_DB:-/var/lib/xiehe-flower/flower.db}"
mkdir -p "$(dirname "$db")"
# persistent: the task list survives a restart of Flower
exec "${PYTHON:-python3}" -m celery -A workers flower \
    --address="${XIEHE_FLOWER_ADDRESS:-0.0.0.0}" --port="${XIEHE_FLOWER_PORT:-5555}" \
    --persistent=True --db="$db" --state_save_interval=10000 "$@"
