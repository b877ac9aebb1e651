// One execution of a Node.js action, in the child the supervisor (the Python runtime's
// attune_wrapper.py) forked and dropped to the execution uid before exec'ing `node` on this file.
// Node's standard library only. The request (JSON: action, parameters, secrets, environment) is
// read from fd 3; the outcome document is written to fd 4 (the result channel: the supervisor
// frames it apart from stdout/stderr, which are the action's logs). Deadline, output caps, result
// framing, cleanup and verification are the supervisor's, as for Python actions.
"use strict";
const fs = require("fs");
const path = require("path");
const { pathToFileURL } = require("url");

const REQUEST_FD = 3;
const RESULT_FD = 4;
// Bound once: an action that replaces JSON.stringify (its right, in its own process) still gets
// its result encoded by the real encoder.
const stringify = JSON.stringify;
const HELPER = Symbol.for("io.attune.containers.action");

let limit = 1 << 20;
let sent = false;

function errorDocument(type, message, traceback) {
  return { status: "error", error: { type, message, traceback: traceback || "" } };
}

function writeAll(fd, buffer) {
  let offset = 0;
  while (offset < buffer.length) offset += fs.writeSync(fd, buffer, offset, buffer.length - offset);
}

function sendResult(document) {
  if (sent) return;
  sent = true;
  let encoded;
  try {
    const text = stringify(document);
    if (text === undefined) throw new TypeError("the result is not JSON");
    encoded = Buffer.from(text, "utf8");
  } catch (error) {
    encoded = Buffer.from(stringify(errorDocument("ResultNotSerializable", `the action's result is not JSON: ${error.message}`)));
  }
  if (encoded.length > limit) {
    encoded = Buffer.from(stringify(errorDocument("ResultTooLarge", `the result is ${encoded.length} bytes; the limit is ${limit}`)));
  }
  writeAll(RESULT_FD, encoded);
  fs.closeSync(RESULT_FD);
}

function readRequest() {
  const chunks = [];
  const buffer = Buffer.alloc(1 << 16);
  for (;;) {
    const count = fs.readSync(REQUEST_FD, buffer, 0, buffer.length, null);
    if (count === 0) break;
    chunks.push(Buffer.from(buffer.subarray(0, count)));
  }
  fs.closeSync(REQUEST_FD);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function load(file) {
  // CommonJS first (require), ESM when the file is .mjs or require says it is ESM.
  if (file.endsWith(".mjs")) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (error) {
    if (error && error.code === "ERR_REQUIRE_ESM") return import(pathToFileURL(file).href);
    throw error;
  }
}

function entry(module, wanted) {
  const candidates = [];
  for (const holder of [module, module && module.default]) {
    if (holder && (typeof holder === "object" || typeof holder === "function")) {
      candidates.push(wanted && holder[wanted], holder.run, holder.main);
    }
  }
  if (typeof module === "function") candidates.push(module);
  if (module && typeof module.default === "function") candidates.push(module.default);
  return candidates.find((candidate) => typeof candidate === "function") || null;
}

async function main() {
  const request = readRequest();
  const action = request.action || {};
  const parameters = request.parameters || {};
  const secrets = request.secrets || {};
  limit = Number(action.result_limit || limit);
  for (const [name, value] of Object.entries(request.environment || {})) process.env[name] = String(value);

  // The secrets helper: require("attune_action") / import { getSecret } from "attune_action".
  // Never the environment.
  const getSecret = (name, fallback = null) =>
    Object.prototype.hasOwnProperty.call(secrets, name) ? secrets[name] : fallback;
  globalThis[HELPER] = Object.freeze({
    parameters: Object.freeze({ ...parameters }),
    secrets: Object.freeze({ ...secrets }),
    getSecret,
    executionId: process.env.ATTUNE_EXECUTION_ID || null,
  });

  const file = path.join(action.pack_dir, "actions", action.entry_point);
  // An action that ends the process itself (process.exit) is a script: its exit code says.
  process.on("exit", () => sendResult({ status: "script" }));
  let outcome;
  try {
    const module = await load(file);
    const run = entry(module, action.function);
    if (run === null) {
      outcome = { status: "script" };
    } else {
      let value = await run(parameters);
      if (value === undefined) value = null;
      outcome = { status: "success", result: value };
    }
  } catch (error) {
    process.exitCode = 1;
    const isError = error instanceof Error;
    outcome = errorDocument(
      isError ? error.name || error.constructor.name : typeof error,
      isError ? error.message : String(error),
      isError ? String(error.stack || "") : "",
    );
  }
  sendResult(outcome);
  process.exit();
}

main().catch((error) => {
  sendResult(errorDocument("RunnerError", String(error && error.message), String(error && error.stack)));
  process.exit(70);
});
