// Integration test: the real dstack-guest-agent binary (simulator backend) driven by the npm client
// @phala/dstack-sdk over a unix socket, plus dstack-verify on the quote it returns and bad-input handling.
// Run by ctest (tests/guest/CMakeLists.txt) with DSTACK_BIN_DIR and DSTACK_SOURCE_DIR set.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const http = require('node:http');
const crypto = require('node:crypto');
const { spawn, execFileSync } = require('node:child_process');

const SRC = process.env.DSTACK_SOURCE_DIR || path.resolve(__dirname, '../../..');
const BIN = process.env.DSTACK_BIN_DIR || path.join(SRC, 'build', 'bin');
const req = (m) => require(path.join(SRC, 'node_modules', m));
const { DstackClient, TappdClient } = req('@phala/dstack-sdk');
const { secp256k1 } = req('@noble/curves/secp256k1');
const { keccak_256 } = req('@noble/hashes/sha3');
const { Quote } = req('@phala/dcap-qvl');
const { AsnConvert } = req('@peculiar/asn1-schema');
const x509asn = req('@peculiar/asn1-x509');

const APP_ID = '1122334455667788990011223344556677889900';
const COMPOSE = '{"manifest_version":2,"name":"sdk-test","runner":"docker-compose","docker_compose_file":""}';
let dir, agent, sock, tappdSock, rootKey, keys, externalPort;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function waitFor(pred, ms, what) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (pred()) return;
    if (agent && agent.exitCode !== null) throw new Error(`agent exited (${agent.exitCode}) while waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timeout waiting for ${what}`);
}

process.on('exit', () => { if (agent && agent.exitCode === null) agent.kill('SIGKILL'); });

