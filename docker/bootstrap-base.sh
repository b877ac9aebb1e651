#!/usr/bin/env bash
# Build a local Python base image from Debian packages, for hosts that cannot pull python:X.Y-slim.
# Usage: bootstrap-base.sh SUITE IMAGE_REF
#   SUITE      a Debian suite (bullseye, bookworm, trixie)
#   IMAGE_REF  the image to create, e.g. attune-base/python:3.11
# The image is labelled with the exact interpreter version so that the version choice and the
# content hash never have to guess it.
set -euo pipefail
suite=${1:?suite}
ref=${2:?image reference}
case "$suite" in *[!a-z]*|"") echo "bad suite: $suite" >&2; exit 2;; esac

work=$(mktemp -d /var/tmp/attune-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

# minbase plus the interpreter, venv (with ensurepip's wheels) and CA certificates: nothing else.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# Small images: no docs, man pages, apt lists or caches, no logs.
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
       "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* "$rootfs"/tmp/* || true
find "$rootfs"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true

py_version=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change "LABEL io.attune.containers.base=true" \
  --change "LABEL io.attune.containers.python.version=$py_version" \
  --change "LABEL io.attune.containers.base.suite=$suite" \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change 'CMD ["python3"]' \
  - "$ref" >/dev/null
echo "$ref python $py_version ($suite)"
