'use strict';
// Child process for crash tests: runs a seeded write workload against a container layer
// through the Node API and prints "BEGIN <op>" before and "ACK <op>" after each op has
// been made durable with fsync. The parent kills it with SIGKILL at a random moment.
const { Pool } = require('../../dist/api.js');
const { S_IFREG } = require('../../dist/store/layer-store.js');
const { opContent, nextOp } = require('./crash-ops.js');

async function main() {
  const [root, layer, seedText] = process.argv.slice(2);
  const pool = await Pool.open(root);
  const fs = await pool.store.openLayer(layer);
  const state = { files: [], seed: Number(seedText), k: 0 };
  for (;;) {
    const op = nextOp(state);
    process.stdout.write(`BEGIN ${JSON.stringify(op)}\n`);
    const root = fs.rootIno;
    if (op.op === 'create') {
      const a = await fs.mknod(root, op.name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      await fs.write(a.ino, opContent(op.k, op.size), 0);
    } else if (op.op === 'overwrite') {
      const a = await fs.lookup(root, op.name);
      await fs.write(a.ino, opContent(op.k, op.length), op.offset);
    } else if (op.op === 'append') {
      const a = await fs.lookup(root, op.name);
      await fs.write(a.ino, opContent(op.k, op.length), op.offset);
    } else if (op.op === 'truncate') {
      const a = await fs.lookup(root, op.name);
      await fs.setattr(a.ino, { sizeBytes: op.size });
    } else if (op.op === 'rename') {
      await fs.rename(root, op.name, root, op.to);
    } else if (op.op === 'unlink') {
      await fs.unlink(root, op.name);
    }
    await fs.fsync();
    process.stdout.write(`ACK ${op.k}\n`);
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
