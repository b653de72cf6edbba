#!/usr/bin/env bash
# The main job on a fresh machine: start what is needed, create demo XieHe data
# (a MariaDB database, a Redis, two Docker volumes), start a worker, run a real backup
# through the queue, and print where it lies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/ensure_services.sh

export XIEHE_BROKER_URL=${XIEHE_BROKER_URL:-redis://127.0.0.1:6379/0}
export XIEHE_BACKUP_DIR=${XIEHE_BACKUP_DIR:-$PWD/backups}
export XIEHE_MYSQL_HOST=${XIEHE_MYSQL_HOST:-127.0.0.1}
export XIEHE_MYSQL_USER=${XIEHE_MYSQL_USER:-root}
export XIEHE_MYSQL_DATABASES=${XIEHE_MYSQL_DATABASES:-medical_system}
export XIEHE_HELPER_IMAGE=${XIEHE_HELPER_IMAGE:-xiehe/helper:busybox}
DEMO_REDIS_PORT=${DEMO_REDIS_PORT:-6390}
export XIEHE_REDIS_URL=${XIEHE_REDIS_URL:-redis://127.0.0.1:$DEMO_REDIS_PORT/0}
RUN_DIR=${XIEHE_RUN_DIR:-/tmp/xiehe-quickstart}
mkdir -p "$RUN_DIR"

# Demo data: the application's Redis (its own server: the broker's is not the data's).
if ! redis-cli -p "$DEMO_REDIS_PORT" ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port "$DEMO_REDIS_PORT" --dir "$RUN_DIR" \
    --save "" --appendonly no --logfile "$RUN_DIR/redis.log"
  sleep 0.5
fi
python3 -m bench.generate --mysql-db medical_system --redis-url "$XIEHE_REDIS_URL" \
  --volumes xiehe_uploads_data,xiehe_models_data --size demo
if docker info >/dev/null 2>&1; then
  export XIEHE_VOLUMES=${XIEHE_VOLUMES:-xiehe_uploads_data,xiehe_models_data}
else
  echo "Docker is unreachable: volumes are skipped in this demo"
fi

# A worker, unless one already answers.
if ! celery -A workers inspect ping --timeout 2 >/dev/null 2>&1; then
  nohup celery -A workers worker -l info -c 2 >"$RUN_DIR/worker.log" 2>&1 &
  for _ in $(seq 60); do celery -A workers inspect ping --timeout 1 >/dev/null 2>&1 && break; sleep 1; done
fi

id=$(xiehe-backup backup --reason "quickstart demo" | tail -n 1)
echo
echo "backup $id lies in $XIEHE_BACKUP_DIR:"
find "$XIEHE_BACKUP_DIR" -name "*${id}*" | sort  # a volume is a directory of parts
xiehe-backup list
