#!/usr/bin/env node
// Compiles contracts/*.sol with the pinned solc from node_modules and writes <Name>.json
// ({contractName, abi, bytecode, deployedBytecode, compiler, evmVersion}) to the output directory.
// Usage: node contracts/build.js [out_dir]   (default: <repo>/build/contracts)
'use strict';
const fs = require('fs');
const path = require('path');

const SOLC_VERSION = '0.8.28';
const EVM_VERSION = 'shanghai'; // ganache 7.9.2's newest hardfork (no cancun opcodes)

const repo = path.resolve(__dirname, '..');
let solc;
try {
  solc = require(path.join(repo, 'node_modules', 'solc'));
} catch (e) {
  console.error(`solc not found in ${repo}/node_modules: run 'npm ci' in ${repo}`);
  process.exit(2);
}
if (!solc.version().startsWith(SOLC_VERSION + '+')) {
  console.error(`solc ${solc.version()} found, ${SOLC_VERSION} required (package.json pins it)`);
  process.exit(2);
}

const outDir = path.resolve(process.argv[2] || path.join(repo, 'build', 'contracts'));
const srcDir = __dirname;
const sources = {};
for (const f of fs.readdirSync(srcDir).filter((f) => f.endsWith('.sol')).sort()) {
  sources[f] = { content: fs.readFileSync(path.join(srcDir, f), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
let failed = false;
for (const e of output.errors || []) {
  console.error(e.formattedMessage || e.message);
  if (e.severity === 'error') failed = true;
}
if (failed) process.exit(1);

fs.mkdirSync(outDir, { recursive: true });
let n = 0;
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    const artifact = {
      contractName: name,
      sourceName: file,
      compiler: solc.version(),
      evmVersion: EVM_VERSION,
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    };
    const tmp = path.join(outDir, `.${name}.json.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(artifact, null, 2) + '\n');
    fs.renameSync(tmp, path.join(outDir, `${name}.json`));
    n++;
  }
}
console.log(`compiled ${n} contracts with solc ${solc.version()} (evm ${EVM_VERSION}) -> ${outDir}`);
