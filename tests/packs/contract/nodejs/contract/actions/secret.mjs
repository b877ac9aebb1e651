import fs from "fs";
import { getSecret } from "attune_action";

const REMEMBERED = [];
const STASHES = ["/tmp/contract-stash", "/dev/shm/contract-stash"];

export async function run({ stash = false }) {
  const token = getSecret("token");
  // What earlier executions left behind, looked for before this one leaves anything.
  const found = STASHES.filter((p) => fs.existsSync(p));
  const result = {
    token,
    remembered: [...REMEMBERED],
    found,
    in_environment: Boolean(token) && Object.values(process.env).some((v) => v.includes(token)),
  };
  if (stash) {
    REMEMBERED.push(token);
    for (const p of STASHES) fs.writeFileSync(p, token || "");
  }
  return result;
}
