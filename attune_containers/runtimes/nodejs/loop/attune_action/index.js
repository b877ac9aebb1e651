// The secrets helper of Node.js actions: `const { getSecret } = require("attune_action")` or
// `import { getSecret } from "attune_action"`. The runner (attune_runner.js) sets the execution's
// values before it loads the action; outside attune, everything is empty. Each execution is a
// fresh process, so nothing here outlives it. (Plain `exports.x =` lines: ESM finds them by name.)
"use strict";
const found = globalThis[Symbol.for("io.attune.containers.action")];
const secrets = found ? found.secrets : Object.freeze({});
exports.parameters = found ? found.parameters : Object.freeze({});
exports.secrets = secrets;
exports.executionId = found ? found.executionId : null;
exports.getSecret = function getSecret(name, fallback = null) {
  return Object.prototype.hasOwnProperty.call(secrets, name) ? secrets[name] : fallback;
};
exports.get_secret = exports.getSecret;
