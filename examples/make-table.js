#!/usr/bin/env node
'use strict';
// Writes examples/rootfs/srv/data/table.bin: 1 MiB of deterministic bytes, the "large
// file" of the example image (copy-on-write of one block shows on it). Generated rather
// than committed; idempotent.
const fs = require('node:fs');
const path = require('node:path');

function makeTable() {
  const file = path.join(__dirname, 'rootfs', 'srv', 'data', 'table.bin');
  if (fs.existsSync(file) && fs.statSync(file).size === 1024 * 1024) return file;
  const buf = Buffer.alloc(1024 * 1024);
  let x = 7;
  for (let i = 0; i < buf.length; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    buf.writeUInt32LE(x, i);
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, buf);
  return file;
}

module.exports = { makeTable };
if (require.main === module) console.log(makeTable());
