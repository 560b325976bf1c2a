'use strict';
// Small helpers shared by the benchmark scripts: processes, clocks, caches, statistics.
const fs = require('node:fs');
const os = require('node:os');
const { spawnSync, execFileSync } = require('node:child_process');

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Runs a command, throws with its stderr on failure; returns stdout. */
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 * MiB, ...opts });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) {
    const err = (r.stderr || r.stdout || '').trim().split('\n').slice(-8).join('\n');
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${err}`);
  }
  return r.stdout;
}

/** Like run, but returns null instead of throwing. */
function tryRun(cmd, args, opts = {}) {
  try {
    return run(cmd, args, opts);
  } catch {
    return null;
  }
}

/** Wall time of fn in milliseconds (fn may be sync or async). */
async function timeMs(fn) {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function timeMsSync(fn) {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** Writes back dirty pages, then drops the page cache, dentries and inodes (root only). */
function dropCaches() {
  execFileSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3\n');
}

function median(xs) {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

function loadAvg() {
  return os.loadavg().map((x) => x.toFixed(2)).join(' ');
}

/** Deterministic pseudo-random bytes (xorshift128+), fast enough for GiB-sized files and incompressible. */
function prngFill(buf, seed) {
  let s0 = (seed ^ 0x9e3779b9) >>> 0 || 1;
  let s1 = (seed * 2654435761) >>> 0 || 2;
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
  for (let i = 0; i < u32.length; i++) {
    let x = s0;
    const y = s1;
    s0 = y;
    x ^= x << 11;
    x ^= x >>> 8;
    s1 = (x ^ y ^ (y >>> 19)) >>> 0;
    u32[i] = (s1 + y) >>> 0;
  }
  for (let i = u32.length << 2; i < buf.length; i++) buf[i] = (seed + i) & 0xff;
  return buf;
}

/** A seeded PRNG for choices (mulberry32). */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Writes a file of sizeBytes deterministic pseudo-random bytes in 1 MiB chunks. */
function writeRandomFile(file, sizeBytes, seed) {
  const fd = fs.openSync(file, 'w', 0o644);
  try {
    const chunk = Buffer.alloc(MiB);
    for (let off = 0; off < sizeBytes; off += MiB) {
      prngFill(chunk, seed + off / MiB);
      fs.writeSync(fd, chunk, 0, Math.min(MiB, sizeBytes - off), off);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function isMountpoint(dir) {
  return spawnSync('mountpoint', ['-q', dir]).status === 0;
}

function fmtNum(x, digits) {
  if (!Number.isFinite(x)) return 'n/a';
  if (digits !== undefined) return x.toFixed(digits);
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US');
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(2);
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return 'n/a';
  const a = Math.abs(n);
  if (a >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (a >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (a >= KiB) return `${(n / KiB).toFixed(1)} KiB`;
  return `${n} B`;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

module.exports = {
  KiB, MiB, GiB, run, tryRun, timeMs, timeMsSync, dropCaches, median, loadAvg, prngFill, rng,
  writeRandomFile, isMountpoint, fmtNum, fmtBytes, sleep,
};
