#!/usr/bin/env bash
# Build a Redis image from this host's redis-server (there is no registry to pull from):
# the binary, every shared library ldd lists and the dynamic loader, a minimal passwd/group,
# and a /data dir owned by the unprivileged redis user.  Idempotent: skips an existing tag.
set -euo pipefail

TAG="${1:-xiehe/redis:local}"
SERVER=/usr/bin/redis-server
REDIS_UID=999

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "image $TAG already exists"
  exit 0
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/etc" "$root/data" "$root/tmp"
chmod 1777 "$root/tmp"
# -L: Debian's redis-server is a symlink to redis-check-rdb, and the binary picks its role
# from argv[0], so the copy must be a real file named redis-server.
cp -L "$SERVER" "$root/usr/bin/redis-server"
# Every absolute path ldd prints: the libraries and the loader (copied under their own path).
ldd "$SERVER" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nredis:x:%d:%d:redis:/data:/sbin/nologin\n' \
  "$REDIS_UID" "$REDIS_UID" >"$root/etc/passwd"
printf 'root:x:0:\nredis:x:%d:\n' "$REDIS_UID" >"$root/etc/group"

tarball="$root.tar"
trap 'rm -rf "$root" "$tarball"' EXIT
tar -C "$root" --numeric-owner --owner=0 --group=0 --exclude=./data -cf "$tarball" .
tar -C "$root" --numeric-owner --owner="$REDIS_UID" --group="$REDIS_UID" -rf "$tarball" ./data

docker import \
  --change 'USER redis' \
  --change 'WORKDIR /data' \
  --change 'VOLUME /data' \
  --change 'EXPOSE 6379' \
  --change 'CMD ["/usr/bin/redis-server", "--dir", "/data", "--bind", "0.0.0.0", "--protected-mode", "no"]' \
  "$tarball" "$TAG" >/dev/null
echo "built $TAG"
