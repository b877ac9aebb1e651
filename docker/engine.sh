#!/usr/bin/env bash
# Make sure a Docker engine answers on this host; install and start one if not (idempotent).
# Our hosts are Debian 12 with no systemd: Debian's docker.io is installed and dockerd is started
# in the background. Also installs the host tools the project needs: debootstrap (base images)
# docker-registry (the registry the tests run on loopback), and htpasswd and openssl (the tests'
# registry with basic auth and a CA of its own).
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "need root to install: ${need[*]}" >&2; exit 1; fi
  echo "installing ${need[*]} ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then exit 0; fi

echo "starting dockerd ..."
mkdir -p /var/log
setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then echo "dockerd is up"; exit 0; fi
  sleep 1
done
echo "dockerd did not come up; see /var/log/dockerd.log" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
