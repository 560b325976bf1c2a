#!/usr/bin/env node
'use strict';
// containerd on dmfs against containerd's own overlayfs snapshotter, in one run on one
// private containerd (test/support/containerd-host.js; never the host's):
//   - unpack: `ctr image import --snapshotter S` of the Debian rootfs image (bench/lib/dataset.js:
//     debootstrap minbase, or the generated tree of its shape), image removed between rounds;
//   - start: `ctr run --rm --snapshotter S IMAGE ID true`, start to exit.
// Rounds alternate between the two snapshotters. Medians are printed, with the targets
// (start <= 1.2x overlayfs, unpack <= 2x overlayfs).
//
// Usage (root): node bench/containerd.js [--rounds N] [--dir DIR] [--cache DIR] [--json FILE]
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const host = require('../test/support/containerd-host.js');
const { ensureRootfs } = require('./lib/dataset');

function parseArgs(argv) {
  const o = { rounds: 5, dir: '/var/tmp/dmfs-bench-containerd', cache: '/var/tmp/dmfs-bench-cache', json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--rounds') o.rounds = Number(val());
    else if (a === '--dir') o.dir = path.resolve(val());
    else if (a === '--cache') o.cache = path.resolve(val());
    else if (a === '--json') o.json = path.resolve(val());
    else throw new Error(`unknown option ${a}`);
  }
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new Error('--rounds must be a positive integer');
  return o;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function timed(fn) {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const problem = host.containerdProblem();
  if (problem) throw new Error(`cannot run: ${problem}`);
  const log = (line) => process.stderr.write(`bench/containerd: ${line}\n`);
  fs.rmSync(o.dir, { recursive: true, force: true });
  fs.mkdirSync(o.dir, { recursive: true });
  const rootfs = ensureRootfs(o.cache, log);
  log(`image: ${rootfs.source}, ${rootfs.entries} entries, ${(rootfs.apparentBytes / 2 ** 20).toFixed(1)} MiB`);
  const image = 'docker.io/library/dmfs-bench-debian:1';
  const { archive } = host.buildOciArchive(rootfs.dir, image, o.dir);

  const root = path.join(o.dir, 'pool');
  execFileSync(process.execPath, [host.DMFS_BIN, 'pool', 'create', '--root', root, '--size', '20G'], { stdio: 'ignore' });
  const socket = path.join(o.dir, 'dmfs-snapshotter.sock');
  const snapshotter = await host.startSnapshotter(root, socket, path.join(o.dir, 'snapshotter.log'));
  const ctd = new host.PrivateContainerd(path.join(o.dir, 'containerd'), socket);
  const samples = { dmfs: { unpack: [], start: [] }, overlayfs: { unpack: [], start: [] } };
  try {
    await ctd.start();
    const systems = ['dmfs', 'overlayfs'];
    for (let round = 0; round < o.rounds; round++) {
      for (const sn of round % 2 ? [...systems].reverse() : systems) {
        const ns = `bench-${sn}`;
        samples[sn].unpack.push(timed(() => ctd.ctrOk(['image', 'import', '--snapshotter', sn, archive], { ns })));
        ctd.ctrOk(['run', '--rm', '--snapshotter', sn, image, `warm-${round}`, 'true'], { ns });
        samples[sn].start.push(timed(() => ctd.ctrOk(['run', '--rm', '--snapshotter', sn, image, `c-${round}`, 'true'], { ns })));
        ctd.ctrOk(['image', 'rm', '--sync', image], { ns });
        log(`round ${round + 1}/${o.rounds} ${sn}: unpack ${samples[sn].unpack.at(-1).toFixed(0)} ms, start ${samples[sn].start.at(-1).toFixed(0)} ms`);
      }
    }
  } finally {
    for (const sn of ['dmfs', 'overlayfs']) ctd.cleanupNamespace(`bench-${sn}`);
    await ctd.stop();
    await snapshotter.stop();
    host.unmountUnder(o.dir);
  }
  const rows = ['unpack', 'start'].map((what) => {
    const d = median(samples.dmfs[what]);
    const ov = median(samples.overlayfs[what]);
    return { what, dmfsMs: d, overlayfsMs: ov, ratio: d / ov, target: what === 'start' ? 1.2 : 2 };
  });
  process.stdout.write('containerd on dmfs vs containerd overlayfs (median ms over ' + o.rounds + ' rounds)\n');
  for (const r of rows) {
    const name = r.what === 'unpack' ? 'ctr image import (Debian rootfs)' : 'ctr run --rm ... true';
    process.stdout.write(`${name.padEnd(34)} dmfs ${r.dmfsMs.toFixed(0).padStart(6)}   overlayfs ${r.overlayfsMs.toFixed(0).padStart(6)}   ${r.ratio.toFixed(2)}x (target <= ${r.target}x) ${r.ratio <= r.target ? 'met' : 'NOT met'}\n`);
  }
  if (o.json) fs.writeFileSync(o.json, JSON.stringify({ rootfs: { source: rootfs.source, entries: rootfs.entries, apparentBytes: rootfs.apparentBytes }, samples, rows }, null, 2) + '\n');
  fs.rmSync(o.dir, { recursive: true, force: true });
}

main().catch((err) => {
  process.stderr.write(`bench/containerd: ${err.stack ?? err}\n`);
  process.exitCode = 1;
});
