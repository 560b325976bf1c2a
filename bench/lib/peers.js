'use strict';
// The systems under test behind one shape: a fresh writable "container" on the shared
// lower content, mounted, and its clean-up.
//   dmfs:           dmfs create C --from IMAGE; dmfs mount C MNT ... dmfs umount; dmfs rm C
//   overlayfs:      mkdir upper work; mount -t overlay -o lowerdir=LOWER,upperdir,workdir
//   fuse-overlayfs: mkdir upper work; fuse-overlayfs -o lowerdir=LOWER,upperdir,workdir
// Upper/work directories live on the same file system as the dmfs pool.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { run, timeMsSync, isMountpoint } = require('./util');

let serial = 0;

class DmfsSystem {
  constructor(dmfs, workDir) {
    this.name = 'dmfs';
    this.dmfs = dmfs;
    this.workDir = workDir;
  }

  /** A fresh container on `image`, mounted. Returns { mnt, ms: { create, mount, total }, close() }. */
  fresh(image, tag) {
    const name = `c-${tag}-${++serial}`;
    const mnt = path.join(this.workDir, 'mnt', name);
    const t0 = process.hrtime.bigint();
    const created = this.dmfs.create(name, image);
    const mountMs = this.dmfs.mount(name, mnt);
    const total = Number(process.hrtime.bigint() - t0) / 1e6;
    return {
      mnt,
      layer: name,
      ms: { create: created.ms, createInside: created.createMs, mount: mountMs, total },
      exclusiveBytes: () => this.dmfs.inspect(name).exclusiveBytes,
      close: () => {
        this.dmfs.umount(mnt, { ignoreErrors: true });
        this.dmfs.rm(name);
        fs.rmSync(mnt, { recursive: true, force: true });
      },
    };
  }
}

class OverlaySystem {
  /** kind: 'overlayfs' (kernel) or 'fuse-overlayfs'. */
  constructor(kind, workDir) {
    this.name = kind;
    this.kind = kind;
    this.workDir = workDir;
    this.mounts = new Set();
  }

  mountCmd(lower, upper, work, mnt) {
    const o = `lowerdir=${lower},upperdir=${upper},workdir=${work}`;
    if (this.kind === 'overlayfs') run('mount', ['-t', 'overlay', 'overlay', '-o', o, mnt]);
    else run('fuse-overlayfs', ['-o', o, mnt]);
  }

  umountPath(mnt) {
    if (!isMountpoint(mnt)) return;
    if (this.kind === 'fuse-overlayfs') {
      const r = spawnSync('fusermount3', ['-u', mnt]);
      if (r.status !== 0) spawnSync('umount', ['-l', mnt]);
    } else {
      const r = spawnSync('umount', [mnt]);
      if (r.status !== 0) spawnSync('umount', ['-l', mnt]);
    }
  }

  /** A fresh upper/work pair on `lower`, mounted. Same return shape as DmfsSystem.fresh. */
  fresh(lower, tag) {
    const base = path.join(this.workDir, this.kind, `${tag}-${++serial}`);
    const upper = path.join(base, 'upper');
    const work = path.join(base, 'work');
    const mnt = path.join(base, 'merged');
    const t0 = process.hrtime.bigint();
    const createMs = timeMsSync(() => {
      fs.mkdirSync(upper, { recursive: true });
      fs.mkdirSync(work);
    });
    fs.mkdirSync(mnt);
    const mountMs = timeMsSync(() => this.mountCmd(lower, upper, work, mnt));
    const total = Number(process.hrtime.bigint() - t0) / 1e6;
    this.mounts.add(mnt);
    return {
      mnt,
      upper,
      ms: { create: createMs, createInside: createMs, mount: mountMs, total },
      exclusiveBytes: () => Number(run('du', ['-sB1', upper]).split(/\s/)[0]),
      close: () => {
        this.umountPath(mnt);
        this.mounts.delete(mnt);
        fs.rmSync(base, { recursive: true, force: true });
      },
    };
  }

  cleanup() {
    for (const m of [...this.mounts]) this.umountPath(m);
    this.mounts.clear();
  }
}

module.exports = { DmfsSystem, OverlaySystem };
