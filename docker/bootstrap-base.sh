#!/usr/bin/env bash
# Build a local base image from Debian packages, for hosts that cannot pull python:X.Y-slim or
# node:N-slim.
# Usage: bootstrap-base.sh SUITE IMAGE_REF [RUNTIME]
#   SUITE      a Debian suite (bullseye, bookworm, trixie)
#   IMAGE_REF  the image to create, e.g. attune-base/python:3.11 or attune-base/node:18
#   RUNTIME    python (default) or nodejs
# The image is labelled with the exact interpreter version so that the version choice and the
# content hash never have to guess it.
set -euo pipefail
suite=${1:?suite}
ref=${2:?image reference}
runtime=${3:-python}
case "$suite" in *[!a-z]*|"") echo "bad suite: $suite" >&2; exit 2;; esac
case "$runtime" in
  python) include=python3,python3-venv,ca-certificates ;;
  # Node: python3-minimal is no longer needed (the supervisor brings its own interpreter,
  # runtimes/nodejs/README.md), kept so these bases stay what they were. npm is added with apt below: debootstrap's own resolver
  # cannot install it (it does not follow the virtual packages of npm's node-* dependencies).
  nodejs) include=nodejs,python3-minimal,ca-certificates ;;
  *) echo "bad runtime: $runtime" >&2; exit 2;;
esac

work=$(mktemp -d /var/tmp/attune-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

# minbase plus the interpreter, venv (with ensurepip's wheels) and CA certificates: nothing else.
debootstrap --variant=minbase --include="$include" \
  "$suite" "$rootfs" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

if [ "$runtime" = nodejs ]; then
  # npm runs only in the fetch step and the build's builder stage (npm ci); recommends are not needed.
  { chroot "$rootfs" apt-get update -q && chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends npm && chroot "$rootfs" apt-get clean; } \
    >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
fi

# Small images: no docs, man pages, apt lists or caches, no logs.
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
       "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* "$rootfs"/tmp/* || true
# Keep (and complete) the standard library's bytecode: containers run with a read-only root and
# never write it, so without it every action would compile what it imports, at every start.
chroot "$rootfs" /usr/bin/python3 -m compileall -q -j 0 /usr/lib/python3 "/usr/lib/python$(chroot "$rootfs" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" >/dev/null 2>&1 || true

py_version=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')
if [ "$runtime" = nodejs ]; then
  node_version=$(chroot "$rootfs" /usr/bin/node -p 'process.versions.node')
  version_label="io.attune.containers.nodejs.version=$node_version"
  cmd='CMD ["node"]'
  summary="node $node_version"
else
  version_label="io.attune.containers.python.version=$py_version"
  cmd='CMD ["python3"]'
  summary="python $py_version"
fi
# The image's identity for content hashes: what it is made of (suite, every package version, this
# script), not when or where it was made, so two hosts bootstrapping alike agree on it and pack
# images built on one are found on the other; any change of content gives a new identity.
identity=$( { echo "$suite"; chroot "$rootfs" dpkg-query -W -f '${Package}=${Version}\n' | sort; sha256sum < "$0"; } \
  | sha256sum | cut -c1-64)

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change "LABEL io.attune.containers.base=true" \
  --change "LABEL $version_label" \
  --change "LABEL io.attune.containers.base.suite=$suite" \
  --change "LABEL io.attune.containers.base.identity=sha256:$identity" \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "$cmd" \
  - "$ref" >/dev/null
echo "$ref $summary ($suite)"
