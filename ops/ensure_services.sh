#!/usr/bin/env bash
# Make this machine ready for xiehe-backup: Debian and Python packages, a Docker engine,
# the local images (there is no registry), and the MariaDB and Redis the tests use.
# Idempotent: quick when everything is already there.  Needs root for apt-get and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."

# libmariadb-dev, pkg-config: pip builds mysqlclient (PyPI has no Linux wheel of it)
DEBS=(libmariadb-dev pkg-config docker.io busybox-static zstd mydumper restic age mariadb-client redis-server redis-tools docker-compose debootstrap rclone openssh-server)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Installed again whenever pyproject.toml changed since the last install (a new dependency).
stamp=/var/tmp/xiehe-backup-pyproject.sha256
if ! python3 -c "import workers, celery, pyrage, zstandard, MySQLdb, pytest, moto.server" 2>/dev/null \
   || ! command -v xiehe-backup >/dev/null \
   || [[ "$(sha256sum < pyproject.toml)" != "$(cat "$stamp" 2>/dev/null)" ]]; then
  echo "installing Python packages"
  python3 -m pip install -q -e '.[test]'
  sha256sum < pyproject.toml > "$stamp"
fi

# MariaDB and Redis are started before sessions and CI; start them if they stopped.
if ! mariadb -uroot -h127.0.0.1 -e 'select 1' >/dev/null 2>&1; then
  echo "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 60); do mariadb -uroot -h127.0.0.1 -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  nohup dockerd >/var/log/xiehe-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 /var/log/xiehe-dockerd.log; }
fi
if docker info >/dev/null 2>&1; then
  bash ops/images/build_helper_image.sh
  bash ops/images/build_redis_image.sh
fi
