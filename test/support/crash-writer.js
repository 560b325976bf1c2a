'use strict';
// Child process for crash tests: runs a seeded write workload against a container layer
// through the Node API and prints "BEGIN <op>" before and "ACK <op>" after each op has
// been made durable with fsync. The parent kills it with SIGKILL at a random moment.
// With a fourth argument `copies`, whole-file copies (copyFileRange, blocks shared) are
// mixed into the workload (nextOpWithCopies).
const { Pool } = require('../../dist/api.js');
const { S_IFREG } = require('../../dist/store/layer-store.js');
const { opContent, nextOp, nextOpWithCopies } = require('./crash-ops.js');

async function main() {
  const [root, layer, seedText, workload] = process.argv.slice(2);
  const next = workload === 'copies' ? nextOpWithCopies : nextOp;
  const pool = await Pool.open(root);
  const fs = await pool.store.openLayer(layer);
  const state = { files: [], seed: Number(seedText), k: 0 };
  for (;;) {
    const op = next(state);
    process.stdout.write(`BEGIN ${JSON.stringify(op)}\n`);
    const root = fs.rootIno;
    if (op.op === 'create') {
      const a = await fs.mknod(root, op.name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      await fs.write(a.ino, opContent(op.k, op.size), 0);
    } else if (op.op === 'copy') {
      const src = await fs.lookup(root, op.from);
      const dst = await fs.mknod(root, op.name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      for (let done = 0; done < src.sizeBytes; ) {
        const n = await fs.copyFileRange(src.ino, done, dst.ino, done, src.sizeBytes - done);
        if (n === 0) throw new Error(`copy of ${op.from} stopped at ${done} of ${src.sizeBytes}`);
        done += n;
      }
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
