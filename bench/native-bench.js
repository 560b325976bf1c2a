#!/usr/bin/env node
'use strict';
// Native block path vs TypeScript fallback, same session, same files.
//
//   npm run build && node scripts/build-native.js && node bench/native-bench.js [--write] [--rounds N]
//
// Workloads (median of N rounds after one warm-up round; native and fallback rounds alternate):
// - block copy: 256 copyRange calls of 64 KiB (one pool block each), one at a time, from a
//   16 MiB file into a fresh file, on the file system of the temp dir (ext4 here) and on a
//   loop-mounted xfs image (root only: mkfs.xfs + mount -o loop), where the addon reflinks.
// - gather: readBlocks of 16 x 64 KiB, contiguous (one preadv run) and scattered, page cache warm.
// - crc32c of 64 KiB.
// --write puts the table and the command under "## Native block path" in BENCHMARKS.md,
// leaving every other section as it is.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');
const { randomBytes } = require('node:crypto');

const ROOT = path.join(__dirname, '..');
let nativeMod;
try {
  nativeMod = require(path.join(ROOT, 'dist', 'native'));
} catch (err) {
  console.error(`bench: cannot load dist/native (${err.message.split('\n')[0]}); run 'npm run build' first`);
  process.exit(1);
}
const { tryLoadNative, fallbackBlockIo } = nativeMod;

const args = process.argv.slice(2);
const WRITE = args.includes('--write');
const roundsArg = args.indexOf('--rounds');
const ROUNDS = roundsArg >= 0 ? Math.max(1, parseInt(args[roundsArg + 1], 10)) : 9;

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const COPY_BLOCKS = 256;

const load = tryLoadNative();
if (!load.blockIo) {
  console.error(`bench: native addon not loaded (${load.reason}); build it with node scripts/build-native.js`);
  process.exit(1);
}
const IMPLS = [
  ['native', load.blockIo],
  ['fallback', fallbackBlockIo],
];

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Runs fn(io, round) (async, resolves its op count) for every implementation, ROUNDS+1
 * times, alternating which goes first so both see the same background load. Returns the
 * median ns per op of the last ROUNDS rounds, per implementation.
 */
async function measure(fn) {
  const perOp = Object.fromEntries(IMPLS.map(([k]) => [k, []]));
  for (let r = 0; r <= ROUNDS; r++) {
    const order = r % 2 ? [...IMPLS].reverse() : IMPLS;
    for (const [kind, io] of order) {
      const t0 = process.hrtime.bigint();
      const ops = await fn(io, r);
      const ns = Number(process.hrtime.bigint() - t0);
      if (r > 0) perOp[kind].push(ns / ops);
    }
  }
  return Object.fromEntries(Object.entries(perOp).map(([k, xs]) => [k, median(xs)]));
}

function fsType(dir) {
  const r = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' });
  const t = r.status === 0 ? r.stdout.trim() : 'unknown';
  return t === 'ext2/ext3' ? 'ext4' : t;
}

function makeSource(dir) {
  const p = path.join(dir, 'bench-src');
  fs.writeFileSync(p, randomBytes(COPY_BLOCKS * BLOCK));
  const fd = fs.openSync(p, 'r');
  fs.fsyncSync(fd);
  return { p, fd };
}

function blockCopy(dir, srcFd) {
  return measure(async (io, round) => {
    const dst = path.join(dir, `bench-dst-${io.kind}-${round}`);
    const fd = fs.openSync(dst, 'w+');
    try {
      for (let i = 0; i < COPY_BLOCKS; i++) {
        const n = await io.copyRange(srcFd, i * BLOCK, fd, i * BLOCK, BLOCK);
        if (n !== BLOCK) throw new Error(`short copy ${n}`);
      }
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dst);
    }
    return COPY_BLOCKS;
  });
}

function gather(fd, scattered) {
  const bufs = Array.from({ length: 16 }, () => Buffer.alloc(BLOCK));
  const offs = scattered
    ? Array.from({ length: 16 }, (_, i) => ((i * 97) % COPY_BLOCKS) * BLOCK) // distinct, non-adjacent
    : Array.from({ length: 16 }, (_, i) => (32 + i) * BLOCK);
  const OPS = 500;
  return measure(async (io) => {
    for (let k = 0; k < OPS; k++) {
      const n = await io.readBlocks(fd, bufs, offs);
      if (n !== 16 * BLOCK) throw new Error(`short gather ${n}`);
    }
    return OPS;
  });
}

async function crc() {
  const data = randomBytes(BLOCK);
  const OPS = 5000;
  let sink = 0;
  const ns = await measure(async (io) => {
    for (let k = 0; k < OPS; k++) sink ^= io.crc32c(data);
    return OPS;
  });
  if (sink === 0.5) console.log(sink); // keep the loop observable
  return ns;
}