function startAgent() {
  const logs = [];
  agent = spawn(path.join(BIN, 'dstack-guest-agent'), ['-c', path.join(dir, 'dstack.toml')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  agent.stdout.on('data', (d) => logs.push(d.toString()));
  agent.stderr.on('data', (d) => logs.push(d.toString()));
  agent.logs = logs;
  return agent;
}

async function stopAgent() {
  if (!agent || agent.exitCode !== null) return;
  const a = agent;
  const done = new Promise((r) => a.once('exit', r));
  a.kill('SIGTERM');
  const t = setTimeout(() => a.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}

async function startAndWait() {
  for (const s of [sock, tappdSock]) fs.rmSync(s, { force: true });
  startAgent();
  await waitFor(() => fs.existsSync(sock) && fs.existsSync(tappdSock), 30000, 'agent sockets');
  const c = new DstackClient(sock);
  for (let i = 0; i < 100; i++) {
    if (await c.isReachable()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('agent not reachable: ' + agent.logs.join(''));
}

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (h) => Buffer.from(h.replace(/^0x/, ''), 'hex');

function recover(digest, sig65) {
  const sig = secp256k1.Signature.fromCompact(sig65.slice(0, 64)).addRecoveryBit(sig65[64]);
  return hex(sig.recoverPublicKey(digest).toRawBytes(true));
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guest-agent-sdk-'));
  sock = path.join(dir, 'run', 'dstack.sock');
  tappdSock = path.join(dir, 'run', 'tappd.sock');
  externalPort = await freePort();
  fs.writeFileSync(path.join(dir, 'app-compose.json'), COMPOSE);
  fs.writeFileSync(path.join(dir, '.sys-config.json'),
    JSON.stringify({ vm_config: JSON.stringify({ os_image_hash: 'ab'.repeat(32), cpu_count: 1 }) }));
  fs.writeFileSync(path.join(dir, 'dstack.toml'), `
[default.core]
keys_file = "keys/.appkeys.json"
compose_file = "app-compose.json"
sys_config_file = ".sys-config.json"
event_log_dir = "log"
backend = "simulator"
[default.core.simulator]
platform_dir = "platform"
state_dir = "state"
app_id = "${APP_ID}"
[internal]
address = "unix:./run/dstack.sock"
mode = "0660"
[internal-v0]
address = "unix:./run/tappd.sock"
[external]
address = "127.0.0.1"
port = ${externalPort}
`);
  // First boot without a keys file: the simulator generates one (0600) and says so.
  await startAndWait();
  const keysFile = path.join(dir, 'keys', '.appkeys.json');
  assert.ok(fs.existsSync(keysFile), 'keys file generated');
  assert.equal(fs.statSync(keysFile).mode & 0o777, 0o600);
  assert.match(agent.logs.join(''), /generated simulator app keys/);
  await stopAgent();
  // Play the KMS: sign the app key with a root k256 key (spec §5.2: dstack-kms-issued:app_id||pubkey33).
  keys = JSON.parse(fs.readFileSync(keysFile, 'utf8'));
  rootKey = secp256k1.utils.randomPrivateKey();
  const appPub = secp256k1.getPublicKey(unhex(keys.k256_key), true);
  const msg = Buffer.concat([Buffer.from('dstack-kms-issued:'), unhex(APP_ID), Buffer.from(appPub)]);
  const s = secp256k1.sign(keccak_256(msg), rootKey);
  keys.k256_signature = hex(Buffer.concat([Buffer.from(s.toCompactRawBytes()), Buffer.from([s.recovery])]));
  fs.writeFileSync(keysFile, JSON.stringify(keys), { mode: 0o600 });
  await startAndWait();
});

after(async () => {
  await stopAgent();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('socket permissions are as configured', () => {
  assert.equal(fs.statSync(sock).mode & 0o777, 0o660);
  assert.equal(fs.statSync(tappdSock).mode & 0o777, 0o666);
});

test('info: identity of the simulated CVM', async () => {
  const c = new DstackClient(sock);
  const info = await c.info();
  assert.equal(info.app_id, APP_ID);
  assert.equal(info.app_name, 'sdk-test');
  const composeHash = crypto.createHash('sha256').update(COMPOSE).digest('hex');
  assert.equal(info.compose_hash, composeHash);
  assert.equal(info.tcb_info.compose_hash, composeHash);
  assert.equal(info.tcb_info.app_compose, COMPOSE);
  assert.equal(info.os_image_hash, 'ab'.repeat(32));
  assert.equal(info.instance_id.length, 40);
  assert.equal(info.mr_aggregated.length, 64);
  assert.deepEqual(JSON.parse(info.key_provider_info), { id: '', name: 'none' });
  const v = await c.version();
  assert.ok(v.version.length > 0);
});

test('getKey: key and signature chain recover to the app key and the root key', async () => {
  const c = new DstackClient(sock);
  for (const algo of ['secp256k1', 'ed25519']) {
    const r = await c.getKey('wallet/eth', 'signing', algo);
    assert.equal(r.key.length, 32);
    assert.equal(r.signature_chain.length, 2);
    const pub = algo === 'ed25519'
      ? hex(crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(r.key)]), format: 'der', type: 'pkcs8' }).export({ format: 'der', type: 'spki' }).subarray(12))
      : hex(secp256k1.getPublicKey(r.key, true));
    const appSigner = recover(keccak_256(Buffer.from(`signing:${pub}`)), r.signature_chain[0]);
    assert.equal(appSigner, hex(secp256k1.getPublicKey(unhex(keys.k256_key), true)));
    const rootMsg = Buffer.concat([Buffer.from('dstack-kms-issued:'), unhex(APP_ID), unhex(appSigner)]);
    assert.equal(recover(keccak_256(rootMsg), r.signature_chain[1]), hex(secp256k1.getPublicKey(rootKey, true)));
  }
  // Same path => same key; another path => another key.
  const a = await c.getKey('p1'), b = await c.getKey('p1'), d = await c.getKey('p2');
  assert.equal(hex(a.key), hex(b.key));
  assert.notEqual(hex(a.key), hex(d.key));
});

function rtmrsOf(quoteHex) {
  const q = Quote.parse(unhex(quoteHex));
  const td = q.report.asTd10();
  assert.ok(td, 'TDX quote');
  return { td, rtmrs: [td.rtMr0, td.rtMr1, td.rtMr2, td.rtMr3].map(hex) };
}

test('getQuote: quote parses, report data as given, RTMRs replay from the event log', async () => {
  const c = new DstackClient(sock);
  const rd = crypto.randomBytes(32);
  const q = await c.getQuote(rd);
  const { td, rtmrs } = rtmrsOf(q.quote);
  assert.equal(hex(td.reportData), hex(Buffer.concat([rd, Buffer.alloc(32)])));
  assert.equal(q.report_data, hex(td.reportData));
  assert.deepEqual(q.replayRtmrs(), rtmrs);
  const events = JSON.parse(q.event_log);
  assert.deepEqual(events.filter((e) => e.imr === 3).slice(0, 3).map((e) => e.event),
    ['system-preparing', 'app-id', 'compose-hash']);

  // EmitEvent extends RTMR3; the new quote still replays.
  await c.emitEvent('sdk-test-event', 'hello');
  const q2 = await c.getQuote('abc');
  const r2 = rtmrsOf(q2.quote).rtmrs;
  assert.notEqual(r2[3], rtmrs[3]);
  assert.deepEqual(q2.replayRtmrs(), r2);
  const last = JSON.parse(q2.event_log).pop();
  assert.equal(last.event, 'sdk-test-event');
  assert.equal(last.event_payload, hex(Buffer.from('hello')));

  // The legacy tappd socket.
  const t = new TappdClient(tappdSock);
  const tq = await t.tdxQuote(Buffer.from('deadbeef', 'hex'), 'raw');
  assert.equal(hex(rtmrsOf(tq.quote).td.reportData), '0'.repeat(120) + 'deadbeef');
});

test('quote verifies with dstack-verify against the simulated root', async () => {
  const c = new DstackClient(sock);
  const rd = crypto.randomBytes(64);
  await c.emitEvent('before-verify', 'x');
  const q = await c.getQuote(rd);
  const qfile = path.join(dir, 'q.bin');
  fs.writeFileSync(qfile, unhex(q.quote));
  const coll = path.join(dir, 'coll.json');
  execFileSync(path.join(BIN, 'dstack-tdx-sim'), ['collateral', '--dir', path.join(dir, 'platform'), '--out', coll]);
  const out = execFileSync(path.join(BIN, 'dstack-verify'), ['quote', '--quote', qfile, '--collateral', coll,
    '--root-ca', path.join(dir, 'platform', 'root-ca.pem'), '--json']).toString();
  const j = JSON.parse(out.trim().split('\n').pop());
  assert.equal(j.verified, true);
  assert.equal(j.status, 'UpToDate');
  assert.equal(j.report_data, hex(rd));
  // RTMR3 in the verified quote = replay of the returned event log, which ends with the emitted event.
  assert.equal(j.rtmr3, q.replayRtmrs()[3]);
  assert.equal(JSON.parse(q.event_log).pop().event, 'before-verify');
  // Without the simulated root (default Intel root) it must fail.
  assert.throws(() => execFileSync(path.join(BIN, 'dstack-verify'),
    ['quote', '--quote', qfile, '--collateral', coll], { stdio: 'pipe' }));
});

function findExtension(der, oid) {
  const cert = AsnConvert.parse(der, x509asn.Certificate);
  return (cert.tbsCertificate.extensions || []).find((e) => e.extnID === oid);
}

test('getTlsKey: certificate carries the attestation extension and the chain verifies', async () => {
  const c = new DstackClient(sock);
  const r = await c.getTlsKey({ subject: 'sdk.example', altNames: ['sdk.example'], usageRaTls: true,
    usageServerAuth: true, usageClientAuth: true });
  assert.equal(r.certificate_chain.length, 2);
  const leaf = new crypto.X509Certificate(r.certificate_chain[0]);
  const ca = new crypto.X509Certificate(r.certificate_chain[1]);
  assert.ok(leaf.checkIssued(ca));
  assert.ok(leaf.verify(ca.publicKey));
  assert.ok(ca.verify(ca.publicKey));
  assert.match(leaf.subject, /CN=sdk.example/);
  assert.ok(leaf.checkPrivateKey(crypto.createPrivateKey(r.key)));
  assert.ok(r.asUint8Array().length > 0);
  const ext = findExtension(leaf.raw, '1.3.6.1.4.1.62397.1.8');
  assert.ok(ext, 'attestation extension present');
  // extnValue = OCTET STRING wrapping the stripped VersionedAttestation (V0 starts with 0x00).
  const inner = Buffer.from(ext.extnValue.buffer);
  assert.equal(inner[0], 0x04);
  const noRa = await c.getTlsKey({ subject: 'plain' });
  assert.equal(findExtension(new crypto.X509Certificate(noRa.certificate_chain[0]).raw, '1.3.6.1.4.1.62397.1.8'), undefined);
});

test('sign and verify', async () => {
  const c = new DstackClient(sock);
  for (const algo of ['ed25519', 'secp256k1']) {
    const s = await c.sign(algo, 'message');
    assert.equal(s.signature_chain.length, 3);
    assert.equal((await c.verify(algo, 'message', s.signature, s.public_key)).valid, true);
    assert.equal((await c.verify(algo, 'other', s.signature, s.public_key)).valid, false);
  }
});

function rawPost(socketPath, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const r = http.request({ socketPath, path: p, method: 'POST', timeout: 20000,
      headers: { 'Content-Type': 'application/json', ...headers } }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: data }));
    });
    r.on('error', reject);
    r.on('timeout', () => r.destroy(new Error('timeout')));
    r.end(body);
  });
}

