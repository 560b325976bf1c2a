#!/usr/bin/env node
'use strict';
// `npm run demo`: the main job on the default pool. Imports the example image from
// examples/rootfs, creates a container on it, mounts it with FUSE, shows copy-on-write
// and a whiteout with the figures, unmounts. Re-runnable: it replaces its own layers.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { makeTable } = require('./make-table');

const DMFS = path.join(__dirname, '..', 'bin', 'dmfs.js');
const IMAGE = 'dmfs-demo-image';
const CONTAINER = 'dmfs-demo';
const MOUNTPOINT = process.env.DMFS_DEMO_MOUNTPOINT || path.join(os.tmpdir(), 'dmfs-demo');

function say(text) {
  process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
}

/** Runs a command visibly; exits the demo when it fails unless allowed to. */
function run(cmd, args, { allowFail = false, quiet = false } = {}) {
  const shown = cmd === process.execPath ? ['dmfs', ...args.slice(1)] : [cmd, ...args];
  if (!quiet) process.stdout.write(`$ ${shown.join(' ')}\n`);
  const r = spawnSync(cmd, args, { stdio: quiet ? 'pipe' : 'inherit', encoding: 'utf8' });
  if (r.status !== 0 && !allowFail) {
    process.stderr.write(`demo: '${shown.join(' ')}' failed (exit ${r.status})${quiet ? `: ${r.stderr}` : ''}\n`);
    process.exit(r.status || 1);
  }
  return r;
}

const dmfs = (args, opts) => run(process.execPath, [DMFS, ...args], opts);
const sh = (script, opts) => run('sh', ['-c', script], opts);

function fuseUsable() {
  const r = spawnSync(process.execPath, [DMFS, 'doctor', '--json'], { encoding: 'utf8' });
  return r.status === 0;
}

function main() {
  makeTable();
  say('The pool');
  const info = dmfs(['info', '--json'], { allowFail: true, quiet: true });
  if (info.status !== 0) {
    const code = (() => {
      try {
        return JSON.parse(info.stdout).error.code;
      } catch {
        return null;
      }
    })();
    // Anything but "no pool yet" needs the user (the default pool may hold their layers).
    if (code !== 'POOL_NOT_FOUND') {
      process.stderr.write(`demo: the default pool cannot be used: ${info.stderr}`);
      process.exit(info.status || 1);
    }
    dmfs(['pool', 'create', '--size', '20G']);
  }
  else process.stdout.write(`using the existing pool (${JSON.parse(info.stdout).dataFile})\n`);

  // Re-runs: take away what an earlier demo left.
  dmfs(['umount', MOUNTPOINT], { allowFail: true, quiet: true });
  dmfs(['rm', CONTAINER], { allowFail: true, quiet: true });
  dmfs(['rm', IMAGE], { allowFail: true, quiet: true });

  say('An image layer from examples/rootfs');
  dmfs(['import', path.join(__dirname, 'rootfs'), '--name', IMAGE]);

  say('A container layer on it: O(1), nothing copied');
  dmfs(['create', CONTAINER, '--from', IMAGE]);

  if (!fuseUsable()) {
    say('FUSE is not usable here, so the demo stops before mounting');
    dmfs(['doctor'], { allowFail: true });
    dmfs(['ls']);
    return;
  }

  say(`Mounted with FUSE at ${MOUNTPOINT}`);
  dmfs(['mount', CONTAINER, MOUNTPOINT]);
  try {
    sh(`cat ${MOUNTPOINT}/etc/os-release && ls -l ${MOUNTPOINT}/etc ${MOUNTPOINT}/srv/data`);

    say('Copy-on-write: 4 KiB into the middle of a 1 MiB file of the image');
    sh(`dd if=/dev/urandom of=${MOUNTPOINT}/srv/data/table.bin bs=4k count=1 seek=128 conv=notrunc status=none && sync ${MOUNTPOINT}/srv/data/table.bin`);
    sh(`cmp ${path.join(__dirname, 'rootfs/srv/data/table.bin')} ${MOUNTPOINT}/srv/data/table.bin | head -1 || true`);
    process.stdout.write('The container holds one 64 KiB block of that file, the image keeps the rest:\n');
    dmfs(['ls']);

    say('Delete interception: removing a file of the image leaves a whiteout');
    sh(`rm ${MOUNTPOINT}/etc/hostname && ls ${MOUNTPOINT}/etc && echo "demo was here" > ${MOUNTPOINT}/srv/new-file`);
    dmfs(['diff', CONTAINER]);

    say('Pool figures');
    dmfs(['info']);
  } finally {
    say('Clean unmount');
    dmfs(['umount', MOUNTPOINT]);
  }
  process.stdout.write(`\nDone. The layers stay in the pool: dmfs ls, dmfs mount ${CONTAINER} DIR, dmfs rm ${CONTAINER} ${IMAGE}.\n`);
}

main();