function mountXfs() {
  const why = (() => {
    if (process.getuid?.() !== 0) return 'not root';
    for (const t of ['mkfs.xfs', 'mount', 'umount']) {
      if (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) return `${t} missing`;
    }
    return null;
  })();
  if (why) return { skipped: why };
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-bench-xfs-'));
  const img = path.join(work, 'xfs.img');
  const dir = path.join(work, 'mnt');
  fs.mkdirSync(dir);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, 300 * MiB);
  try {
    execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', img], { stdio: 'pipe' });
    execFileSync('mount', ['-o', 'loop', img, dir], { stdio: 'pipe' });
  } catch (err) {
    fs.rmSync(work, { recursive: true, force: true });
    return { skipped: `mount failed: ${String(err.stderr || err.message).trim()}` };
  }
  return {
    dir,
    cleanup() {
      spawnSync('umount', [dir]);
      fs.rmSync(work, { recursive: true, force: true });
    },
  };
}

function fmtUs(ns) {
  const us = ns / 1000;
  return us >= 100 ? `${us.toFixed(0)} µs` : `${us.toFixed(1)} µs`;
}

function fmtRate(ns, bytes) {
  const mibps = bytes / MiB / (ns / 1e9);
  return mibps >= 10000 ? `${(mibps / 1024).toFixed(1)} GiB/s` : `${mibps.toFixed(0)} MiB/s`;
}

async function main() {
  const rows = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-bench-'));
  const hostFs = fsType(tmp);
  const src = makeSource(tmp);
  const xfs = mountXfs();
  try {
    const add = async (name, bytes, run) => {
      rows.push({ name, bytes, ...(await run()) });
      process.stderr.write(`  ${name}: done\n`);
    };
    await add(`block copy 64 KiB, ${hostFs} (${path.dirname(tmp)})`, BLOCK, () => blockCopy(tmp, src.fd));
    if (xfs.dir) {
      const xsrc = makeSource(xfs.dir);
      await add('block copy 64 KiB, xfs loop (reflink)', BLOCK, () => blockCopy(xfs.dir, xsrc.fd));
      fs.closeSync(xsrc.fd);
    } else {
      rows.push({ name: `block copy 64 KiB, xfs loop: skipped (${xfs.skipped})`, bytes: 0 });
    }
    await add('gather 16 x 64 KiB, contiguous', 16 * BLOCK, () => gather(src.fd, false));
    await add('gather 16 x 64 KiB, scattered', 16 * BLOCK, () => gather(src.fd, true));
    await add('crc32c 64 KiB', BLOCK, () => crc());
  } finally {
    fs.closeSync(src.fd);
    if (xfs.cleanup) xfs.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  }

  const header = '| workload | native | fallback | native speed-up |';
  const lines = [header, '| --- | ---: | ---: | ---: |'];
  for (const r of rows) {
    if (r.native === undefined) {
      lines.push(`| ${r.name} | – | – | – |`);
      continue;
    }
    lines.push(
      `| ${r.name} | ${fmtUs(r.native)} (${fmtRate(r.native, r.bytes)}) | ${fmtUs(r.fallback)} (${fmtRate(r.fallback, r.bytes)}) | ${(r.fallback / r.native).toFixed(1)}x |`,
    );
  }
  const table = lines.join('\n');
  const cpu = (os.cpus()[0] || { model: 'unknown cpu' }).model.trim();
  const crcImpl = load.blockIo.crc32cImpl;
  const env = `Node ${process.version}, Linux ${os.release()}, ${os.cpus().length} x ${cpu}, CRC-32C path: ${crcImpl}; median of ${ROUNDS} rounds, time per operation (throughput); load average ${os.loadavg()[0].toFixed(1)} at the end (shared machine: absolute figures move between runs, the ratios less).`;
  console.log(table);
  console.log(`\n${env}`);

  if (WRITE) {
    const section = [
      '## Native block path',
      '',
      'Rust addon (native/) against the TypeScript fallback (src/native/fallback.ts), same files, same session.',
      'Block copy: 256 sequential `copyRange` calls of one 64 KiB block from a 16 MiB file into a new file',
      '(the addon reflinks on xfs, uses copy_file_range on ext4; the fallback reads and writes).',
      'Gather: `readBlocks` of 16 blocks, page cache warm (contiguous = one preadv on the addon).',
      '',
      '```',
      'npm run build && node scripts/build-native.js && node bench/native-bench.js --write',
      '```',
      '',
      table,
      '',
      env,
      '',
    ].join('\n');
    const file = path.join(ROOT, 'BENCHMARKS.md');
    let text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmarks\n\n';
    const start = text.indexOf('## Native block path');
    if (start >= 0) {
      const rest = text.slice(start + 1);
      const next = rest.search(/^## /m);
      const end = next >= 0 ? start + 1 + next : text.length;
      text = text.slice(0, start) + section + (end < text.length ? '\n' + text.slice(end) : '');
    } else {
      text = text.replace(/\n*$/, '\n\n') + section;
    }
    fs.writeFileSync(file, text);
    console.log(`\nwrote the "Native block path" section of ${path.relative(process.cwd(), file) || file}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
