#!/usr/bin/env bash
# Build every image docker-compose.yml needs from local sources (there is no registry here):
#   xiehe/base:bookworm          debootstrap'ed Debian (built once: skipped if it exists)
#   xiehe/mysql:bookworm         MariaDB standing in for mysql:8.0 (same env and secrets)
#   xiehe/redis-server:bookworm  redis-server + redis-cli + sh, for redis and backup-broker
#   xiehe/docker-proxy:bookworm  haproxy with docker-socket-proxy's endpoint filter
#   xiehe/backup-worker:local    ops/Dockerfile on the base, Python packages from a wheelhouse
#                                built on this host (pip in the build network may not reach PyPI)
#   xiehe/helper:busybox         helper containers for volumes (build_helper_image.sh)
# Then: XIEHE_MYSQL_IMAGE=... XIEHE_REDIS_IMAGE=... XIEHE_DOCKER_PROXY_IMAGE=... (printed at
# the end) select them in docker-compose.yml.  Idempotent: service images are skipped when
# present, the worker image is rebuilt from Docker's layer cache (seconds when nothing changed).
# Needs root (debootstrap).  FORCE=1 rebuilds the service images (not the base).
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE=xiehe/base:bookworm
MYSQL=xiehe/mysql:bookworm
REDIS=xiehe/redis-server:bookworm
PROXY=xiehe/docker-proxy:bookworm
WORKER=xiehe/backup-worker:local
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# the worker's binaries too, so its Dockerfile's apt-get install has nothing to download
PACKAGES=python3,python3-venv,python3-pip,mariadb-server,mariadb-client,libmariadb3,redis-server,zstd,ca-certificates,haproxy,mydumper,age,restic,tini

exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# drop the previous build of a tag, now untagged (kept if a container still uses it)
drop_old() {
  if [ -n "$2" ] && [ "$2" != "$(image_id "$1")" ]; then docker rmi "$2" >/dev/null 2>&1 || true; fi
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

build_base() {
  if exists "$BASE"; then echo "image $BASE already exists"; return; fi
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; exit 1; }
  echo "debootstrap bookworm (about a minute)"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$work/root" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/*
  tar -C "$work/root" --numeric-owner -cf - . |
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' --message "debootstrap bookworm minbase" - "$BASE" >/dev/null
  rm -rf "$work/root"
  echo "built $BASE"
}

# build TAG: a Dockerfile on stdin, $work/ctx as context
build() {
  if exists "$1" && [ -z "${FORCE:-}" ]; then echo "image $1 already exists"; return; fi
  local old
  old="$(image_id "$1")"
  DOCKER_BUILDKIT=0 docker build -q -t "$1" -f - "$work/ctx" >/dev/null 2>"$work/build.log" ||
    { cat "$work/build.log" >&2; exit 1; }
  drop_old "$1" "$old"
  echo "built $1"
}

# mysql:8.0's interface: MYSQL_ROOT_PASSWORD_FILE, MYSQL_DATABASE, a data dir initialised
# on first start, mysqld options as the command.  MySQL-only options become --loose- ones.
build_mysql() {
  mkdir -p "$work/ctx"
  cat >"$work/ctx/mysql-entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
args=""
for a in "$@"; do
  case "$a" in --gtid-mode=*|--enforce-gtid-consistency=*) a="--loose-${a#--}";; esac
  args="$args $a"
done
install -d -o mysql -g mysql /run/mysqld /var/log/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
  chown mysql:mysql /var/lib/mysql
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --auth-root-authentication-method=normal >/dev/null
  mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
  for _ in $(seq 60); do mariadb-admin --socket=/run/mysqld/init.sock ping >/dev/null 2>&1 && break; sleep 1; done
  # the password is read from the secret and sent over the socket, never on argv
  pw="$(cat "${MYSQL_ROOT_PASSWORD_FILE:?}" | sed "s/'/''/g")"
  {
    printf "ALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\n" "$pw"
    printf "CREATE USER 'root'@'%%' IDENTIFIED BY '%s';\n" "$pw"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    [ -n "${MYSQL_DATABASE:-}" ] && echo "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
    echo "FLUSH PRIVILEGES;"
  } | mariadb --socket=/run/mysqld/init.sock -uroot
  MYSQL_PWD="$pw" mariadb-admin --socket=/run/mysqld/init.sock -uroot shutdown
  wait
fi
# shellcheck disable=SC2086
exec mariadbd --user=mysql --bind-address=0.0.0.0 $args
EOF
  build "$MYSQL" <<EOF
