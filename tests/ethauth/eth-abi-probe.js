#!/usr/bin/env node
// Compiles tests/ethauth/AbiProbe.sol with the pinned solc and prints its creation bytecode (hex, 0x-prefixed).
'use strict';
const fs = require('fs');
const path = require('path');
const repo = path.resolve(__dirname, '..', '..');
const solc = require(path.join(repo, 'node_modules', 'solc'));
const read = (p) => fs.readFileSync(path.join(repo, p), 'utf8');
const input = {
  language: 'Solidity',
  sources: {
    'tests/ethauth/AbiProbe.sol': { content: read('tests/ethauth/AbiProbe.sol') },
    'contracts/IAppAuth.sol': { content: read('contracts/IAppAuth.sol') },
  },
  settings: { evmVersion: 'shanghai', outputSelection: { '*': { '*': ['evm.bytecode.object'] } } },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errs = (out.errors || []).filter((e) => e.severity === 'error');
if (errs.length) {
  for (const e of errs) console.error(e.formattedMessage);
  process.exit(1);
}
process.stdout.write('0x' + out.contracts['tests/ethauth/AbiProbe.sol'].AbiProbe.evm.bytecode.object + '\n');
