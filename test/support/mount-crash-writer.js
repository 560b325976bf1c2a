'use strict';
// Child process for the mount crash test: the crash-ops workload through a FUSE mount
// with ordinary syscalls. Prints "BEGIN <op>" before and "ACK <k>" after fsync (of the
// file, and of the directory for namespace changes). Stops at the first error (the
// mount's daemon is killed under it).
const fs = require('node:fs');
const path = require('node:path');
const { opContent, nextOp } = require('./crash-ops.js');

const [mnt, seedText] = process.argv.slice(2);
const state = { files: [], seed: Number(seedText), k: 0 };

function fsyncPath(p, flags = 'r') {
  const fd = fs.openSync(p, flags);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

try {
  for (;;) {
    const op = nextOp(state);
    process.stdout.write(`BEGIN ${JSON.stringify(op)}\n`);
    const file = path.join(mnt, op.name);
    if (op.op === 'create') {
      fs.writeFileSync(file, opContent(op.k, op.size));
      fsyncPath(file);
    } else if (op.op === 'overwrite' || op.op === 'append') {
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, opContent(op.k, op.length), 0, op.length, op.offset);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    } else if (op.op === 'truncate') {
      fs.truncateSync(file, op.size);
      fsyncPath(file);
    } else if (op.op === 'rename') {
      fs.renameSync(file, path.join(mnt, op.to));
      fsyncPath(mnt);
    } else if (op.op === 'unlink') {
      fs.unlinkSync(file);
      fsyncPath(mnt);
    }
    process.stdout.write(`ACK ${op.k}\n`);
  }
} catch (err) {
  process.stderr.write(`stopped: ${err.code || err.message}\n`);
  process.exit(0);
}
