#!/usr/bin/env node
'use strict';
// What the metadata environment's write map would buy: store operations with LMDB's
// MDB_WRITEMAP (the old setting, which SIGBUSes on a full host file system) against the
// pwrite commits dmfs uses now, same session, alternating, on the temp dir's file system.
//
//   npx tsc -p tsconfig.json && node bench/writemap-cost.js [--rounds 3] [--ops 4000]
//
// It copies dist/ twice into a temp dir (one copy with useWritemap flipped to true), and
// in each round, for each variant, times through the store API: mknod of N empty files,
// a 4 KiB write into each (inline in metadata: one commit), and a 64 KiB write into each
// (one new pool block: data write plus one commit). Prints microseconds per operation.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const repo = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const rounds = opt('--rounds', 3);
const ops = opt('--ops', 4000);

if (process.argv[2] === '--child') {
  const [, , , dist, root] = process.argv;
  const { Pool } = require(path.join(dist, 'api.js'));
  (async () => {
    const pool = await Pool.create({ root, sizeBytes: 4 * 1024 ** 3 });
    await pool.store.createLayer('c', { parent: 'base', kind: 'container' });
    const l = await pool.store.openLayer('c');
    const n = Number(process.argv[5]);
    const small = Buffer.alloc(4096, 1);
    const big = Buffer.alloc(65536, 2);
    const inos = [];
    let t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) inos.push((await l.mknod(l.rootIno, `f${i}`, { mode: 0o100644, uid: 0, gid: 0 })).ino);
    const mknod = Number(process.hrtime.bigint() - t) / 1e3 / n;
    t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await l.write(inos[i], small, 0);
    const inline = Number(process.hrtime.bigint() - t) / 1e3 / n;
    t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await l.write(inos[i], big, 65536);
    const block = Number(process.hrtime.bigint() - t) / 1e3 / n;
    await l.close();
    await pool.close();
    process.stdout.write(JSON.stringify({ mknod, inline, block }) + '\n');
  })();
} else {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-writemap-'));
  try {
    fs.symlinkSync(path.join(repo, 'node_modules'), path.join(tmp, 'node_modules'));
    fs.copyFileSync(path.join(repo, 'package.json'), path.join(tmp, 'package.json'));
    fs.mkdirSync(path.join(tmp, 'native'));
    const addon = path.join(repo, 'native', 'dmfs_native.node');
    if (fs.existsSync(addon)) fs.copyFileSync(addon, path.join(tmp, 'native', 'dmfs_native.node'));
    const variants = { pwrite: path.join(tmp, 'dist-pwrite'), writemap: path.join(tmp, 'dist-writemap') };
    for (const dir of Object.values(variants)) fs.cpSync(path.join(repo, 'dist'), dir, { recursive: true });
    const envJs = path.join(variants.writemap, 'pool', 'metadata-env.js');
    const src = fs.readFileSync(envJs, 'utf8');
    if (!src.includes('useWritemap: false')) throw new Error('dist/pool/metadata-env.js has no useWritemap: false to flip');
    fs.writeFileSync(envJs, src.replace('useWritemap: false', 'useWritemap: true'));
    const results = { pwrite: [], writemap: [] };
    for (let r = 0; r < rounds; r++) {
      for (const [name, dist] of Object.entries(variants)) {
        const root = path.join(tmp, `pool-${name}-${r}`);
        const out = execFileSync(process.execPath, [__filename, '--child', dist, root, String(ops)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
        results[name].push(JSON.parse(out));
        fs.rmSync(root, { recursive: true, force: true });
      }
    }
    const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    console.log(`us per operation, median of ${rounds} rounds, ${ops} operations each`);
    console.log('variant    mknod   4K inline write   64K block write');
    for (const [name, rs] of Object.entries(results)) {
      const m = (k) => median(rs.map((x) => x[k])).toFixed(1).padStart(7);
      console.log(`${name.padEnd(9)} ${m('mknod')}   ${m('inline')}           ${m('block')}`);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
