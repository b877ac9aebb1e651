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
# Keep (and complete) the standard library's bytecode: containers run with a read-only root and
# never write it, so without it every action would compile what it imports, at every start.
chroot "$rootfs" /usr/bin/python3 -m compileall -q -j 0 /usr/lib/python3 "/usr/lib/python$(chroot "$rootfs" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" >/dev/null 2>&1 || true

py_version=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')
# The image's identity for content hashes: what it is made of (suite, every package version, this
# script), not when or where it was made, so two hosts bootstrapping alike agree on it and pack
# images built on one are found on the other; any change of content gives a new identity.
identity=$( { echo "$suite"; chroot "$rootfs" dpkg-query -W -f '${Package}=${Version}\n' | sort; sha256sum < "$0"; } \
  | sha256sum | cut -c1-64)

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change "LABEL io.attune.containers.base=true" \
  --change "LABEL io.attune.containers.python.version=$py_version" \
  --change "LABEL io.attune.containers.base.suite=$suite" \
  --change "LABEL io.attune.containers.base.identity=sha256:$identity" \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change 'CMD ["python3"]' \
  - "$ref" >/dev/null
echo "$ref python $py_version ($suite)"
