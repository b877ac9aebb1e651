# The fetch step of Node.js pack builds (services/npm_cache.py): runs in a throwaway container of
# the pack's own Node base image, as an unprivileged user, read-only root, with the network, and
# no writable mount. Inputs (read-only): /attune-build/config/package.json (written by us from the
# validated spec) and, when a lock is known, package-lock.json. Output: one tar on stdout with
# p/package-lock.json and npm's content-addressed cache; the host verifies every file. Nothing
# here comes from the pack but the two JSON files, which npm reads as data.
set -eu
mkdir -p /tmp/p /tmp/c
cp /attune-build/config/package.json /tmp/p/package.json
cd /tmp/p
if [ -f /attune-build/config/package-lock.json ]; then
  cp /attune-build/config/package-lock.json /tmp/p/package-lock.json
else
  # No lifecycle scripts ever run here: --ignore-scripts.
  npm install --package-lock-only --ignore-scripts --no-audit --no-fund --cache /tmp/c >&2
fi
# npm ci downloads every tarball the lock names and checks it against the lock's integrity.
npm ci --ignore-scripts --no-audit --no-fund --omit=dev --cache /tmp/c >&2
rm -rf /tmp/p/node_modules
mkdir -p /tmp/c/_cacache/content-v2  # none when there are no dependencies
exec tar -C /tmp -c p/package-lock.json c/_cacache/content-v2
