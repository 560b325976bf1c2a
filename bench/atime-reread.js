#!/usr/bin/env node
'use strict';
// Cost of access times on reads that reach dmfs: a kernel-transport mount of a fresh
// container (as root), one 1 MiB file, then N O_DIRECT 4 KiB preads of it (each one a FUSE
// READ served by the daemon: page-cache hits never reach it), timed by a Python loop.
// Compare builds by giving each one's dist/ (e.g. main's and this tree's), in turns:
//
//   npx tsc -p tsconfig.json && node bench/atime-reread.js DIST_DIR relatime|strictatime|noatime [N=20000]
//
// Prints microseconds per read and the file's atime and mtime afterwards (relatime: one
// update after the write, then none; strictatime: one metadata write per read).
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { execFile } = require('node:child_process');
const [dist, atime, nText = '20000'] = process.argv.slice(2);
if (!dist || !atime) {
  console.error('usage: node bench/atime-reread.js DIST_DIR relatime|strictatime|noatime [N]');
  process.exit(2);
}
const { Pool } = require(path.resolve(dist, 'api.js'));
const { MountService } = require(path.resolve(dist, 'fs/mount-service.js'));
(async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'pm-bench-pool-'));
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'pm-bench-mnt-'));
  const pool = await Pool.create({ root, sizeBytes: 2 * 2 ** 30 });
  await pool.store.createLayer('c', { kind: 'container' });
  const layer = await pool.store.openLayer('c');
  const svc = await MountService.start({ layer, mountpoint: mnt, transport: 'kernel', atime });
  try {
    // Never touch the mount from this (serving) process synchronously: a child does it.
    await new Promise((res, rej) => execFile('dd', ['if=/dev/zero', `of=${path.join(mnt, 'f')}`, 'bs=1M', 'count=1', 'status=none'], (e) => (e ? rej(e) : res())));
    const py = `
import os, time, sys, mmap
n = int(sys.argv[2])
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
for i in range(200): os.preadv(fd, [buf], (i % 256) * 4096)
t = time.perf_counter()
for i in range(n): os.preadv(fd, [buf], (i % 256) * 4096)
print('%.2f' % ((time.perf_counter() - t) / n * 1e6))
`;
    const out = await new Promise((res, rej) => execFile('python3', ['-c', py, path.join(mnt, 'f'), nText], (e, so) => (e ? rej(e) : res(so.trim()))));
    const st = await new Promise((res, rej) => execFile('stat', ['-c', 'atime %x mtime %y', path.join(mnt, 'f')], (e, so) => (e ? rej(e) : res(so.trim()))));
    console.log(`${path.basename(path.dirname(dist))} atime=${atime}: ${out} us per 4 KiB O_DIRECT read (${st})`);
  } finally {
    await svc.stop('bench done');
    await pool.close();
    fs.rmSync(root, { recursive: true, force: true });
    fs.rmdirSync(mnt);
  }
})().catch((e) => { console.error(e); process.exit(1); });
