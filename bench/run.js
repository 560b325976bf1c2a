#!/usr/bin/env node
'use strict';
// dmfs against kernel overlayfs and fuse-overlayfs: same lower content, same disk, same run.
//
//   npm run bench [-- --quick] [-- --rounds N] [-- --only seqread,cow,...] [-- --write]
//   node bench/run.js [options]      (after npm run build; needs root, /dev/fuse, fio, fuse-overlayfs)
//
// Options:
//   --quick            small version (one round, 2 s fio runs, 1 GiB "large" image, the
//                      /etc /usr/bin /usr/sbin /var slice of the rootfs tar): under two minutes
//   --rounds N         rounds per workload (default 5; median reported)
//   --only LIST        comma-separated workloads: seqread,seqwrite,cow,randread,metadata,snapshot,space
//   --dir DIR          scratch directory (default /var/tmp/dmfs-bench); emptied first, removed at the end
//   --cache DIR        where the rootfs and the random file are kept between runs (default /var/tmp/dmfs-bench-cache)
//   --write            put the results under "## dmfs vs overlayfs and fuse-overlayfs" in BENCHMARKS.md
//   --json FILE        also write every sample as JSON
//   --cpu-prof DIR     CPU profile of every mount daemon into DIR (bench/profile-summary.js reads them)
//   --keep             leave the scratch directory (pools, uppers) in place
//   --dmfs DIR         measure the dmfs of another checkout (its bin/dmfs.js and dist/), e.g. to
//                      compare a patch against this tree on the same machine
//
// Every system mounts a fresh writable layer on the same content: dmfs a container layer
// on an image layer imported from the lower directory, overlayfs and fuse-overlayfs an
// upper/work pair on that lower directory. Cold figures drop the page cache, dentries and
// inodes first (echo 3 > /proc/sys/vm/drop_caches). Rounds alternate between systems.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const U = require('./lib/util');
const { ensureRootfs, ensureRandomFile } = require('./lib/dataset');
const { Dmfs, useTree, tree } = require('./lib/dmfs');
const { DmfsSystem, OverlaySystem } = require('./lib/peers');
const io = require('./lib/io');
const { summarize, table, writeSection } = require('./lib/report');

const { GiB, MiB, KiB } = U;
const REPO = path.join(__dirname, '..');
const ALL = ['seqread', 'seqwrite', 'cow', 'randread', 'metadata', 'snapshot', 'space'];

// ---- options -------------------------------------------------------------------------------

function parseArgs(argv) {
  const o = { quick: false, rounds: null, only: ALL, dir: '/var/tmp/dmfs-bench', cache: '/var/tmp/dmfs-bench-cache', write: false, json: null, cpuProf: null, keep: false, dmfs: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--rounds') o.rounds = Math.max(1, parseInt(val(), 10) || 1);
    else if (a === '--only') o.only = val().split(',').filter(Boolean);
    else if (a === '--dir') o.dir = path.resolve(val());
    else if (a === '--cache') o.cache = path.resolve(val());
    else if (a === '--write') o.write = true;
    else if (a === '--json') o.json = path.resolve(val());
    else if (a === '--cpu-prof') o.cpuProf = path.resolve(val());
    else if (a === '--keep') o.keep = true;
    else if (a === '--dmfs') o.dmfs = path.resolve(val());
    else if (a === '-h' || a === '--help') usage(null);
    else usage(`unknown option ${a}`);
  }
  for (const w of o.only) if (!ALL.includes(w)) usage(`unknown workload ${w} (one of ${ALL.join(', ')})`);
  return o;
}

function usage(msg) {
  const head = fs.readFileSync(__filename, 'utf8').split('\n').slice(2, 20).map((l) => l.replace(/^\/\/ ?/, '')).join('\n');
  if (msg) {
    process.stderr.write(`bench: ${msg}\n\n${head}\n`);
    process.exit(2);
  }
  process.stdout.write(head + '\n');
  process.exit(0);
}

const opts = parseArgs(process.argv.slice(2));
if (opts.dmfs) useTree(opts.dmfs);
const cfg = opts.quick
  ? { rounds: opts.rounds ?? 1, bigBytes: GiB, fioSeconds: 2, largeFiles: 1, metaRounds: 1, metaSlice: true, snapRounds: 2, containers: 100 }
  : { rounds: opts.rounds ?? 5, bigBytes: GiB, fioSeconds: 5, largeFiles: 10, metaRounds: Math.min(opts.rounds ?? 3, 3), metaSlice: false, snapRounds: opts.rounds ?? 5, containers: 100 };

