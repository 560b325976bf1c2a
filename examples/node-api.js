#!/usr/bin/env node
'use strict';
// The dmfs Node API end to end, without FUSE: a pool in a temp directory, an image layer
// built from examples/rootfs, a container on it, a copy-on-write write and a delete.
// Run: npm run build && node examples/node-api.js
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Pool, S_IFREG, formatBytes } = require('..');
const { makeTable } = require('./make-table');

async function copyTree(layer, srcDir, dirIno) {
  for (const entry of fs.readdirSync(srcDir, { withFileTypes: true })) {
    if (entry.name === '.keep') continue;
    const src = path.join(srcDir, entry.name);
    const st = fs.lstatSync(src);
    const owner = { uid: 0, gid: 0 };
    if (entry.isDirectory()) {
      const d = await layer.mkdir(dirIno, entry.name, { mode: st.mode & 0o7777, ...owner });
      await copyTree(layer, src, d.ino);
    } else if (entry.isFile()) {
      const f = await layer.mknod(dirIno, entry.name, { mode: S_IFREG | (st.mode & 0o7777), ...owner });
      await layer.write(f.ino, fs.readFileSync(src), 0);
    }
  }
}

async function main() {
  makeTable();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-example-'));
  const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
  try {
    // 1. An image layer from a directory: writable while building, read-only once sealed.
    await pool.store.createLayer('example-image', { kind: 'image', building: true });
    const image = await pool.store.openLayer('example-image');
    await copyTree(image, path.join(__dirname, 'rootfs'), image.rootIno);
    await image.close();
    await pool.store.sealLayer('example-image');

    // 2. A container on it: O(1), nothing copied.
    const t0 = process.hrtime.bigint();
    await pool.store.createLayer('web-1', { parent: 'example-image', kind: 'container' });
    console.log(`container created in ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(2)} ms`);

    // 3. Copy-on-write: 4 KiB into the middle of a 1 MiB lower file copies one 64 KiB block.
    const c = await pool.store.openLayer('web-1');
    const table = await c.resolve('/srv/data/table.bin');
    await c.write(table.ino, Buffer.alloc(4096, 0xab), 512 * 1024);
    // 4. Delete interception: the lower file is hidden by a whiteout.
    const etc = await c.resolve('/etc');
    await c.unlink(etc.ino, 'hostname');
    await c.fsync();
    for await (const change of c.changes()) console.log(`${change.change.padEnd(8)} ${change.path}`);
    await c.close();

    for (const l of await pool.store.listLayers()) {
      console.log(`${l.name.padEnd(14)} ${l.kind.padEnd(9)} exclusive ${formatBytes(l.exclusiveBytes).padStart(9)}  shared ${formatBytes(l.sharedBytes)}`);
    }
    const web = await pool.store.getLayer('web-1');
    if (web.exclusiveBytes !== 64 * 1024) throw new Error(`expected one 64 KiB block in web-1, found ${web.exclusiveBytes} bytes`);
  } finally {
    await pool.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