test('bad input => HTTP 400 {"error"} and the agent keeps serving', async () => {
  const cases = [
    ['/GetQuote', '{"report_data": '],                                       // malformed JSON
    ['/NoSuchMethod', '{}'],                                                  // unknown method
    ['/GetQuote', JSON.stringify({ report_data: 'a'.repeat(130) }), 'Report data is too long'],
    ['/GetQuote', JSON.stringify({ report_data: 'zz' })],                    // bad hex
    ['/GetKey', JSON.stringify({ path: 'x', algorithm: 'rsa' })],
    ['/GetQuote', '{"report_data":"' + '0'.repeat(11 * 1024 * 1024) + '"}'], // > 10 MiB
  ];
  for (const [p, body, msg] of cases) {
    const r = await rawPost(sock, p, body);
    assert.equal(r.status, 400, `${p} ${body.slice(0, 40)} => ${r.status} ${r.body.slice(0, 200)}`);
    const j = JSON.parse(r.body);
    assert.equal(typeof j.error, 'string');
    if (msg) assert.ok(j.error.includes(msg), j.error);
    const ok = await rawPost(sock, '/GetQuote', '{"report_data":"00"}');
    assert.equal(ok.status, 200);
  }
  assert.equal(agent.exitCode, null, 'agent still running');
});

test('external listener: Worker.Info/Version and /health', async () => {
  const get = (p, method = 'GET') => new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port: externalPort, path: p, method, timeout: 10000 }, (res) => {
      let d = '';
      res.on('data', (x) => { d += x; });
      res.on('end', () => resolve({ status: res.statusCode, body: d }));
    });
    r.on('error', reject);
    r.end();
  });
  assert.deepEqual(await get('/health'), { status: 200, body: 'OK' });
  const info = await get('/prpc/Worker.Info', 'POST');
  assert.equal(info.status, 200);
  assert.equal(JSON.parse(info.body).app_id, APP_ID);
  assert.equal((await get('/prpc/Worker.Version')).status, 200);
  assert.equal((await get('/prpc/Worker.GetKey', 'POST')).status, 400);
});