FROM $BASE
COPY mysql-entrypoint.sh /usr/local/bin/mysql-entrypoint.sh
# the package's postinst initialised a data dir: start empty, like mysql:8.0
RUN chmod 0755 /usr/local/bin/mysql-entrypoint.sh && rm -rf /var/lib/mysql/*
VOLUME /var/lib/mysql
EXPOSE 3306
ENTRYPOINT ["/usr/local/bin/mysql-entrypoint.sh"]
EOF
}

# redis:7-alpine's entrypoint turns protected mode off when redis-server gets no config
# file (the compose file's broker relies on that: it is on an internal network).
build_redis() {
  cat >"$work/ctx/redis-entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
if [ "${1:-}" = redis-server ] && ! [ -f "${2:-}" ]; then
  case " $* " in *" --protected-mode "*) ;; *) set -- "$@" --protected-mode no;; esac
fi
exec "$@"
EOF
  build "$REDIS" <<EOF
FROM $BASE
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh
RUN chmod 0755 /usr/local/bin/redis-entrypoint.sh && install -d -o redis -g redis /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server", "--dir", "/data"]
EOF
}

# tecnativa/docker-socket-proxy's rules: GET only unless POST=1, each API section allowed
# by its variable (CONTAINERS=1, ...), everything else denied with 403.
build_proxy() {
  sections="auth build commit configs containers distribution events exec grpc images info networks nodes plugins secrets services session swarm system tasks version volumes"
  {
    cat <<'EOF'
global
    log stdout format raw daemon info
    maxconn 4000
defaults
    mode http
    log global
    option httplog
    timeout connect 10s
    timeout client 10m
    timeout server 10m
    timeout tunnel 1h
backend dockerbackend
    server dockersocket /var/run/docker.sock
frontend dockerfrontend
    bind :2375
    http-request deny unless METH_GET || { env(POST) -m bool }
    http-request allow if { path,url_dec -m reg -i ^(/v[\d\.]+)?/_ping$ } { env(PING) -m bool }
EOF
    for s in $sections; do
      var="$(echo "$s" | tr a-z A-Z)"
      echo "    http-request allow if { path,url_dec -m reg -i ^(/v[\\d\\.]+)?/$s } { env($var) -m bool }"
    done
    echo "    http-request deny"
    echo "    default_backend dockerbackend"
  } >"$work/ctx/haproxy.cfg"
  defaults=""
  for s in $sections ping; do defaults="$defaults $(echo "$s" | tr a-z A-Z)=0"; done
  build "$PROXY" <<EOF
FROM $BASE
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
ENV$defaults PING=1 VERSION=1
EXPOSE 2375
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
EOF
}

# The worker: the base plus a wheelhouse of the project's dependencies (and setuptools for
# `pip install .`), so ops/Dockerfile's pip never needs an index.  PIP_BREAK_SYSTEM_PACKAGES:
# Debian's python refuses system-wide pip installs (PEP 668); in this image that is wanted.
build_worker() {
  mkdir -p "$work/wheels/wheelhouse"
  # async-timeout: redis needs it on the image's Python (3.11.2 < 3.11.3), not on newer hosts
  python3 -m pip wheel -q . 'setuptools>=68' wheel 'async-timeout>=4.0.3' \
    -w "$work/wheels/wheelhouse" 2>"$work/pip.log" ||
    { grep -v '^WARNING: Location' "$work/pip.log" >&2; exit 1; }
  rm -f "$work/wheels/wheelhouse"/xiehe_backup-*.whl  # built from the context instead
  touch -d @0 "$work/wheels/wheelhouse" "$work/wheels/wheelhouse"/*  # same wheels, cached layer
  DOCKER_BUILDKIT=0 docker build -q -t xiehe/base:bookworm-wheels -f - "$work/wheels" \
    >/dev/null 2>"$work/build.log" <<EOF || { cat "$work/build.log" >&2; exit 1; }
FROM $BASE
COPY wheelhouse /opt/wheelhouse
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheelhouse PIP_BREAK_SYSTEM_PACKAGES=1
EOF
  local old
  old="$(image_id "$WORKER")"
  DOCKER_BUILDKIT=0 docker build -t "$WORKER" -f ops/Dockerfile \
    --build-arg BASE=xiehe/base:bookworm-wheels . >"$work/worker.log" 2>&1 ||
    { tail -30 "$work/worker.log" >&2; exit 1; }
  drop_old "$WORKER" "$old"
  echo "built $WORKER"
}

build_base
mkdir -p "$work/ctx"
build_mysql
build_redis
build_proxy
build_worker
bash ops/images/build_helper_image.sh
echo "export XIEHE_MYSQL_IMAGE=$MYSQL XIEHE_REDIS_IMAGE=$REDIS XIEHE_DOCKER_PROXY_IMAGE=$PROXY XIEHE_HELPER_IMAGE=xiehe/helper:busybox"
