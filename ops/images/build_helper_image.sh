#!/bin/sh
# Build the helper image used to read and write Docker volumes, without a registry:
# `docker import` of a tar holding Debian's static busybox and its applet links.
# Usage: build_helper_image.sh [TAG]   (default xiehe/helper:busybox; skipped if it exists)
set -eu

TAG="${1:-xiehe/helper:busybox}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "helper image $TAG already exists"
    exit 0
fi
# The image must not depend on shared libraries: only a static busybox will do.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "$BUSYBOX is not statically linked (apt-get install busybox-static)" >&2
    exit 1
fi

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/target" "$ROOT/source"
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do  # sh, tar, find, rm, mkdir, cat, sleep, ...
    [ "$applet" = busybox ] && continue
    ln -s busybox "$ROOT/bin/$applet"
done
tar --numeric-owner --owner=0 --group=0 -C "$ROOT" -cf - . |
    docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
        --message "xiehe helper: busybox-static" - "$TAG" >/dev/null
echo "built helper image $TAG"
