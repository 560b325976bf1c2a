#!/usr/bin/env node
'use strict';
// Requests per second through the kernel transport's codec and the operations table, with
// no kernel in between: raw fuse.h requests (LOOKUP, GETATTR, 4 KiB READ and WRITE, 16 in
// flight) dispatched as /dev/fuse would hand them over, answered by a fake session, over a
// container layer of a real pool (page cache warm). What a change to the FUSE hot paths
// costs on the JS side, without FUSE or root.
//
//   npm run build && node bench/fuse-dispatch.js [--rounds N] [--requests N] [--dmfs DIR]
//
// --dmfs DIR measures another checkout's dist/ (e.g. main, to compare a patch on the same
// machine); a tree from before the one operations table (dist/fs/kernel-operations.js) is
// driven through its createKernelOperations. Prints one JSON line: the median of N rounds.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const TREE = path.resolve(opt('--dmfs', path.join(__dirname, '..')));
const ROUNDS = Math.max(1, Number(opt('--rounds', 5)));
const REQUESTS = Math.max(1000, Number(opt('--requests', 40000)));
const DEPTH = 16;
const NFILES = 512;
const FILE_BYTES = 64 * 1024;

const { Pool } = require(path.join(TREE, 'dist', 'api'));

function dispatcherFor(layer) {
  const opts = {
    blockSizeBytes: 65536, entryTimeoutS: 3600, attrTimeoutS: 3600, negativeTimeoutS: 3600, keepCache: true,
    writebackCache: false, cacheDirs: true,
  };
  const before = path.join(TREE, 'dist', 'fs', 'kernel-operations.js');
  if (fs.existsSync(before)) return require(before).createKernelOperations(layer, opts);
  const { createFuseOperations } = require(path.join(TREE, 'dist', 'fs', 'fuse-operations.js'));
  const { createKernelTransport } = require(path.join(TREE, 'dist', 'fs', 'kernel-transport.js'));
  return createKernelTransport(createFuseOperations(layer, opts));
}

const OP = { LOOKUP: 1, GETATTR: 3, OPEN: 14, READ: 15, WRITE: 16, INIT: 26 };

/** struct fuse_in_header; the caller is root. */
function header(buf, len, opcode, unique, nodeid) {
  buf.writeUInt32LE(len, 0);
  buf.writeUInt32LE(opcode, 4);
  buf.writeBigUInt64LE(BigInt(unique), 8);
  buf.writeBigUInt64LE(BigInt(nodeid), 16);
  buf.fill(0, 24, 40);
}

/** struct fuse_read_in / fuse_write_in (same first 40 bytes). */
function ioIn(buf, fh, offset, size) {
  buf.writeBigUInt64LE(BigInt(fh), 40);
  buf.writeBigUInt64LE(BigInt(offset), 48);
  buf.writeUInt32LE(size, 56);
  buf.fill(0, 60, 80);
}

/** The session side: each reply resolves the request waiting for it. */
class FakeSession {
  constructor() {
    this.waiting = new Map();
    this.inFlight = 1;
  }
  done(unique, errno, body) {
    const w = this.waiting.get(unique);
    this.waiting.delete(unique);
    w(errno, body);
  }
  send(u, reply, total) {
    this.done(u.lo, 0, reply.subarray(16, total));
  }
  ok(u) {
    this.done(u.lo, 0, null);
  }
  fail(u, errno) {
    this.done(u.lo, errno, null);
  }
  markInitialised() {}
}

async function main() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-dispatch-'));
  const pool = await Pool.create({ root, sizeBytes: 4 * 2 ** 30 });
  await pool.store.createLayer('c', { parent: 'base', kind: 'container' });
  const layer = await pool.store.openLayer('c');
  const dir = await layer.mkdir(layer.rootIno, 'd', { mode: 0o755, uid: 0, gid: 0 });
  const files = [];
  for (let i = 0; i < NFILES; i++) {
    const a = await layer.mknod(dir.ino, `f${i}`, { mode: 0o100644, uid: 0, gid: 0 });
    await layer.write(a.ino, Buffer.alloc(FILE_BYTES, i & 255), 0);
    files.push(a.ino);
  }
  const d = dispatcherFor(layer);
  const session = new FakeSession();
  let unique = 1;
  const once = (build) => new Promise((resolve, reject) => {
    const u = unique++;
    const buf = Buffer.alloc(128 * 1024);
    session.waiting.set(u, (errno, body) => (errno ? reject(new Error(`errno ${errno}`)) : resolve(body && Buffer.from(body))));
    d.dispatch(buf, build(buf, u), session);
  });
  await once((b, u) => {
    header(b, 104, OP.INIT, u, 0);
    b.writeUInt32LE(7, 40);
    b.writeUInt32LE(38, 44);
    b.writeUInt32LE(131072, 48);
    b.writeUInt32LE(0xffffffff, 52); // every flag offered
    b.fill(0, 56, 104);
    return 104;
  });
  const fhs = [];
  for (const ino of files) {
    const body = await once((b, u) => (header(b, 48, OP.OPEN, u, ino), b.writeUInt32LE(2, 40), b.writeUInt32LE(0, 44), 48));
    fhs.push(Number(body.readBigUInt64LE(0)));
  }
  const names = files.map((_, i) => Buffer.from(`f${i}\0`));
  const data = Buffer.alloc(4096, 7);
  const workloads = {
    lookup: (b, u, i) => {
      const n = names[i % NFILES];
      header(b, 40 + n.length, OP.LOOKUP, u, dir.ino);
      n.copy(b, 40);
      return 40 + n.length;
    },
    getattr: (b, u, i) => (header(b, 56, OP.GETATTR, u, files[i % NFILES]), b.fill(0, 40, 56), 56),
    read4k: (b, u, i) => (header(b, 80, OP.READ, u, files[i % NFILES]), ioIn(b, fhs[i % NFILES], (i * 4096) % FILE_BYTES, 4096), 80),
    write4k: (b, u, i) => {
      header(b, 80 + 4096, OP.WRITE, u, files[i % NFILES]);
      ioIn(b, fhs[i % NFILES], (i * 4096) % FILE_BYTES, 4096);
      data.copy(b, 80);
      return 80 + 4096;
    },
  };
  const result = {};
  for (const [name, build] of Object.entries(workloads)) {
    const samples = [];
    for (let r = 0; r < ROUNDS; r++) {
      let next = 0;
      const t0 = process.hrtime.bigint();
      // DEPTH requests in flight, each slot's buffer reused once its request is answered.
      const slot = async () => {
        const buf = Buffer.alloc(128 * 1024);
        while (next < REQUESTS) {
          const i = next++;
          const u = unique++;
          const answered = new Promise((resolve, reject) => session.waiting.set(u, (errno) => (errno ? reject(new Error(`${name}: errno ${errno}`)) : resolve())));
          const kept = d.dispatch(buf, build(buf, u, i), session);
          await answered;
          if (kept) await kept;
        }
      };
      await Promise.all(Array.from({ length: DEPTH }, slot));
      samples.push(REQUESTS / (Number(process.hrtime.bigint() - t0) / 1e9));
    }
    samples.sort((a, b) => a - b);
    result[name] = Math.round(samples[Math.floor(samples.length / 2)]);
  }
  console.log(JSON.stringify({ dmfs: TREE, rounds: ROUNDS, requests: REQUESTS, depth: DEPTH, requestsPerSecond: result, loadavg: os.loadavg().map((l) => +l.toFixed(2)) }));
  await layer.close();
  await pool.close();
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
