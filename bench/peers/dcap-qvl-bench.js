#!/usr/bin/env node
// Peer benchmark: verifies the same DCAP quote with @phala/dcap-qvl (pure JS) and @phala/dcap-qvl-web (the Rust
// verifier compiled to wasm), single-threaded, and prints quotes/s for each as JSON lines.
// Usage: node bench/peers/dcap-qvl-bench.js QUOTE COLLATERAL.json UNIX_TIME [SECONDS_PER_PEER]
'use strict';
const fs = require('fs');
const path = require('path');

const [quoteFile, collFile, timeArg, secsArg] = process.argv.slice(2);
if (!quoteFile || !collFile || !timeArg) {
  console.error('usage: dcap-qvl-bench.js QUOTE COLLATERAL.json UNIX_TIME [SECONDS_PER_PEER]');
  process.exit(2);
}
const now = parseInt(timeArg, 10);
const seconds = parseFloat(secsArg || '5');
const quote = new Uint8Array(fs.readFileSync(quoteFile));
const collJson = JSON.parse(fs.readFileSync(collFile, 'utf8'));

function measure(name, fn) {
  const first = fn();  // warm-up + sanity check
  const deadline = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const start = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  let n = 0;
  while (process.hrtime.bigint() < deadline) {
    fn();
    n++;
  }
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const cpuSecs = (cpu.user + cpu.system) / 1e6;
  console.log(JSON.stringify({ peer: name, status: first, iterations: n, seconds: elapsed, cpu_seconds: cpuSecs,
                               quotes_per_sec: n / elapsed, quotes_per_cpu_sec: n / cpuSecs }));
}

async function main() {
  const root = path.resolve(__dirname, '../../node_modules/@phala');
  // Pure JS.
  const qvl = require(path.join(root, 'dcap-qvl/src/verify.js'));
  measure('@phala/dcap-qvl (pure JS)', () => qvl.verify(quote, collJson, now).status);

  // Rust -> wasm.
  const web = await import(path.join(root, 'dcap-qvl-web/dcap-qvl-web.js'));
  web.initSync({ module: fs.readFileSync(path.join(root, 'dcap-qvl-web/dcap-qvl-web_bg.wasm')) });
  // The wasm build takes the collateral JSON object as-is (hex strings for the byte fields).
  const coll = collJson;
  measure('@phala/dcap-qvl-web (Rust/wasm)', () => web.js_verify(quote, coll, BigInt(now)).status);
}

main().catch((e) => {
  console.error(`dcap-qvl-bench: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
