'use strict';
// Child process for the copy crash test: the crash workload with whole-file copies
// (LayerFs.copyFileRange, blocks shared) mixed in, each op made durable with fsync and
// announced with "BEGIN <op>" / "ACK <k>" (see crash-writer.js). Killed with SIGKILL.
const { Pool } = require('../../dist/api.js');
const { S_IFREG } = require('../../dist/store/layer-store.js');
const { opContent, nextOpWithCopies } = require('./crash-ops.js');

async function main() {
  const [root, layer, seedText] = process.argv.slice(2);
  const pool = await Pool.open(root);
  const fs = await pool.store.openLayer(layer);
  const state = { files: [], seed: Number(seedText), k: 0 };
  const dir = fs.rootIno;
  for (;;) {
    const op = nextOpWithCopies(state);
    process.stdout.write(`BEGIN ${JSON.stringify(op)}\n`);
    if (op.op === 'create') {
      const a = await fs.mknod(dir, op.name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      await fs.write(a.ino, opContent(op.k, op.size), 0);
    } else if (op.op === 'copy') {
      const src = await fs.lookup(dir, op.from);
      const dst = await fs.mknod(dir, op.name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      for (let done = 0; done < src.sizeBytes; ) {
        const n = await fs.copyFileRange(src.ino, done, dst.ino, done, src.sizeBytes - done);
        if (n === 0) throw new Error(`copy of ${op.from} stopped at ${done} of ${src.sizeBytes}`);
        done += n;
      }
    } else if (op.op === 'overwrite' || op.op === 'append') {
      const a = await fs.lookup(dir, op.name);
      await fs.write(a.ino, opContent(op.k, op.length), op.offset);
    } else if (op.op === 'truncate') {
      const a = await fs.lookup(dir, op.name);
      await fs.setattr(a.ino, { sizeBytes: op.size });
    } else if (op.op === 'rename') {
      await fs.rename(dir, op.name, dir, op.to);
    } else if (op.op === 'unlink') {
      await fs.unlink(dir, op.name);
    }
    await fs.fsync();
    process.stdout.write(`ACK ${op.k}\n`);
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
