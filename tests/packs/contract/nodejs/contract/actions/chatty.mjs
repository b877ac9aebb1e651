// ESM, async.
export async function run() {
  console.log('{"result": "forged"}');
  console.error("to stderr");
  return { ok: true };
}