const log = (m) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)} load ${U.loadAvg()}] ${m}\n`);

// ---- preflight -----------------------------------------------------------------------------

function preflight() {
  const problems = [];
  if (process.getuid?.() !== 0) problems.push('run as root (mounts, drop_caches)');
  if (!fs.existsSync('/dev/fuse')) problems.push('/dev/fuse is missing');
  if (!U.tryRun('sh', ['-c', 'command -v fuse-overlayfs'])) problems.push('fuse-overlayfs missing (apt-get install fuse-overlayfs)');
  if (!U.tryRun('sh', ['-c', 'command -v fio'])) problems.push('fio missing (apt-get install fio)');
  if (!/\boverlay\b/.test(fs.readFileSync('/proc/filesystems', 'utf8'))) U.tryRun('modprobe', ['overlay']);
  if (!/\boverlay\b/.test(fs.readFileSync('/proc/filesystems', 'utf8'))) problems.push('kernel overlayfs unavailable');
  if (!fs.existsSync(path.join(tree(), 'dist', 'index.js'))) problems.push(`${path.join(tree(), 'dist')} missing: npm run build`);
  if (problems.length) {
    process.stderr.write(`bench: cannot run here:\n  - ${problems.join('\n  - ')}\n`);
    process.exit(1);
  }
}

function machine(treeDir) {
  const cpus = os.cpus();
  let probe = opts.dir;
  while (!fs.existsSync(probe)) probe = path.dirname(probe);
  const fsrc = U.tryRun('findmnt', ['-no', 'SOURCE,FSTYPE', '-T', probe])?.trim().replace(/\s+/, ' ') ?? '?';
  const git = U.tryRun('git', ['-C', treeDir, 'rev-parse', '--short', 'HEAD'])?.trim() ?? `(not a git checkout: ${treeDir})`;
  const dirty = U.tryRun('git', ['-C', treeDir, 'status', '--porcelain', '--', 'src'])?.trim() ? ' + uncommitted src/ changes' : '';
  return {
    cpu: `${cpus.length} x ${cpus[0]?.model ?? '?'}`,
    memGiB: Math.round(os.totalmem() / GiB),
    kernel: os.release(),
    node: process.version,
    disk: fsrc,
    fuseOverlayfs: (U.tryRun('fuse-overlayfs', ['--version']) ?? '').split('\n').find((l) => /fuse-overlayfs/.test(l))?.trim() ?? '?',
    fio: U.tryRun('fio', ['--version'])?.trim() ?? '?',
    dmfs: `${git}${dirty}`,
    nativeBlockPath: null,
  };
}

// ---- scratch space and clean-up --------------------------------------------------------------

const cleanups = [];
function mountsUnder(dir) {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && (m === dir || m.startsWith(dir + '/')))
    .map((m) => m.replace(/\\040/g, ' '));
}

function unmountAllUnder(dir) {
  for (const m of mountsUnder(dir).reverse()) {
    spawnSync('fusermount3', ['-u', '-z', m]);
    spawnSync('umount', ['-l', m]);
  }
}

function cleanup() {
  while (cleanups.length) {
    try {
      cleanups.pop()();
    } catch (err) {
      log(`clean-up: ${err.message}`);
    }
  }
  unmountAllUnder(opts.dir);
  if (!opts.keep) fs.rmSync(opts.dir, { recursive: true, force: true });
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    cleanup();
    process.exit(130);
  });
}

// ---- workloads ------------------------------------------------------------------------------

const rows = [];
const loadLog = [];

/** Runs fn(system, round) for every round and system, rotating the order each round. */
function rounds(n, systems, fn) {
  for (let r = 0; r < n; r++) {
    const order = systems.slice(r % systems.length).concat(systems.slice(0, r % systems.length));
    for (const s of order) fn(s, r);
  }
}

function sampleSet(systems) {
  return Object.fromEntries(systems.map((s) => [s.sys.name, []]));
}

/** fio 4 KiB random reads on file; returns IOPS and mean completion latency (µs). */
function fioRandRead(file, depth, seconds) {
  const args = [
    '--name=randread', `--filename=${file}`, '--readonly', '--rw=randread', '--bs=4k',
    `--ioengine=${depth === 1 ? 'psync' : 'io_uring'}`, `--iodepth=${depth}`,
    `--runtime=${seconds}`, '--time_based', '--invalidate=1', '--randrepeat=1', '--output-format=json',
  ];
  const j = JSON.parse(U.run('fio', args));
  const rd = j.jobs[0].read;
  return { iops: rd.iops, latUs: rd.clat_ns.mean / 1000 };
}

function shMs(cmd) {
  return U.timeMsSync(() => U.run('sh', ['-c', cmd]));
}

const ctx = {};

const workloads = {
  seqread() {
    const { systems } = ctx;
    const open = systems.map((s) => ({ s, c: s.sys.fresh(s.main, 'seqread') }));
    cleanups.push(() => open.forEach((o) => o.c.close()));
    const cold = sampleSet(systems);
    const warm = sampleSet(systems);
    rounds(cfg.rounds, open, ({ s, c }) => {
      const file = path.join(c.mnt, 'bench', 'big.bin');
      U.dropCaches();
      cold[s.sys.name].push(io.seqRead(file).mbps);
      warm[s.sys.name].push(io.seqRead(file).mbps);
    });
    open.forEach((o) => o.c.close());
    cleanups.pop();
    const t = { text: '≥ 1.0 × fuse-overlayfs', check: (v, r) => r['fuse-overlayfs'] >= 1 };
    rows.push({ id: 'seqread-cold', group: '1. sequential read, 1 GiB file in the image layer', name: 'cold (caches dropped)', unit: 'MB/s', better: 'higher', samples: cold, target: t });
    rows.push({ id: 'seqread-warm', group: '1. sequential read, 1 GiB file in the image layer', name: 'warm (second read)', unit: 'MB/s', better: 'higher', samples: warm, target: t });
  },

  seqwrite() {
    const { systems } = ctx;
    const open = systems.map((s) => ({ s, c: s.sys.fresh(s.main, 'seqwrite') }));
    cleanups.push(() => open.forEach((o) => o.c.close()));
    const w = sampleSet(systems);
    rounds(cfg.rounds, open, ({ s, c }, r) => {
      const file = path.join(c.mnt, `w${r}.bin`);
      U.run('sync');
      w[s.sys.name].push(io.seqWriteFsync(file, cfg.bigBytes).mbps);
      fs.unlinkSync(file);
    });
    open.forEach((o) => o.c.close());
    cleanups.pop();
    rows.push({ id: 'seqwrite', group: '2. sequential write into the container', name: '1 GiB, 1 MiB writes, then fsync', unit: 'MB/s', better: 'higher', samples: w, target: { text: '≥ 1.0 × fuse-overlayfs', check: (v, r) => r['fuse-overlayfs'] >= 1 } });
  },

  cow() {
    const { systems } = ctx;
    const modes = ['cold', 'used', 'warm'];
    const sets = { bytes: sampleSet(systems) };
    for (const m of modes) {
      sets[`${m}First`] = sampleSet(systems);
      sets[`${m}Second`] = sampleSet(systems);
    }
    const mid = Math.floor(cfg.bigBytes / 2) + 8 * KiB;
    rounds(cfg.rounds, systems, (s) => {
      // cold: a fresh mount, caches dropped. used: the same after the container did some
      // work (read a lower file, wrote a new one), caches dropped. warm: the lower file read
      // just before (page cache warm).
      for (const mode of modes) {
        const c = s.sys.fresh(s.main, `cow-${mode}`);
        cleanups.push(() => c.close());
        const file = path.join(c.mnt, 'bench', 'big.bin');
        if (mode === 'used') {
          fs.readFileSync(path.join(c.mnt, 'etc', 'os-release'));
          fs.writeFileSync(path.join(c.mnt, 'tmp', 'used'), 'x'.repeat(10000));
          fs.statSync(file);
        }
        if (mode === 'warm') io.seqRead(file);
        else U.dropCaches();
        const r = io.cowWrites(file, mid);
        sets[`${mode}First`][s.sys.name].push(r.firstMs);
        sets[`${mode}Second`][s.sys.name].push(r.secondMs);
        if (mode === 'cold') sets.bytes[s.sys.name].push(c.exclusiveBytes() / KiB);
        c.close();
        cleanups.pop();
      }
    });
    const g = '3. copy-on-write: 4 KiB writes into the middle of a 1 GiB image file';
    const headline = { text: '≤ 0.01 × both (100x faster) and < 10 ms', check: (v, r) => r.overlayfs <= 0.01 && r['fuse-overlayfs'] <= 0.01 && v.dmfs < 10 };
    rows.push({ id: 'cow-first-cold', group: g, name: 'first write: open(O_RDWR) + pwrite, fresh mount, caches dropped', unit: 'ms', better: 'lower', samples: sets.coldFirst, target: headline, digits: 3 });
    rows.push({ id: 'cow-second-cold', group: g, name: 'second write (next 4 KiB), after it', unit: 'ms', better: 'lower', samples: sets.coldSecond, digits: 3 });
    rows.push({ id: 'cow-first-used', group: g, name: 'first write, mount used before (read a file, wrote one), caches dropped', unit: 'ms', better: 'lower', samples: sets.usedFirst, target: headline, digits: 3 });
    rows.push({ id: 'cow-first-warm', group: g, name: 'first write, lower file in page cache', unit: 'ms', better: 'lower', samples: sets.warmFirst, target: headline, digits: 3 });
    rows.push({ id: 'cow-second-warm', group: g, name: 'second write, warm', unit: 'ms', better: 'lower', samples: sets.warmSecond, digits: 3 });
    rows.push({ id: 'cow-bytes', group: g, name: 'space taken by the writable layer after the first write', unit: 'KiB', better: 'lower', samples: sets.bytes });
  },

  randread() {
    const { systems } = ctx;
    const open = systems.map((s) => ({ s, c: s.sys.fresh(s.main, 'randread') }));
    cleanups.push(() => open.forEach((o) => o.c.close()));
    const res = { 1: sampleSet(systems), 16: sampleSet(systems) };
    const lat = { 1: sampleSet(systems), 16: sampleSet(systems) };
    rounds(cfg.rounds, open, ({ s, c }) => {
      for (const depth of [1, 16]) {
        U.dropCaches();
        const r = fioRandRead(path.join(c.mnt, 'bench', 'big.bin'), depth, cfg.fioSeconds);
        res[depth][s.sys.name].push(r.iops);
        lat[depth][s.sys.name].push(r.latUs);
      }
    });
    open.forEach((o) => o.c.close());
    cleanups.pop();
    const g = `4. 4 KiB random reads, 1 GiB image file, fio ${cfg.fioSeconds} s from a cold cache`;
    const t = { text: '≥ 1.0 × fuse-overlayfs', check: (v, r) => r['fuse-overlayfs'] >= 1 };
    rows.push({ id: 'randread-qd1', group: g, name: 'iodepth 1 (psync)', unit: 'IOPS', better: 'higher', samples: res[1], target: t });
    rows.push({ id: 'randread-qd16', group: g, name: 'iodepth 16 (io_uring)', unit: 'IOPS', better: 'higher', samples: res[16], target: t });
    rows.push({ id: 'randread-qd1-lat', group: g, name: 'iodepth 1: mean completion latency', unit: 'µs', better: 'lower', samples: lat[1] });
  },

  metadata() {
    const { systems, metaTar, metaEntries } = ctx;
    const s = { tar: sampleSet(systems), warm: sampleSet(systems), cold: sampleSet(systems), rm: sampleSet(systems) };
    rounds(cfg.metaRounds, systems, (sys) => {
      const c = sys.sys.fresh(sys.main, 'meta');
      cleanups.push(() => c.close());
      const x = path.join(c.mnt, 'x');
      fs.mkdirSync(x);
      const findStat = `find ${x} -print0 | xargs -0 stat -c %i > /dev/null`;
      s.tar[sys.sys.name].push(shMs(`tar -xf ${metaTar} -C ${x}`));
      U.run('sh', ['-c', findStat]);
      s.warm[sys.sys.name].push(shMs(findStat));
      U.dropCaches();
      s.cold[sys.sys.name].push(shMs(findStat));
      s.rm[sys.sys.name].push(shMs(`rm -rf ${x}`));
      c.close();
      cleanups.pop();
    });
    const g = `5. metadata: ${metaEntries.toLocaleString('en-US')}-entry rootfs tar in the container`;
    const t = { text: '≤ 1.5 × fuse-overlayfs', check: (v, r) => r['fuse-overlayfs'] <= 1.5 };
    rows.push({ id: 'meta-tar', group: g, name: 'tar -xf (extract)', unit: 'ms', better: 'lower', samples: s.tar, target: t });
    rows.push({ id: 'meta-find-warm', group: g, name: 'find + stat of every entry, warm', unit: 'ms', better: 'lower', samples: s.warm, target: t });
    rows.push({ id: 'meta-find-cold', group: g, name: 'find + stat of every entry, caches dropped', unit: 'ms', better: 'lower', samples: s.cold, target: t });
    rows.push({ id: 'meta-rm', group: g, name: 'rm -rf', unit: 'ms', better: 'lower', samples: s.rm, target: t });
  },

  async snapshot() {
    const { systems } = ctx;
    const g = '6. snapshot cost: a new writable layer';
    for (const size of ['small', 'large']) {
      const create = sampleSet(systems);
      const inside = sampleSet(systems);
      const total = sampleSet(systems);
      rounds(cfg.snapRounds, systems, (s) => {
        const c = s.sys.fresh(s[size], `snap-${size}`);
        cleanups.push(() => c.close());
        const lsMs = U.timeMsSync(() => fs.readdirSync(c.mnt));
        create[s.sys.name].push(c.ms.create);
        inside[s.sys.name].push(c.ms.createInside);
        total[s.sys.name].push(c.ms.total + lsMs);
        c.close();
        cleanups.pop();
      });
      // The layer operation itself: createLayer through the Node API in one open pool.
      const api = [];
      await ctx.dmfs.withPool(async (pool) => {
        for (let r = 0; r < Math.max(cfg.snapRounds, 5); r++) {
          const name = `api-${size}-${r}`;
          api.push(await U.timeMs(() => pool.store.createLayer(name, { kind: 'container', parent: `snap-${size}` })));
          await pool.store.removeLayer(name);
        }
      });
      const label = size === 'small' ? ctx.smallLabel : ctx.largeLabel;
      const t50 = { text: '< 50 ms', check: (v) => v.dmfs < 50 };
      rows.push({ id: `snap-${size}-api`, group: g, name: `${label} image: createLayer (Node API, pool open)`, unit: 'ms', better: 'lower', samples: { dmfs: api }, target: t50, digits: 2 });
      rows.push({ id: `snap-${size}-create`, group: g, name: `${label} image: dmfs create (CLI wall) / mkdir upper+work`, unit: 'ms', better: 'lower', samples: create, target: t50, digits: 2 });
      rows.push({ id: `snap-${size}-inside`, group: g, name: `${label} image: dmfs create, inside the CLI (pool open..close)`, unit: 'ms', better: 'lower', samples: { dmfs: inside.dmfs }, target: t50, digits: 2 });
      rows.push({ id: `snap-${size}-total`, group: g, name: `${label} image: create → mounted → listable`, unit: 'ms', better: 'lower', samples: total, digits: 1 });
    }
  },

  async space() {
    const { dmfs } = ctx;
    const g = '7. space';
    const info0 = dmfs.info();
    const before = ctx.poolBytes(info0);
    const hostBefore = (info0.dataFileAllocatedBytes ?? 0) + allocatedBytes(info0.metadataFile);
    const names = Array.from({ length: cfg.containers }, (_, i) => `idle-${i}`);
    let how;
    if (opts.quick) {
      await dmfs.createMany('idle-', cfg.containers, 'rootfs');
      how = 'Node API';
    } else {
      for (const n of names) dmfs.create(n, 'rootfs');
      how = 'dmfs create';
    }
    const info1 = dmfs.info();
    const grown = ctx.poolBytes(info1) - before;
    const hostGrown = (info1.dataFileAllocatedBytes ?? 0) + allocatedBytes(info1.metadataFile) - hostBefore;
    dmfs.rm(...names);
    // overlay: an upper and a work directory per container.
    const ovl = path.join(opts.dir, 'space-ovl');
    for (let i = 0; i < cfg.containers; i++) {
      fs.mkdirSync(path.join(ovl, `c${i}`, 'upper'), { recursive: true });
      fs.mkdirSync(path.join(ovl, `c${i}`, 'work'));
    }
    const ovlBytes = Number(U.run('du', ['-sB1', ovl]).split(/\s/)[0]);
    fs.rmSync(ovl, { recursive: true, force: true });
    const rootfsMiB = ctx.rootfsAllocBytes / MiB;
    rows.push({ id: 'space-image', group: g, name: `rootfs image: pool bytes (data + metadata used) / the rootfs on ext4, allocated (${U.fmtBytes(ctx.rootfsApparentBytes)} apparent)`, unit: 'MiB', better: 'lower', samples: { dmfs: [ctx.imageBytes / MiB], overlayfs: [rootfsMiB], 'fuse-overlayfs': [rootfsMiB] } });
    rows.push({ id: 'space-image-host', group: g, name: 'rootfs image: host bytes (data file allocated + metadata file growth)', unit: 'MiB', better: 'lower', samples: { dmfs: [ctx.imageHostBytes / MiB], overlayfs: [rootfsMiB], 'fuse-overlayfs': [rootfsMiB] } });
    rows.push({ id: 'space-import', group: g, name: `rootfs import (${ctx.imageHow}) / tar -xf into the lower dir + sync`, unit: 'ms', better: 'lower', samples: { dmfs: [ctx.importMs], overlayfs: [ctx.extractMs], 'fuse-overlayfs': [ctx.extractMs] } });
    rows.push({ id: 'space-100', group: g, name: `${cfg.containers} idle containers on the rootfs image (${how}): pool growth / upper+work dirs`, unit: 'KiB', better: 'lower', samples: { dmfs: [grown / KiB], overlayfs: [ovlBytes / KiB], 'fuse-overlayfs': [ovlBytes / KiB] }, target: { text: '< 1 MiB', check: (v) => v.dmfs < 1024 } });
    rows.push({ id: 'space-100-host', group: g, name: `${cfg.containers} idle containers: host bytes growth (data file + metadata file)`, unit: 'KiB', better: 'lower', samples: { dmfs: [hostGrown / KiB], overlayfs: [ovlBytes / KiB], 'fuse-overlayfs': [ovlBytes / KiB] }, target: { text: '< 1 MiB', check: (v) => v.dmfs < 1024 } });
  },
};

function allocatedBytes(file) {
  try {
    return fs.statSync(file).blocks * 512;
  } catch {
    return 0;
  }
}

// ---- set-up ---------------------------------------------------------------------------------

async function setup() {
  const started = Date.now();
  unmountAllUnder(opts.dir);
  fs.rmSync(opts.dir, { recursive: true, force: true });
  fs.mkdirSync(opts.dir, { recursive: true });
  if (opts.cpuProf) fs.mkdirSync(opts.cpuProf, { recursive: true });
  ctx.dmfsOpts = opts.cpuProf ? { cpuProfDir: opts.cpuProf } : {};

  if (!opts.dmfs) {
    // Run from a copy of this checkout's build: other engineers rebuild dist/ in the shared
    // checkout, and a rebuild in the middle of a run must not change the code under test.
    const copy = path.join(opts.dir, 'dmfs-build');
    fs.mkdirSync(path.join(copy, 'native'), { recursive: true });
    for (const d of ['bin', 'dist']) fs.cpSync(path.join(REPO, d), path.join(copy, d), { recursive: true });
    fs.copyFileSync(path.join(REPO, 'package.json'), path.join(copy, 'package.json'));
    const addon = path.join(REPO, 'native', 'dmfs_native.node');
    if (fs.existsSync(addon)) fs.copyFileSync(addon, path.join(copy, 'native', 'dmfs_native.node'));
    fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(copy, 'node_modules'));
    useTree(copy);
  }

  log('rootfs');
  ctx.rootfs = ensureRootfs(opts.cache, log);
  log(`rootfs: ${ctx.rootfs.source}, ${ctx.rootfs.entries} entries, ${U.fmtBytes(ctx.rootfs.apparentBytes)}`);
  const big = ensureRandomFile(opts.cache, `big-${cfg.bigBytes}.bin`, cfg.bigBytes, 1);

  // Two lower layers, as an image of a base OS and an application layer would have:
  // lower-rootfs (the rootfs) and lower-bench (/bench/big.bin). dmfs imports the first with
  // `dmfs import` (image 'rootfs') and adds the second as image 'bench-img' on top of it;
  // overlayfs and fuse-overlayfs get lowerdir=lower-bench:lower-rootfs.
  const rootfsLower = path.join(opts.dir, 'lower-rootfs');
  const benchLower = path.join(opts.dir, 'lower-bench');
  fs.mkdirSync(rootfsLower, { recursive: true });
  fs.mkdirSync(path.join(benchLower, 'bench'), { recursive: true });
  ctx.extractMs = shMs(`tar -xf ${ctx.rootfs.tar} -C ${rootfsLower} && sync -f ${rootfsLower}`);
  ctx.rootfsAllocBytes = Number(U.run('du', ['-sB1', rootfsLower]).split(/\s/)[0]);
  ctx.rootfsApparentBytes = Number(U.run('du', ['-sb', '--apparent-size', rootfsLower]).split(/\s/)[0]);
  fs.copyFileSync(big, path.join(benchLower, 'bench', 'big.bin'));
  const lower = `${benchLower}:${rootfsLower}`;

  // The metadata workload's tar: the whole rootfs, or (quick) its /etc and /usr/share slice.
  if (cfg.metaSlice) {
    ctx.metaTar = path.join(opts.dir, 'rootfs-slice.tar');
    U.run('tar', ['--numeric-owner', '-cf', ctx.metaTar, '-C', ctx.rootfs.dir, './etc', './usr/bin', './usr/sbin', './var']);
    ctx.metaEntries = Number(U.run('sh', ['-c', `tar -tf ${ctx.metaTar} | wc -l`]).trim());
  } else {
    ctx.metaTar = ctx.rootfs.tar;
    ctx.metaEntries = ctx.rootfs.entries;
  }

  // Snapshot-cost lowers: 10 MiB of data, and 10 GiB (quick: 1 GiB).
  const needSnap = opts.only.includes('snapshot');
  const smallLower = path.join(opts.dir, 'lower-small');
  const largeLower = path.join(opts.dir, 'lower-large');
  ctx.smallLabel = '10 MiB';
  ctx.largeLabel = `${cfg.largeFiles} GiB`;
  if (needSnap) {
    fs.mkdirSync(path.join(smallLower, 'data'), { recursive: true });
    U.writeRandomFile(path.join(smallLower, 'data', 'f0.bin'), 10 * MiB, 7);
    fs.mkdirSync(path.join(largeLower, 'data'), { recursive: true });
    // overlayfs never reads lower data to mount: preallocated files stand in for the data.
    for (let i = 0; i < cfg.largeFiles; i++) U.run('fallocate', ['-l', String(GiB), path.join(largeLower, 'data', `f${i}.bin`)]);
  }

  log('dmfs pool and images');
  const dmfs = new Dmfs(path.join(opts.dir, 'pool'), ctx.dmfsOpts);
  cleanups.push(() => dmfs.poolDestroy());
  dmfs.poolCreate('40G', ['dm.min_free_space=0', 'dm.basesize=20G']);
  const poolBytes = (i) => i.dataSpaceUsedBytes + i.metadataSpaceUsedBytes;
  // Host bytes: what the data file and the metadata file occupy on the disk, read together with the figures.
  const hostBytes = (i) => (i.dataFileAllocatedBytes ?? 0) + allocatedBytes(i.metadataFile);
  const i0 = dmfs.info();
  const host0 = hostBytes(i0);
  ctx.importMs = await U.timeMs(async () => {
    ctx.imageHow = await dmfs.importTree(rootfsLower, 'rootfs');
  });
  const i1 = dmfs.info();
  ctx.imageBytes = poolBytes(i1) - poolBytes(i0);
  ctx.imageHostBytes = hostBytes(i1) - host0;
  ctx.poolBytes = poolBytes;
  ctx.dmfs = dmfs;
  await dmfs.addImageLayer(benchLower, 'bench-img', 'rootfs');
  if (needSnap) {
    await dmfs.buildRandomImage('snap-small', 1, 10 * MiB, 7);
    await dmfs.buildRandomImage('snap-large', cfg.largeFiles, GiB, 11);
  }
  const info = dmfs.info();
  ctx.nativeBlockPath = info.nativeBlockPath;
  ctx.blockSize = info.poolBlocksizeBytes;

  const kovl = new OverlaySystem('overlayfs', opts.dir);
  const fovl = new OverlaySystem('fuse-overlayfs', opts.dir);
  cleanups.push(() => {
    kovl.cleanup();
    fovl.cleanup();
  });
  ctx.systems = [
    { sys: new DmfsSystem(dmfs, opts.dir), main: 'bench-img', small: 'snap-small', large: 'snap-large' },
    { sys: kovl, main: lower, small: smallLower, large: largeLower },
    { sys: fovl, main: lower, small: smallLower, large: largeLower },
  ];
  ctx.setupS = (Date.now() - started) / 1000;
  log(`set-up done in ${ctx.setupS.toFixed(1)} s (image built with ${ctx.imageHow})`);
}

// ---- main -----------------------------------------------------------------------------------

async function main() {
  preflight();
  const m = machine(opts.dmfs ?? REPO);
  const t0 = Date.now();
  const loadStart = U.loadAvg();
  log(`${opts.quick ? 'quick' : 'full'} run: ${opts.only.join(', ')}; ${cfg.rounds} round(s)`);
  try {
    await setup();
    for (const w of ALL) {
      if (!opts.only.includes(w)) continue;
      const before = rows.length;
      const tw = Date.now();
      log(`workload ${w}`);
      await workloads[w]();
      loadLog.push({ workload: w, seconds: (Date.now() - tw) / 1000, load: U.loadAvg() });
      for (const r of rows.slice(before)) r.load = U.loadAvg();
    }
  } finally {
    cleanup();
  }
  const totalS = (Date.now() - t0) / 1000;
  m.nativeBlockPath = ctx.nativeBlockPath;
  const summary = rows.map(summarize);
  const tbl = table(summary);
  const rootfsLine = `Rootfs: ${ctx.rootfs.source}; ${ctx.rootfs.entries.toLocaleString('en-US')} entries, ${U.fmtBytes(ctx.rootfs.apparentBytes)} of file data.`;
  const meta = [
    `Machine: ${m.cpu}, ${m.memGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}; disk ${m.disk} (pool, uppers and lowers on it); ${m.fuseOverlayfs}; ${m.fio}.`,
    `dmfs ${m.dmfs}, ${(ctx.blockSize / KiB).toFixed(0)} KiB blocks, native block path: ${m.nativeBlockPath}; dmfs image built with ${ctx.imageHow}.`,
    rootfsLine,
    `${opts.quick ? 'Quick run (--quick)' : 'Full run'}: median of ${cfg.rounds} round(s) (metadata ${cfg.metaRounds}, snapshot ${cfg.snapRounds}); set-up ${ctx.setupS.toFixed(0)} s, total ${totalS.toFixed(0)} s; load average ${loadStart} at the start, ${U.loadAvg()} at the end (2 cores shared with other work).`,
    `Per workload (seconds, load average after): ${loadLog.map((l) => `${l.workload} ${l.seconds.toFixed(0)} s (${l.load.split(' ')[0]})`).join(', ')}.`,
  ];
  const out = `${meta.join('\n')}\n\nRatios are dmfs/peer of the figure in the row: for ↑ rows above 1.0 means dmfs is better, for ↓ rows below 1.0 means dmfs is better.\n\n${tbl}\n`;
  process.stdout.write(`\n${out}`);
  const results = { machine: m, config: cfg, options: { ...opts, only: opts.only }, rootfs: { source: ctx.rootfs.source, entries: ctx.rootfs.entries, apparentBytes: ctx.rootfs.apparentBytes }, totalSeconds: totalS, loadStart, loadEnd: U.loadAvg(), workloads: loadLog, rows: summary.map(({ target, ...r }) => ({ ...r, target: target?.text ?? null })) };
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(results, null, 2) + '\n');
  if (opts.write) {
    const cmd = `npm run bench${opts.quick ? ' -- --quick' : ''}${opts.write ? (opts.quick ? ' --write' : ' -- --write') : ''}`;
    writeSection(
      path.join(REPO, 'BENCHMARKS.md'),
      '## dmfs vs overlayfs and fuse-overlayfs',
      '<!-- bench/run.js: begin (generated by `npm run bench -- --write`; edit outside the markers) -->',
      '<!-- bench/run.js: end -->',
      `\`\`\`\n${cmd}\n\`\`\`\n\n${out}`,
    );
    log('BENCHMARKS.md updated');
  }
}

main().catch((err) => {
  process.stderr.write(`bench: ${err.stack ?? err}\n`);
  cleanup();
  process.exit(1);
});
