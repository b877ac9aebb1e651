// Build-stage helper of Node.js pack images (Dockerfile.node.j2); runs as root in the builder
// stage, with no network. Node's standard library only.
//   node prepare.js cache TARBALLS CACHE   place each <sha512 hex>.tgz where npm's cache (cacache)
//                                          looks a file up by its integrity
//   node prepare.js record LOCK            print [{name, version}] of every package the lock installs
"use strict";
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const [mode, a, b] = process.argv.slice(2);
if (mode === "cache") {
  for (const file of fs.readdirSync(a)) {
    const hex = file.replace(/\.tgz$/, "");
    if (!/^[0-9a-f]{128}$/.test(hex)) continue;
    const data = fs.readFileSync(path.join(a, file));
    // Checked again here: the context is ours, but a wrong file must fail the build, not hide.
    if (crypto.createHash("sha512").update(data).digest("hex") !== hex) {
      throw new Error(`${file} does not match its sha512`);
    }
    const dest = path.join(b, "_cacache", "content-v2", "sha512", hex.slice(0, 2), hex.slice(2, 4), hex.slice(4));
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.writeFileSync(dest, data);
  }
} else if (mode === "record") {
  const lock = JSON.parse(fs.readFileSync(a, "utf8"));
  const seen = new Map();
  for (const [where, entry] of Object.entries(lock.packages || {})) {
    if (!where || entry.link) continue;
    const name = entry.name || where.slice(where.lastIndexOf("node_modules/") + "node_modules/".length);
    seen.set(`${name}@${entry.version}`, { name, version: entry.version });
  }
  const out = [...seen.values()].sort((x, y) => (x.name + "@" + x.version).localeCompare(y.name + "@" + y.version));
  process.stdout.write(JSON.stringify(out) + "\n");
} else {
  throw new Error("usage: prepare.js cache TARBALLS CACHE | record LOCK");
}
